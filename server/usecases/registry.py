"""Registry use cases: each one a transaction over the store plus the domain's rules.

The api layer parses protos into the drafts and references used here and
maps the results back; this module decides nothing about transport.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from ..calls import Call
from ..domain import compare as comparing
from ..domain import environments, guard, programs, resources, security, signatures, versioning, versions
from ..domain.clock import SYSTEM_CLOCK, Clock
from ..domain.events import EventKind, ProgramVersionRegistered, SignatureRegistered, YankChanged, new_event
from ..domain.model import (
    Implementation,
    ProgramSummary,
    ProgramVersion,
    SignatureSummary,
    SignatureVersion,
)
from ..domain.names import VersionRef, check_name, check_text, parse_version_ref, signature_version_name
from ..errors import Aborted as AbortedError
from ..errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    Violations,
)
from ..store.base import Store
from ..store.records import Records
from .artifacts import DEFAULT_MAX_CONCURRENT_UPLOADS, INLINE_ARTIFACT_BYTES, Artifact, Uploads
from .common import Idempotency, PageOf, Replay, page_of, record, replayed

T = TypeVar("T")
log = logging.getLogger("dspy_registry.registry")


@dataclass(frozen=True, kw_only=True)
class SignatureDraft:
    signature: str
    version: str  # "" to bump
    change_type: int | None
    spec: signatures.SignatureSpec
    metadata: dict[str, Any]


@dataclass(frozen=True)
class RegisteredSignature:
    signature_version: SignatureVersion
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class RegisteredProgram:
    program_version: ProgramVersion
    created: bool


@dataclass(frozen=True, kw_only=True)
class ArtifactStream:
    digest: str
    size_bytes: int
    media_type: str
    chunks: AsyncIterator[bytes]


def _summarize(artifact: Artifact) -> tuple[programs.PredictorSummary, ...]:
    data = artifact.read()
    try:
        # Decoded first, as json.loads would, so that the bytes are gone before the parse begins
        # (a third less at the peak for a spooled artifact, whose bytes nothing else holds).
        text = data.decode(json.detect_encoding(data), "surrogatepass")
    except UnicodeDecodeError:
        return programs.summarize_dspy_state(data)  # it says what is wrong, as for any artifact
    del data
    return programs.summarize_dspy_state(text)


def _examine(
    media_type: str, data: bytes
) -> tuple[tuple[programs.PredictorSummary, ...], list[security.Finding]]:
    """A small artifact's predictors (DSPy program state; INVALID_ARGUMENT if it is not that) and the
    credentials in it, its JSON parsed once for both."""
    if media_type != programs.DSPY_MEDIA_TYPE:
        return (), security.scan_artifact(data, media_type)
    state = programs.parse_dspy_state(data)
    return programs.summarize_state(state), security.scan_artifact(data, media_type, state)


class Registry:
    """Signatures and program versions."""

    def __init__(
        self,
        store: Store,
        *,
        guard_mode: guard.GuardMode = guard.GuardMode.ENFORCE,
        upload_limit: int = programs.DEFAULT_UPLOAD_LIMIT,
        max_concurrent_uploads: int = DEFAULT_MAX_CONCURRENT_UPLOADS,
        versioning_settings: versioning.Versioning | None = None,
        clock: Clock = SYSTEM_CLOCK,
        after_register: Callable[[Records, ProgramVersion, str], Awaitable[None]] | None = None,
    ) -> None:
        """`after_register` is called inside each registration's transaction, with the version and
        the actor who registered it: the server passes `Deployments.auto_deploy`; a registry without
        deployments (the store's tests) passes nothing."""
        self.store = store
        self.clock = clock
        self.guard_mode = guard_mode
        self.versioning = versioning_settings or versioning.Versioning()
        self.upload_limit = upload_limit
        self.uploads = Uploads(max_concurrent_uploads, upload_limit)
        self.after_register = after_register

    # -- signatures --------------------------------------------------------------------

    async def register_signature(
        self, call: Call, draft: SignatureDraft, idem: Idempotency[RegisteredSignature] | None
    ) -> RegisteredSignature | Replay:
        v = Violations()
        v.collect(lambda: check_name(draft.signature, "signature"))
        v.items += signatures.validate_spec(draft.spec).items
        programs.validate_metadata(draft.metadata, "metadata", v)
        versioning.check_changelog(self.versioning, draft.metadata, "metadata", v)
        if draft.version:
            v.collect(lambda: versions.parse(draft.version))
            if draft.change_type is not None:
                v.add("change_type", "give either version or change_type, not both")
        v.raise_if_any()

        async with self.store.write(call) as tx:
            if (replay := await replayed(tx, idem)) is not None:
                return replay
            name = draft.signature
            warnings: list[str] = []
            proposed = versions.parse(draft.version) if draft.version else None
            if proposed is not None:
                existing = await tx.get_signature_version(name, proposed.text)
                if existing is not None:
                    if existing.spec == draft.spec and existing.metadata == draft.metadata:
                        return await record(tx, idem, RegisteredSignature(existing, ()))
                    raise AlreadyExists(
                        existing.name, f"{existing.name} already exists with a different spec"
                    )
            else:
                latest = await tx.latest_signature_version(name)
                if latest is not None and latest.spec == draft.spec and draft.change_type is None:
                    # Nothing changed and no bump asked for: the latest already is this.
                    return await record(tx, idem, RegisteredSignature(latest, ()))
                needed = signatures.compare(latest.spec, draft.spec).required_change if latest else None
                automatic = versioning.automatic_bump(self.versioning, needed)
                change = draft.change_type or automatic or needed or versions.ChangeType.PATCH
                base_text = await tx.highest_signature_release(name)
                base = versions.parse(base_text) if base_text else None
                proposed = versions.parse(versions.bump(base, change))
            subject = f"signatures/{name}"
            previous = await tx.signature_version_below(name, versions.core_floor(proposed.info))
            level = None
            if previous is not None:
                compatibility = signatures.compare(previous.spec, draft.spec)
                base = versions.parse(previous.version)
                warnings = guard.check(subject, base, proposed, compatibility, self.guard_mode)
                level = compatibility.level
            following = await tx.signature_version_above(name, versions.core_ceiling(proposed.info))
            if following is not None:
                # A backport must not turn the step to the next existing version into a
                # bigger change than that version's number says.
                onward = signatures.compare(draft.spec, following.spec)
                after = versions.parse(following.version)
                warnings += guard.check(subject, proposed, after, onward, self.guard_mode)
            sv = SignatureVersion(
                signature=name,
                version=proposed.text,
                spec=draft.spec,
                metadata=draft.metadata,
                previous_version=previous.version if previous else "",
                compatibility=level,
                creator=call.actor,
                create_time=self.clock.now(),
                revision=tx.next_revision,
            )
            await tx.insert_signature_version(sv, proposed.sort_key)
            await tx.append(
                [
                    new_event(
                        EventKind.SIGNATURE_REGISTERED,
                        sv.name,
                        SignatureRegistered(signature=name, version=sv.version),
                    )
                ]
            )
            return await record(tx, idem, RegisteredSignature(sv, tuple(warnings)))

    async def _signature_version(self, tx: Records, ref: VersionRef) -> SignatureVersion:
        found = (
            await tx.latest_signature_version(ref.name)
            if ref.is_latest
            else await tx.get_signature_version(ref.name, ref.version)
        )
        if found is None:
            raise NotFound(str(ref) if not ref.is_latest else ref.parent)
        return found

    async def get_signature(self, ref: VersionRef) -> SignatureVersion:
        async with self.store.read() as tx:
            return await self._signature_version(tx, ref)

    async def list_signatures(
        self, prefix: str, visible: list[str] | None, page_size: int, page_token: str
    ) -> PageOf[SignatureSummary]:
        """Signatures whose names match a `visible` glob (None: all); total_size counts only those."""
        return await page_of(
            self.store,
            lambda tx, page: tx.list_signatures(prefix, visible, page),
            page_size,
            page_token,
            "signatures",
            prefix,
            visible,
        )

    async def list_signature_versions(
        self, signature: str, page_size: int, page_token: str
    ) -> PageOf[SignatureVersion]:
        result = await page_of(
            self.store,
            lambda tx, page: tx.list_signature_versions(signature, page),
            page_size,
            page_token,
            "signature_versions",
            signature,
        )
        if result.total_size == 0:
            raise NotFound(f"signatures/{signature}")
        return result

    async def check_signature_compatibility(
        self,
        base: VersionRef,
        target: VersionRef | None,
        proposed: signatures.SignatureSpec | None,
        proposed_version: str,
    ) -> tuple[signatures.Compatibility, bool | None]:
        wanted = versions.parse(proposed_version, "proposed_version") if proposed_version else None
        if proposed is not None:
            signatures.validate_spec(proposed, "proposed").raise_if_any()
        async with self.store.read() as tx:
            base_sv = await self._signature_version(tx, base)
            if target is not None:
                spec = (await self._signature_version(tx, target)).spec
            elif proposed is not None:
                spec = proposed
            else:
                raise InvalidArgument.one("candidate", "give a target version or a proposed spec")
        compatibility = signatures.compare(base_sv.spec, spec)
        sufficient = None
        if wanted is not None:
            sufficient = guard.bump_sufficient(versions.parse(base_sv.version), wanted, compatibility)
        return compatibility, sufficient

    # -- programs ----------------------------------------------------------------------

    def validate_program_draft(self, draft: programs.ProgramDraft, prefix: str = "spec") -> None:
        """Every problem with a registration, raised as one InvalidArgument."""
        v = Violations()
        v.collect(lambda: check_name(draft.program, f"{prefix}.program"))
        if draft.version:
            v.collect(lambda: versions.parse(draft.version, f"{prefix}.version"))
            if draft.change_type is not None:
                v.add(f"{prefix}.change_type", "give either version or change_type, not both")
        elif draft.change_type is None and self.versioning.auto_increment is None:
            v.add(f"{prefix}.version", "give a version, or a change_type to auto-increment")
        if draft.signature:
            v.collect(
                lambda: parse_version_ref(
                    draft.signature, "signatures", f"{prefix}.signature", bare_means_latest=True
                )
            )
        else:
            v.add(f"{prefix}.signature", "name the implemented signature: signatures/{name}/versions/{v}")
        programs.validate_media_type(draft.media_type, f"{prefix}.media_type", v)
        programs.validate_labels(draft.labels, f"{prefix}.labels", v)
        programs.validate_performance(draft.performance, f"{prefix}.performance", v)
        programs.validate_metadata(draft.metadata, f"{prefix}.metadata", v)
        resources.validate_requirements(draft.metadata, f"{prefix}.metadata", v)
        versioning.check_changelog(self.versioning, draft.metadata, f"{prefix}.metadata", v)
        v.raise_if_any()

    async def register_program(
        self,
        call: Call,
        draft: programs.ProgramDraft,
        artifact: Artifact,
        idem: Idempotency[RegisteredProgram] | None,
    ) -> RegisteredProgram | Replay:
        """Register a version of `artifact` (already size-checked); INVALID_ARGUMENT if malformed."""
        self.validate_program_draft(draft)
        if not artifact.size_bytes:
            raise InvalidArgument.one("artifact", "must not be empty")
        if artifact.size_bytes <= INLINE_ARTIFACT_BYTES:
            predictors, in_artifact = _examine(draft.media_type, artifact.read())
        else:  # megabytes of parsing and regular expressions would stall every other call on the loop
            predictors = await self._predictors(draft.media_type, artifact)
            loop = asyncio.get_running_loop()
            in_artifact = await loop.run_in_executor(
                self.uploads.reader, lambda: security.scan_artifact(artifact.read(), draft.media_type)
            )
        await self._scan(draft, in_artifact)
        digest = await artifact.sha256()
        sig_ref = parse_version_ref(draft.signature, "signatures", "spec.signature", bare_means_latest=True)

        async with self.store.write(call) as tx:
            if (replay := await replayed(tx, idem)) is not None:
                return replay
            signature_version = await tx.resolve_signature_version(sig_ref.name, sig_ref.version)
            if signature_version is None:
                raise NotFound(str(sig_ref) if not sig_ref.is_latest else sig_ref.parent)
            previous_version = ""
            change_type = draft.change_type
            if draft.version:
                version = versions.parse(draft.version)
                existing_digest = await tx.program_version_digest(draft.program, version.text)
                if existing_digest == digest:
                    existing = await tx.get_program_version(draft.program, version.text)
                    assert existing is not None
                    differences = programs.spec_differences(
                        {
                            "media_type": existing.media_type,
                            "signature": existing.signature_name,
                            "performance": existing.performance,
                            "labels": existing.labels,
                            "metadata": existing.metadata,
                        },
                        draft,
                        f"signatures/{sig_ref.name}/versions/{signature_version}",
                    )
                    if differences:
                        # Versions are immutable: dropping the new values silently would lose them.
                        raise AlreadyExists(
                            existing.name,
                            f"{existing.name} already exists with the same artifact and another "
                            f"{', '.join(d.field for d in differences)}; versions are immutable, "
                            "register a new version",
                            differences,
                        )
                    return await record(tx, idem, RegisteredProgram(existing, False))
                if existing_digest is not None:
                    name = f"programs/{draft.program}/versions/{version.text}"
                    raise AlreadyExists(
                        name,
                        f"{name} already exists with digest {existing_digest}; "
                        f"versions are immutable, register a new version",
                    )
            else:
                base_text = await tx.highest_program_release(draft.program)
                base = versions.parse(base_text) if base_text else None
                change = change_type
                if change is None:  # neither version nor change type: [versioning] auto_increment
                    needed = None
                    if base_text is not None:
                        below = await tx.get_program_version(draft.program, base_text)
                        assert below is not None
                        found = await signature_change(tx, below, sig_ref.name, signature_version)
                        needed = found.required_change
                    change = versioning.automatic_bump(self.versioning, needed)
                    assert change is not None  # validate_program_draft let it through only so
                version = versions.parse(versions.bump(base, change))
                previous_version = base_text or ""
                change_type = change
            pv = ProgramVersion(
                program=draft.program,
                version=version.text,
                digest=digest,
                size_bytes=artifact.size_bytes,
                media_type=draft.media_type,
                signature=sig_ref.name,
                signature_version=signature_version,
                performance=dict(draft.performance),
                labels=dict(draft.labels),
                metadata=dict(draft.metadata),
                previous_version=previous_version,
                change_type=change_type,
                predictors=predictors,
                yanked=False,
                yank_reason="",
                creator=call.actor,
                create_time=self.clock.now(),
                revision=tx.next_revision,
            )
            for warning in await self._program_guard(tx, pv, version):
                log.warning("register_program %s (--semver-guard warn): %s", pv.name, warning)
            await tx.put_artifact_from(digest, artifact.size_bytes, artifact.chunks())
            await tx.insert_program_version(pv, version.sort_key, version.is_prerelease)
            await tx.append(
                [
                    new_event(
                        EventKind.PROGRAM_VERSION_REGISTERED,
                        pv.name,
                        ProgramVersionRegistered(program=pv.program, version=pv.version, digest=digest),
                    )
                ]
            )
            if self.after_register is not None:
                await self.after_register(tx, pv, call.actor)
            return await record(tx, idem, RegisteredProgram(pv, True))

    async def _scan(self, draft: programs.ProgramDraft, found: list[security.Finding]) -> None:
        """validate_security_requirements (security.py): refuse credentials in the artifact (`found`
        there) or metadata.

        Only the development environment's policy may turn the scan off; then the version is
        registered and the log says where its credentials are (never what they are).
        """
        in_metadata = security.scan_json(draft.metadata)
        if not found and not in_metadata:
            return
        async with self.store.read() as tx:
            development = await tx.get_environment(environments.SCAN_OPTIONAL)
        if development is not None and not development.policy.security_scan:
            log.warning(
                "programs/%s: credentials registered, the development policy turning the scan off: %s",
                draft.program,
                "; ".join(f"{f.path}: {f.kind}" for f in found + in_metadata),
            )
            return
        v = Violations()
        security.validate_security_requirements(found, "artifact", v)
        security.validate_security_requirements(in_metadata, "spec.metadata", v)
        v.raise_if_any()

    async def _program_guard(self, tx: Records, pv: ProgramVersion, proposed: versions.Version) -> list[str]:
        """The semver guard for a program version: its bump against the signature it implements.

        The change is the one between the signature the previous version (of a
        lower MAJOR.MINOR.PATCH) implements and this one's, a switch to another
        signature being breaking; a backport is also judged against the next
        existing version, as for signatures (guard.check says which versions).
        """
        if self.guard_mode is guard.GuardMode.OFF:
            return []
        subject = f"programs/{pv.program}"
        warnings: list[str] = []
        previous = await tx.program_version_below(pv.program, versions.core_floor(proposed.info))
        if previous is not None:
            change = guard.of_signature(await compatibility(tx, previous, pv))
            base = versions.parse(previous.version)
            warnings += guard.check(subject, base, proposed, change, self.guard_mode)
        following = await tx.program_version_above(pv.program, versions.core_ceiling(proposed.info))
        if following is not None:
            onward = guard.of_signature(await compatibility(tx, pv, following))
            after = versions.parse(following.version)
            warnings += guard.check(subject, proposed, after, onward, self.guard_mode)
        return warnings

    async def _predictors(self, media_type: str, artifact: Artifact) -> tuple[programs.PredictorSummary, ...]:
        """For DSPy program state too big to read on the loop, its predictors (INVALID_ARGUMENT if it
        is not that); else none."""
        if media_type != programs.DSPY_MEDIA_TYPE:
            return ()
        # Reading and parsing megabytes would stall every other call on the loop.
        return await asyncio.get_running_loop().run_in_executor(self.uploads.reader, _summarize, artifact)

    async def _program_version(self, tx: Records, ref: VersionRef) -> ProgramVersion:
        found = (
            await tx.latest_program_version(ref.name)
            if ref.is_latest
            else await tx.get_program_version(ref.name, ref.version)
        )
        if found is None:
            raise NotFound(str(ref) if not ref.is_latest else f"{ref.parent} (no unyanked version)")
        return found

    async def get_program(self, program: str) -> ProgramSummary:
        async with self.store.read() as tx:
            found = await tx.get_program(program)
        if found is None:
            raise NotFound(f"programs/{program}")
        return found

    async def get_program_version(self, ref: VersionRef) -> ProgramVersion:
        async with self.store.read() as tx:
            return await self._program_version(tx, ref)

    async def list_programs(
        self,
        prefix: str,
        labels: dict[str, str],
        environment: str,
        visible: list[str] | None,
        page_size: int,
        page_token: str,
    ) -> PageOf[ProgramSummary]:
        """Programs whose names match a `visible` glob (None: all); total_size counts only those."""
        v = Violations()
        programs.validate_labels(labels, "labels", v)
        v.raise_if_any()
        return await page_of(
            self.store,
            lambda tx, page: tx.list_programs(prefix, labels, visible, page, environment),
            page_size,
            page_token,
            "programs",
            prefix,
            sorted(labels.items()),
            visible,
            environment,
        )

    async def list_program_versions(
        self, program: str, page_size: int, page_token: str
    ) -> PageOf[ProgramVersion]:
        result = await page_of(
            self.store,
            lambda tx, page: tx.list_program_versions(program, page),
            page_size,
            page_token,
            "program_versions",
            program,
        )
        if result.total_size == 0:
            raise NotFound(f"programs/{program}")
        return result

    async def artifact(self, program: str, digest: str) -> ArtifactStream:
        if not programs.DIGEST_RE.fullmatch(digest):
            raise InvalidArgument.one("digest", "must be sha256: followed by 64 hex digits")
        async with self.store.read() as tx:
            count = await tx.artifact_chunk_count(program, digest)
            if count is None:
                raise NotFound(f"programs/{program}/artifacts/{digest}")
            owner = await tx.version_with_digest(program, digest)
        return ArtifactStream(
            digest=digest,
            size_bytes=owner.size_bytes,
            media_type=owner.media_type,
            chunks=self._chunks(digest, count),
        )

    async def _chunks(self, digest: str, count: int) -> AsyncIterator[bytes]:
        # One chunk per read: a 64 MiB artifact never sits in memory whole.
        for seq in range(count):
            async with self.store.read() as tx:
                chunk = await tx.artifact_chunk(digest, seq)
            yield chunk

    async def compare(
        self, base: VersionRef, target: VersionRef
    ) -> tuple[ProgramVersion, ProgramVersion, comparing.Comparison]:
        async with self.store.read() as tx:
            a = await self._program_version(tx, base)
            b = await self._program_version(tx, target)
            compat = await compatibility(tx, a, b)
        return a, b, comparing.compare(a, b, compat)

    async def upgrade_path(
        self, program: str, from_version: str, to_version: str
    ) -> list[comparing.UpgradeStep]:
        v = Violations()
        for field, text in (("from_version", from_version), ("to_version", to_version)):
            if text == versions.LATEST and field == "to_version":
                continue
            try:
                versions.parse(text, field)
            except InvalidArgument as exc:
                v.items += exc.violations
        v.raise_if_any()
        async with self.store.read() as tx:
            start = await self._program_version(tx, VersionRef("programs", program, from_version))
            end = await self._program_version(tx, VersionRef("programs", program, to_version))
            lo, hi = versions.parse(start.version), versions.parse(end.version)
            if lo.info.compare(hi.info) > 0:
                raise InvalidArgument.one("from_version", f"{start.version} does not precede {end.version}")
            between = await tx.program_versions_between(program, lo.sort_key, hi.sort_key)
            path = [pv for pv in between if pv.version in (start.version, end.version) or not pv.yanked]
            steps = []
            for a, b in zip(path, path[1:], strict=False):
                steps.append(comparing.upgrade_step(a, b, await compatibility(tx, a, b)))
        return steps

    async def yank(
        self,
        call: Call,
        ref: VersionRef,
        reason: str,
        undo: bool,
        etag: str,
        idem: Idempotency[ProgramVersion] | None,
    ) -> ProgramVersion | Replay:
        if ref.is_latest:
            raise InvalidArgument.one("name", "name an exact version to yank, not latest")
        if not undo and not reason.strip():
            raise InvalidArgument.one("reason", "say why the version is yanked")
        check_text(reason, "reason", 1024)
        async with self.store.write(call) as tx:
            if (replay := await replayed(tx, idem)) is not None:
                return replay
            pv = await self._program_version(tx, ref)
            if etag and etag != pv.etag:
                raise AbortedError(f"{pv.name} changed: etag is {pv.etag}, request had {etag}")
            wanted = not undo
            if pv.yanked == wanted:
                return await record(tx, idem, pv)
            revision = tx.next_revision
            await tx.set_yanked(pv.program, pv.version, wanted, "" if undo else reason, revision)
            await tx.append(
                [
                    new_event(
                        EventKind.PROGRAM_VERSION_UNYANKED if undo else EventKind.PROGRAM_VERSION_YANKED,
                        pv.name,
                        YankChanged(program=pv.program, version=pv.version, reason=reason),
                    )
                ]
            )
            updated = replace(pv, yanked=wanted, yank_reason="" if undo else reason, revision=revision)
            return await record(tx, idem, updated)


async def compatibility(
    tx: Records, a: ProgramVersion | Implementation, b: ProgramVersion | Implementation
) -> signatures.Compatibility:
    """How the signature `b` implements relates to the one `a` implements."""
    return await signature_change(tx, a, b.signature, b.signature_version)


async def signature_change(
    tx: Records, a: ProgramVersion | Implementation, signature: str, signature_version: str
) -> signatures.Compatibility:
    """How signature@signature_version relates to the signature `a` implements."""
    if a.signature != signature:
        return comparing.signature_switch(
            signature_version_name(a.signature, a.signature_version),
            signature_version_name(signature, signature_version),
        )
    if a.signature_version == signature_version:
        return signatures.Compatibility(signatures.Level.IDENTICAL)
    sa = await tx.get_signature_version(a.signature, a.signature_version)
    sb = await tx.get_signature_version(signature, signature_version)
    assert sa is not None and sb is not None  # foreign keys guarantee both
    return signatures.compare(sa.spec, sb.spec)

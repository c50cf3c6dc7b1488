"""RegistryService's program RPCs, as `Registry` methods, and `load_program`, which reads a version
with its artifact (as a live dspy.Module when asked)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from google.protobuf import json_format

from dspy_registry.v1 import registry_pb2 as pb

from . import _convert as convert
from . import dspy_interop
from ._base import ClientBase

# Below this a program goes in one RegisterProgram call; above it, UploadProgram streams it
# (the unary limit is 4 MiB for the whole message, spec and metadata included).
UNARY_ARTIFACT_LIMIT = 3 << 20
CHUNK_SIZE = 1 << 20
DSPY_MEDIA_TYPE = "application/vnd.dspy.program+json"

_Module = TypeVar("_Module")  # what load_program(module=...) makes: a dspy.Module subclass's instance


@dataclass(frozen=True, kw_only=True)
class LoadedProgram:
    """A program version with its artifact, as `load_program` returns it."""

    program_version: pb.ProgramVersion
    artifact: bytes
    state: Any  # the artifact parsed as JSON (DSPy program state), else None
    metadata: dict[str, Any] = field(default_factory=dict)
    performance: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.program_version.program)

    @property
    def version(self) -> str:
        return str(self.program_version.version)

    @property
    def digest(self) -> str:
        return str(self.program_version.artifact.digest)

    @property
    def signature(self) -> str:
        return str(self.program_version.signature)


def _spec(
    name: str,
    *,
    signature_name: str,
    version: str,
    metadata: Mapping[str, Any] | None,
    signature_version: str | None,
    performance: Mapping[str, float] | None,
    labels: Mapping[str, str] | None,
    change_type: str | int | None,
    media_type: str,
) -> pb.ProgramVersionSpec:
    return pb.ProgramVersionSpec(
        program=convert.short_name("programs", name),
        version=version,
        change_type=convert.enum(pb.ChangeType, "CHANGE_TYPE_", change_type),  # type: ignore[arg-type]
        media_type=media_type,
        signature=convert.signature_name(signature_name, signature_version),
        performance=dict(performance or {}),
        labels=dict(labels or {}),
        metadata=convert.struct(metadata),
    )


class ProgramMethods(ClientBase):
    async def register_program(
        self,
        name: str,
        *,
        program: Any,
        signature_name: str,
        version: str = "",
        metadata: Mapping[str, Any] | None = None,
        signature_version: str | None = None,
        performance: Mapping[str, float] | None = None,
        labels: Mapping[str, str] | None = None,
        change_type: str | int | None = None,
        media_type: str = "",
        progress: Callable[[int, int], None] | None = None,
    ) -> pb.ProgramVersion:
        """Registers a program version: RegisterProgram, or UploadProgram for an artifact above 3 MiB.

        The same name@version with the same artifact and the same spec again is a no-op.

        Args:
            name: The program, `sentiment` or `programs/sentiment`.
            program: The artifact: bytes, a dict of program state, a path, or a dspy.Module (the
                JSON its `.save("program.json")` writes).
            signature_name: The signature it implements: a short name (at `signature_version`, else
                the latest) or a resource name `signatures/s/versions/v`.
            version: The version; empty for the latest bumped by `change_type`.
            metadata: Free JSON-like metadata (training, changelog, contact ...).
            signature_version: The signature's version when `signature_name` is short.
            performance: Metrics such as accuracy, f1, latency_p95_ms.
            labels: Labels to filter by (team, domain, project).
            change_type: "major", "minor" or "patch" when `version` is empty.
            media_type: The artifact's media type (empty: DSPy program state JSON).
            progress: Called as `progress(sent, total)` after each chunk of a streamed upload, from
                gRPC's thread (a retry starts again from 0).

        Returns:
            The registered version (or the identical one that existed).

        Raises:
            InvalidArgumentError: Bad input, such as an artifact that is not DSPy program state when
                the media type says it is, credentials in the artifact or metadata, an impossible
                metric (accuracy 7), or no changelog when the server requires one.
            NotFoundError: The signature does not exist.
            AlreadyExistsError: The version exists with another artifact, or with the same artifact
                and another spec (performance, labels, metadata, signature).
            FailedPreconditionError: The semver guard: the bump is smaller than the change of the
                implemented signature needs.
            ResourceExhaustedError: The artifact is above the server's upload limit.
            TypeError: `program` is none of the accepted types.
        """
        spec = _spec(
            name,
            signature_name=signature_name,
            version=version,
            metadata=metadata,
            signature_version=signature_version,
            performance=performance,
            labels=labels,
            change_type=change_type,
            media_type=media_type,
        )
        artifact = convert.artifact_bytes(program)
        if len(artifact) > UNARY_ARTIFACT_LIMIT:
            return await self._upload(spec, artifact, progress)
        response = await self._call(
            self._registry_service.RegisterProgram,
            pb.RegisterProgramRequest(spec=spec, artifact=artifact, request_id=convert.request_id()),
            pb.RegisterProgramResponse,
        )
        return response.program_version

    async def upload_program(
        self,
        name: str,
        *,
        program: Any,
        signature_name: str,
        version: str = "",
        metadata: Mapping[str, Any] | None = None,
        signature_version: str | None = None,
        performance: Mapping[str, float] | None = None,
        labels: Mapping[str, str] | None = None,
        change_type: str | int | None = None,
        media_type: str = "",
        progress: Callable[[int, int], None] | None = None,
    ) -> pb.ProgramVersion:
        """As `register_program`, always streamed in 1 MiB chunks (UploadProgram), any size up to the
        server's limit.

        Args:
            name: The program; this and every other argument as `register_program` takes them.

        Returns:
            The registered version (or the identical one that existed).

        Raises:
            InvalidArgumentError: As `register_program`, or the bytes did not arrive whole.
            NotFoundError: The signature does not exist.
            AlreadyExistsError: As `register_program`.
            FailedPreconditionError: As `register_program`.
            ResourceExhaustedError: The artifact is above the server's upload limit (nothing is stored).
            TypeError: `program` is none of the accepted types.
        """
        spec = _spec(
            name,
            signature_name=signature_name,
            version=version,
            metadata=metadata,
            signature_version=signature_version,
            performance=performance,
            labels=labels,
            change_type=change_type,
            media_type=media_type,
        )
        return await self._upload(spec, convert.artifact_bytes(program), progress)

    async def _upload(
        self,
        spec: pb.ProgramVersionSpec,
        artifact: bytes,
        progress: Callable[[int, int], None] | None = None,
    ) -> pb.ProgramVersion:
        header = pb.UploadProgramHeader(
            spec=spec,
            request_id=convert.request_id(),
            expected_digest="sha256:" + hashlib.sha256(artifact).hexdigest(),
            size_bytes=len(artifact),
        )

        def parts() -> Iterable[pb.UploadProgramRequest]:
            yield pb.UploadProgramRequest(header=header)
            for start in range(0, len(artifact), CHUNK_SIZE):
                yield pb.UploadProgramRequest(chunk=artifact[start : start + CHUNK_SIZE])
                if progress is not None:
                    # Called from gRPC's thread as each chunk is taken (a retry starts again from 0).
                    progress(min(start + CHUNK_SIZE, len(artifact)), len(artifact))

        # A request iterator is consumed by the call, so each retry builds a new one.
        response = await self._call(
            lambda _, timeout: self._registry_service.UploadProgram(parts(), timeout=timeout),
            None,
            pb.UploadProgramResponse,
        )
        return response.program_version

    async def get_program(self, name: str) -> pb.Program:
        """A program's summary (GetProgram): its latest version, version count, labels and signature,
        and which versions are deployed where (`environments`: per environment, its target's stable
        version, candidate and weight, and the deployment pending or in progress there).

        Args:
            name: The program, short or `programs/...`.

        Returns:
            The program.

        Raises:
            NotFoundError: No such program.
        """
        response = await self._call(
            self._registry_service.GetProgram,
            pb.GetProgramRequest(name=convert.full_name("programs", name)),
            pb.GetProgramResponse,
        )
        return response.program

    async def get_program_version(
        self, name: str, version: str | None = None, *, environment: str | None = None
    ) -> pb.ProgramVersion:
        """One program version (GetProgramVersion): by number, the one `environment` serves, or the latest.

        Args:
            name: The program, short or `programs/...`.
            version: The version, or `latest` (also when neither it nor `environment` is given).
            environment: The environment whose stable version is wanted (`version` is then ignored).

        Returns:
            The version (its artifact's digest, signature, performance, labels, metadata ...).

        Raises:
            NotFoundError: No such program or version, or nothing deployed in `environment`.
        """
        if environment:
            request = pb.GetProgramVersionRequest(
                name=convert.full_name("programs", name), environment=environment
            )
        else:
            request = pb.GetProgramVersionRequest(name=convert.version_name(name, version or "latest"))
        response = await self._call(
            self._registry_service.GetProgramVersion, request, pb.GetProgramVersionResponse
        )
        return response.program_version

    async def get_latest_version(self, name: str) -> pb.ProgramVersion:
        """The highest version that is neither yanked nor a pre-release: what "latest" means.

        Args:
            name: The program, short or `programs/...`.

        Returns:
            The version.

        Raises:
            NotFoundError: No such program, or no version of it qualifies.
        """
        return await self.get_program_version(name)

    @overload
    async def load_program(
        self, name: str, version: str | None = None, *, environment: str | None = None, module: None = None
    ) -> LoadedProgram: ...

    @overload
    async def load_program(
        self,
        name: str,
        version: str | None = None,
        *,
        environment: str | None = None,
        module: Callable[[], _Module],
    ) -> _Module: ...

    async def load_program(
        self,
        name: str,
        version: str | None = None,
        *,
        environment: str | None = None,
        module: Callable[[], Any] | None = None,
    ) -> Any:
        """A version (by number, the one `environment` serves, or the latest) with its artifact.

        Args:
            name: The program, short or `programs/...`.
            version: The version, or `latest`.
            environment: The environment whose stable version is wanted.
            module: A dspy.Module subclass or a zero-argument factory: `module()` is returned with the
                artifact's state loaded (`.load(path)`), ready to call.

        Returns:
            With `module`, the live module; else a `LoadedProgram` (the version, the artifact, and the
            artifact parsed as JSON in `.state` when it is JSON).

        Raises:
            NotFoundError: No such program or version, or nothing deployed in `environment`.
            ValueError: The artifact received does not match its digest.
        """
        program_version = await self.get_program_version(name, version, environment=environment)
        artifact = await self.get_artifact(name, program_version.artifact.digest)
        if module is not None:
            return dspy_interop.load_module(module, artifact)
        state: Any = None
        if program_version.artifact.media_type in ("", DSPY_MEDIA_TYPE) or artifact[:1] in (b"{", b"["):
            try:
                state = json.loads(artifact)
            except ValueError:
                state = None
        return LoadedProgram(
            program_version=program_version,
            artifact=artifact,
            state=state,
            metadata=json_format.MessageToDict(program_version.metadata),
            performance=dict(program_version.performance),
        )

    async def list_programs(
        self,
        *,
        environment: str | None = None,
        team: str | None = None,
        labels: Mapping[str, str] | None = None,
        name_prefix: str = "",
        page_size: int = 0,
    ) -> AsyncIterator[pb.Program]:
        """Programs in name order (ListPrograms), fetched a page at a time.

        Args:
            environment: Only those deployed there.
            team: Only those labelled team=`team`.
            labels: Only those with all of these labels.
            name_prefix: Only those whose name starts with it.
            page_size: Programs per page (0: the server's default).

        Returns:
            An async iterator of the programs.

        Raises:
            InvalidArgumentError: A negative `page_size`.
        """
        selected = dict(labels or {})
        if team:
            selected["team"] = team
        request = pb.ListProgramsRequest(
            environment=environment or "", labels=selected, name_prefix=name_prefix, page_size=page_size
        )
        async for item in self._pages(
            self._registry_service.ListPrograms, request, pb.ListProgramsResponse, "programs"
        ):
            yield item

    async def list_program_versions(
        self, name: str, *, page_size: int = 0
    ) -> AsyncIterator[pb.ProgramVersion]:
        """A program's versions, newest first, yanked ones included and marked (ListProgramVersions).

        Args:
            name: The program, short or `programs/...`.
            page_size: Versions per page (0: the server's default).

        Returns:
            An async iterator of the versions.

        Raises:
            NotFoundError: No such program.
            InvalidArgumentError: A negative `page_size`.
        """
        request = pb.ListProgramVersionsRequest(
            parent=convert.full_name("programs", name), page_size=page_size
        )
        async for item in self._pages(
            self._registry_service.ListProgramVersions,
            request,
            pb.ListProgramVersionsResponse,
            "program_versions",
        ):
            yield item

    async def get_artifact(self, name: str, digest: str) -> bytes:
        """A program's artifact by digest (GetArtifact, streamed in chunks), checked against it.

        Args:
            name: The program, short or `programs/...`.
            digest: `sha256:<hex>`, as a version's `artifact.digest` gives it.

        Returns:
            The artifact's bytes.

        Raises:
            NotFoundError: The digest is not the artifact of a version of the program.
            ValueError: The bytes received do not match the digest.
        """
        data, _ = await self._download(name, digest)
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise ValueError(f"artifact of {name} has digest {actual}, not {digest}")
        return data

    async def _download(self, name: str, digest: str) -> tuple[bytes, str]:
        """GetArtifact's bytes and media type, not yet checked against the digest (the caller does)."""
        request = pb.GetArtifactRequest(program=convert.full_name("programs", name), digest=digest)
        chunks: list[bytes] = []
        media_type = ""
        async for part in self._stream(self._registry_service.GetArtifact, request, self.timeout):
            if part.HasField("artifact"):
                media_type = part.artifact.media_type
            chunks.append(part.data)
        return b"".join(chunks), media_type

    async def compare_program_versions(
        self, name: str, base_version: str, target_version: str = "latest"
    ) -> pb.CompareProgramVersionsResponse:
        """Two versions compared (CompareProgramVersions), with a recommendation.

        Args:
            name: The program, short or `programs/...`.
            base_version: The version compared against.
            target_version: The version compared, or `latest`.

        Returns:
            The response: `.performance_diff` (change and change_percent per metric),
            `.configuration_diff`, `.compatibility` and `.recommendation`.

        Raises:
            NotFoundError: Either version does not exist.
        """
        return await self._call(
            self._registry_service.CompareProgramVersions,
            pb.CompareProgramVersionsRequest(
                base=convert.version_name(name, base_version),
                target=convert.version_name(name, target_version),
            ),
            pb.CompareProgramVersionsResponse,
        )

    async def get_upgrade_path(
        self, name: str, from_version: str, to_version: str = "latest"
    ) -> list[pb.UpgradeStep]:
        """The steps from one version to a later one through every non-yanked version between
        (GetUpgradePath).

        Args:
            name: The program, short or `programs/...`.
            from_version: The version upgraded from.
            to_version: The version upgraded to, or `latest`.

        Returns:
            The steps in order, each with its compatibility, breaking changes and recommended tests.

        Raises:
            InvalidArgumentError: `from_version` does not precede `to_version`.
            NotFoundError: Either version does not exist.
        """
        response = await self._call(
            self._registry_service.GetUpgradePath,
            pb.GetUpgradePathRequest(
                program=convert.full_name("programs", name), from_version=from_version, to_version=to_version
            ),
            pb.GetUpgradePathResponse,
        )
        return list(response.steps)

    async def yank_program_version(
        self, name: str, version: str, *, reason: str = "", undo: bool = False, etag: str = ""
    ) -> pb.ProgramVersion:
        """Marks a version yanked (kept and listed, refused by new deployments), or lifts the mark
        (YankProgramVersion).

        Args:
            name: The program, short or `programs/...`.
            version: The version.
            reason: Why, kept with the mark.
            undo: Lift the mark instead.
            etag: The version's etag as last read: the call fails if it changed since.

        Returns:
            The version, marked (or not).

        Raises:
            NotFoundError: No such version.
            ConflictError: `etag` does not match; read the version again.
        """
        response = await self._call(
            self._registry_service.YankProgramVersion,
            pb.YankProgramVersionRequest(
                name=convert.version_name(name, version),
                reason=reason,
                undo=undo,
                etag=etag,
                request_id=convert.request_id(),
            ),
            pb.YankProgramVersionResponse,
        )
        return response.program_version

"""RegistryService: parse the request, call the use case, map the result. No rules here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

from google.protobuf.message import Message

from dspy_registry.v1 import registry_pb2 as pb
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc

from ..calls import serving
from ..domain import programs
from ..domain.model import ProgramVersion
from ..domain.names import VersionRef, check_name, check_prefix, parse_parent, parse_version_ref
from ..errors import InvalidArgument, ResourceExhausted
from ..usecases.artifacts import InMemory
from ..usecases.checks import Checks
from ..usecases.deployments import Deployments
from ..usecases.registry import RegisteredProgram, RegisteredSignature, Registry
from .context import Context
from .convert import registry as convert
from .guard import Guard, identity
from .mutations import answer, idempotency
from .response_cache import ResponseCache

SERVING_KEYS = 4096  # (name, environment) pairs whose checked cache key is remembered
R = TypeVar("R", bound=Message)
T = TypeVar("T")


def _program_ref(name: str, field: str = "name") -> VersionRef:
    return parse_version_ref(name, "programs", field)


def _registered(result: RegisteredProgram) -> pb.RegisterProgramResponse:
    return pb.RegisterProgramResponse(
        program_version=convert.program_version(result.program_version), created=result.created
    )


class RegistryServicer(pb_grpc.RegistryServiceServicer):
    def __init__(
        self,
        registry: Registry,
        guard: Guard,
        deployments: Deployments,
        cache: ResponseCache | None = None,
        checks: Checks | None = None,
    ) -> None:
        self.checks = checks or Checks(registry.store, deployments)
        self.registry = registry
        self.guard = guard
        self.deployments = deployments
        self.cache = cache or ResponseCache()
        self._serving_keys: dict[tuple[str, str], tuple[str, str, str]] = {}  # see _serving_key
        registry.store.commits.subscribe(self.cache.on_commit, self.cache.clear)

    # -- signatures ----------------------------------------------------------------------

    async def RegisterSignature(
        self, request: pb.RegisterSignatureRequest, context: Context
    ) -> pb.RegisterSignatureResponse:
        idem = idempotency(request, "RegisterSignature", _signature_response)
        result = await self.registry.register_signature(serving(), convert.signature_draft(request), idem)
        return answer(result, pb.RegisterSignatureResponse, _signature_response)

    async def GetSignature(
        self, request: pb.GetSignatureRequest, context: Context
    ) -> pb.GetSignatureResponse:
        ref = parse_version_ref(request.name, "signatures", "name", bare_means_latest=True)
        sv = await self.registry.get_signature(ref)
        return pb.GetSignatureResponse(signature_version=convert.signature_version(sv))

    async def ListSignatures(
        self, request: pb.ListSignaturesRequest, context: Context
    ) -> pb.ListSignaturesResponse:
        prefix = check_prefix(request.name_prefix)
        visible = await self.guard.readable(identity())
        page = await self.registry.list_signatures(prefix, visible, request.page_size, request.page_token)
        return pb.ListSignaturesResponse(
            signatures=[convert.signature_summary(s) for s in page.items],
            next_page_token=page.next_page_token,
            total_size=page.total_size,
        )

    async def ListSignatureVersions(
        self, request: pb.ListSignatureVersionsRequest, context: Context
    ) -> pb.ListSignatureVersionsResponse:
        name = parse_parent(request.parent, "signatures", "parent")
        page = await self.registry.list_signature_versions(name, request.page_size, request.page_token)
        return pb.ListSignatureVersionsResponse(
            signature_versions=[convert.signature_version(s) for s in page.items],
            next_page_token=page.next_page_token,
            total_size=page.total_size,
        )

    async def CheckSignatureCompatibility(
        self, request: pb.CheckSignatureCompatibilityRequest, context: Context
    ) -> pb.CheckSignatureCompatibilityResponse:
        base = parse_version_ref(request.base, "signatures", "base", bare_means_latest=True)
        candidate = request.WhichOneof("candidate")
        target = (
            parse_version_ref(request.target, "signatures", "target", bare_means_latest=True)
            if candidate == "target"
            else None
        )
        proposed = convert.spec_from_proto(request.proposed, "proposed") if candidate == "proposed" else None
        compat, sufficient = await self.registry.check_signature_compatibility(
            base, target, proposed, request.proposed_version
        )
        return pb.CheckSignatureCompatibilityResponse(
            compatibility=convert.compatibility(compat), bump_sufficient=sufficient
        )

    # -- programs ------------------------------------------------------------------------

    async def RegisterProgram(
        self, request: pb.RegisterProgramRequest, context: Context
    ) -> pb.RegisterProgramResponse:
        if len(request.artifact) > programs.UNARY_ARTIFACT_LIMIT:
            raise ResourceExhausted(
                "unary_artifact_bytes",
                f"artifact is {len(request.artifact)} bytes; RegisterProgram takes at most "
                f"{programs.UNARY_ARTIFACT_LIMIT}: use UploadProgram",
            )
        idem = idempotency(request, "RegisterProgram", _registered)
        draft = convert.program_draft(request.spec)
        result = await self.registry.register_program(serving(), draft, InMemory(request.artifact), idem)
        return answer(result, pb.RegisterProgramResponse, _registered)

    async def UploadProgram(
        self, request_iterator: AsyncIterator[pb.UploadProgramRequest], context: Context
    ) -> pb.UploadProgramResponse:
        messages = aiter(request_iterator)
        first = await anext(messages, None)
        if first is None:
            raise InvalidArgument.one("header", "the stream was empty")
        if first.WhichOneof("part") != "header":
            raise InvalidArgument.one("header", "the first message must be the header")
        header = first.header
        limit = self.registry.upload_limit
        if header.size_bytes < 0:
            raise InvalidArgument.one("header.size_bytes", "must not be negative")
        if header.size_bytes > limit:
            raise ResourceExhausted(
                "upload_bytes", f"artifact of {header.size_bytes} bytes exceeds the {limit} limit"
            )
        draft = convert.program_draft(header.spec)
        self.registry.validate_program_draft(draft)  # a bad spec is refused before any byte is taken
        # The chunks go to a spool file as they arrive (never all in memory); a slot of the few
        # uploads allowed at once is held until the registration is done.
        with self.registry.uploads.open(header.size_bytes) as spool:
            async for message in messages:
                if message.WhichOneof("part") != "chunk":
                    raise InvalidArgument.one("header", "only the first message may be a header")
                await spool.write(message.chunk)
            spool.finish()
            digest = await spool.sha256()
            if header.expected_digest and header.expected_digest != digest:
                raise InvalidArgument.one(
                    "header.expected_digest",
                    f"the bytes received hash to {digest}, not {header.expected_digest}",
                )
            # The idempotency fingerprint covers the header and the bytes' digest.
            fingerprint_of = pb.UploadProgramHeader()
            fingerprint_of.CopyFrom(header)
            fingerprint_of.expected_digest = digest
            idem = idempotency(fingerprint_of, "UploadProgram", _uploaded)
            result = await self.registry.register_program(serving(), draft, spool, idem)
        return answer(result, pb.UploadProgramResponse, _uploaded)

    async def GetProgram(self, request: pb.GetProgramRequest, context: Context) -> pb.GetProgramResponse:
        name = parse_parent(request.name, "programs", "name")
        program = convert.program_summary(await self.registry.get_program(name))
        program.environments.extend(
            convert.program_environment(x) for x in await self.deployments.deployed(name)
        )
        return pb.GetProgramResponse(program=program)

    async def GetProgramVersion(self, request: pb.GetProgramVersionRequest, context: Context) -> bytes:
        if request.environment:
            # The serving path, cached too: what an environment serves changes only with its target,
            # whose every change commits a target.updated event on programs/{program}/..., and that
            # drops the program's entries like any other commit about it.
            program, environment, key = self._serving_key(request.name, request.environment)
            cached = self.cache.get(key)
            if cached is not None:
                return cached
            generation = self.cache.generation(program)
            served = await self.deployments.served(program, environment)
            answer = pb.GetProgramVersionResponse(
                program_version=await self._with_checks(served)
            ).SerializeToString()
            self.cache.put(program, key, answer, generation)
            return answer
        cached = self.cache.get(request.name)
        if cached is not None:
            return cached
        ref = _program_ref(request.name)
        generation = self.cache.generation(ref.name)
        pv = await self.registry.get_program_version(ref)
        answer = pb.GetProgramVersionResponse(program_version=await self._with_checks(pv)).SerializeToString()
        self.cache.put(ref.name, request.name, answer, generation)
        return answer

    def _serving_key(self, name: str, environment: str) -> tuple[str, str, str]:
        """The program, the environment and the cache key of a by-environment read, its names checked
        (INVALID_ARGUMENT); remembered, as every pod of a program sends the same pair, call after call."""
        known = self._serving_keys.get((name, environment))
        if known is None:
            checked = check_name(environment.removeprefix("environments/"), "environment")
            program = parse_parent(name, "programs", "name")
            if len(self._serving_keys) >= SERVING_KEYS:
                self._serving_keys.clear()  # pairs never asked again must not grow memory
            known = (program, checked, f"programs/{program}/environments/{checked}/target")
            self._serving_keys[(name, environment)] = known
        return known

    async def _with_checks(self, pv: ProgramVersion) -> pb.ProgramVersion:
        """The version with the checks CI reported for it (a check report drops the cached answer:
        its event names the version)."""
        out = convert.program_version(pv)
        out.checks.extend(
            convert.version_check(c) for c in await self.checks.of_version(pv.program, pv.version)
        )
        return out

    async def ListPrograms(
        self, request: pb.ListProgramsRequest, context: Context
    ) -> pb.ListProgramsResponse:
        environment = request.environment.removeprefix("environments/")
        if environment:
            check_name(environment, "environment")
        page = await self.registry.list_programs(
            check_prefix(request.name_prefix),
            dict(request.labels),
            environment,
            await self.guard.readable(identity()),
            request.page_size,
            request.page_token,
        )
        return pb.ListProgramsResponse(
            programs=[convert.program_summary(p) for p in page.items],
            next_page_token=page.next_page_token,
            total_size=page.total_size,
        )

    async def ListProgramVersions(
        self, request: pb.ListProgramVersionsRequest, context: Context
    ) -> pb.ListProgramVersionsResponse:
        name = parse_parent(request.parent, "programs", "parent")
        page = await self.registry.list_program_versions(name, request.page_size, request.page_token)
        return pb.ListProgramVersionsResponse(
            program_versions=[convert.program_version(p) for p in page.items],
            next_page_token=page.next_page_token,
            total_size=page.total_size,
        )

    async def GetArtifact(
        self, request: pb.GetArtifactRequest, context: Context
    ) -> AsyncIterator[pb.GetArtifactResponse]:
        program = parse_parent(request.program, "programs", "program")
        stream = await self.registry.artifact(program, request.digest)
        info = pb.Artifact(digest=stream.digest, size_bytes=stream.size_bytes, media_type=stream.media_type)
        offset = 0
        async for chunk in stream.chunks:
            message = pb.GetArtifactResponse(offset=offset, data=chunk)
            if offset == 0:
                message.artifact.CopyFrom(info)
            yield message
            offset += len(chunk)

    async def CompareProgramVersions(
        self, request: pb.CompareProgramVersionsRequest, context: Context
    ) -> pb.CompareProgramVersionsResponse:
        base = _program_ref(request.base, "base")
        target = _program_ref(request.target, "target")
        if base.name != target.name:
            raise InvalidArgument.one("target", "compare two versions of the same program")
        a, b, comparison = await self.registry.compare(base, target)
        return convert.comparison(a, b, comparison)

    async def GetUpgradePath(
        self, request: pb.GetUpgradePathRequest, context: Context
    ) -> pb.GetUpgradePathResponse:
        program = parse_parent(request.program, "programs", "program")
        steps = await self.registry.upgrade_path(program, request.from_version, request.to_version)
        return pb.GetUpgradePathResponse(steps=[convert.upgrade_step(s) for s in steps])

    async def YankProgramVersion(
        self, request: pb.YankProgramVersionRequest, context: Context
    ) -> pb.YankProgramVersionResponse:
        idem = idempotency(request, "YankProgramVersion", _yanked)
        ref = _program_ref(request.name)
        result = await self.registry.yank(serving(), ref, request.reason, request.undo, request.etag, idem)
        return answer(result, pb.YankProgramVersionResponse, _yanked)


def _signature_response(result: RegisteredSignature) -> pb.RegisterSignatureResponse:
    return pb.RegisterSignatureResponse(
        signature_version=convert.signature_version(result.signature_version),
        warnings=list(result.warnings),
    )


def _uploaded(result: RegisteredProgram) -> pb.UploadProgramResponse:
    return pb.UploadProgramResponse(
        program_version=convert.program_version(result.program_version), created=result.created
    )


def _yanked(result: ProgramVersion) -> pb.YankProgramVersionResponse:
    return pb.YankProgramVersionResponse(program_version=convert.program_version(result))

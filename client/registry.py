"""The asynchronous Python client: one method per RPC of the three services, in the seed's words.

    async with Registry.connect("localhost:50051", token_file="admin.token") as registry:
        await registry.register_signature(name="text_classifier", signature=spec, version="1.0.0")
        await registry.register_program(
            name="sentiment", program=state_bytes, signature_name="text_classifier", version="1.0.0"
        )
        loaded = await registry.load_program("sentiment", environment="production")

Methods return the proto messages of the contract (protos/dspy_registry/v1),
unwrapped from their one-field responses, except `load_program`, which
returns a `LoadedProgram`. List methods are async iterators that fetch the
pages as they go. Failures raise the typed exceptions of `errors.py`.

Every mutation carries a fresh request_id, reused when the client retries
the call after UNAVAILABLE, so the server applies it once. `RPC_METHODS`
maps each RPC to its method; a test checks that it covers the contract.

Signatures are accepted as protos, dicts, bytes and dspy.Signature classes;
programs as bytes, state dicts, paths and dspy.Module instances; and
`load_program(..., module=MyModule)` returns a live dspy.Module. The dspy
conversions are in dspy_interop.py, which never imports dspy (an optional
extra: `pip install 'dspy-registry[dspy]'`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, overload

import grpc
from google.protobuf import duration_pb2, field_mask_pb2, json_format, struct_pb2, timestamp_pb2

from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import access_pb2_grpc as apb_grpc
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc

from . import dspy_interop
from .auth import bearer_interceptors
from .config import TlsArgument, resolve
from .errors import from_rpc_error

log = logging.getLogger(__name__)

_R = "dspy_registry.v1.RegistryService."
_D = "dspy_registry.v1.DeploymentService."
_A = "dspy_registry.v1.AccessService."

# Every RPC of the contract and the client method that calls it (tests/api/test_client.py checks both ways).
RPC_METHODS: dict[str, str] = {
    _R + "RegisterSignature": "register_signature",
    _R + "GetSignature": "get_signature",
    _R + "ListSignatures": "list_signatures",
    _R + "ListSignatureVersions": "list_signature_versions",
    _R + "CheckSignatureCompatibility": "check_signature_compatibility",
    _R + "RegisterProgram": "register_program",
    _R + "UploadProgram": "upload_program",
    _R + "GetProgram": "get_program",
    _R + "GetProgramVersion": "get_program_version",
    _R + "ListPrograms": "list_programs",
    _R + "ListProgramVersions": "list_versions",
    _R + "GetArtifact": "get_artifact",
    _R + "CompareProgramVersions": "compare_versions",
    _R + "GetUpgradePath": "generate_upgrade_path",
    _R + "YankProgramVersion": "yank_version",
    _D + "ListEnvironments": "list_environments",
    _D + "GetEnvironment": "get_environment",
    _D + "UpdateEnvironment": "update_environment",
    _D + "CreateDeployment": "deploy",
    _D + "GetDeployment": "get_deployment",
    _D + "ListDeployments": "list_deployments",
    _D + "ApproveDeployment": "approve",
    _D + "PromoteDeployment": "promote_deployment",
    _D + "AbortDeployment": "abort_deployment",
    _D + "RollbackDeployment": "rollback",
    _D + "GetDeploymentStatus": "get_deployment_status",
    _D + "WatchTargets": "watch",
    _D + "WatchEvents": "watch_events",
    _D + "ReportSidecarStatus": "report_sidecar_status",
    _D + "ReportMetrics": "report_metrics",
    _D + "CreateWebhook": "create_webhook",
    _D + "ListWebhooks": "list_webhooks",
    _D + "DeleteWebhook": "delete_webhook",
    _D + "ListWebhookDeliveries": "list_webhook_deliveries",
    _A + "WhoAmI": "whoami",
    _A + "CreatePrincipal": "create_principal",
    _A + "ListPrincipals": "list_principals",
    _A + "DisablePrincipal": "disable_principal",
    _A + "CreateToken": "create_token",
    _A + "ListTokens": "list_tokens",
    _A + "RevokeToken": "revoke_token",
    _A + "GrantPermission": "grant_permission",
    _A + "RevokePermission": "revoke_permission",
    _A + "ListPermissions": "list_permissions",
    _A + "CheckPermission": "check_permission",
    _A + "ListAuditEvents": "list_audit_events",
}

# Below this a program goes in one RegisterProgram call; above it, UploadProgram streams it
# (the unary limit is 4 MiB for the whole message, spec and metadata included).
UNARY_ARTIFACT_LIMIT = 3 << 20
CHUNK_SIZE = 1 << 20
DSPY_MEDIA_TYPE = "application/vnd.dspy.program+json"

_Module = TypeVar("_Module")  # what load_program(module=...) makes: a dspy.Module subclass's instance


@dataclass(frozen=True)
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


# -- conversions: the flexible argument types the methods accept, to the protos the RPCs take.


def _request_id() -> str:
    return str(uuid.uuid4())


def _name(collection: str, value: str) -> str:
    """`programs/x` from `x` or `programs/x`."""
    return value if value.startswith(collection + "/") else f"{collection}/{value}"


def _short(collection: str, value: str) -> str:
    """`x` from `programs/x` or `x`."""
    return value.removeprefix(collection + "/")


def _struct(value: Mapping[str, Any] | struct_pb2.Struct | None) -> struct_pb2.Struct | None:
    if value is None or isinstance(value, struct_pb2.Struct):
        return value
    out = struct_pb2.Struct()
    out.update(dict(value))
    return out


def _duration(value: timedelta | float | duration_pb2.Duration | None) -> duration_pb2.Duration | None:
    if value is None or isinstance(value, duration_pb2.Duration):
        return value
    out = duration_pb2.Duration()
    out.FromTimedelta(value if isinstance(value, timedelta) else timedelta(seconds=value))
    return out


def _timestamp(value: datetime | timestamp_pb2.Timestamp | None) -> timestamp_pb2.Timestamp | None:
    if value is None or isinstance(value, timestamp_pb2.Timestamp):
        return value
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def _enum(wrapper: Any, prefix: str, value: str | int | None) -> int:
    """An enum number from `"canary"`, `"STRATEGY_CANARY"` or the number itself."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    text = value.upper().replace("-", "_")
    return int(wrapper.Value(text if text.startswith(prefix) else prefix + text))


def _enums(wrapper: Any, prefix: str, values: Iterable[str | int] | None) -> list[int]:
    return [_enum(wrapper, prefix, v) for v in values or ()]


def _signature_spec(signature: Any) -> pb.SignatureSpec:
    """A SignatureSpec from a proto, its dict (proto3 JSON mapping), its serialized bytes or a dspy.Signature.

    A dspy.Signature class gives its instructions and typed fields (dspy_interop.signature_spec);
    an annotation with no registry type raises TypeError naming the field.
    """
    if dspy_interop.is_signature(signature):
        return dspy_interop.signature_spec(signature)
    if isinstance(signature, pb.SignatureSpec):
        return signature
    if isinstance(signature, Mapping):
        return json_format.ParseDict(dict(signature), pb.SignatureSpec())
    if isinstance(signature, bytes | bytearray):
        return pb.SignatureSpec.FromString(bytes(signature))
    raise TypeError(
        f"signature must be a SignatureSpec, a dict, bytes or a dspy.Signature class, not {type(signature).__name__}"
    )


def _artifact_bytes(program: Any) -> bytes:
    """The artifact from bytes, a dict of program state (as dspy.Module.dump_state gives), a file path
    or a dspy.Module (the JSON its `.save("program.json")` writes).
    """
    if dspy_interop.is_module(program):
        return dspy_interop.module_artifact(program)
    if isinstance(program, bytes | bytearray | memoryview):
        return bytes(program)
    if isinstance(program, Mapping):
        return json.dumps(program).encode()
    if isinstance(program, os.PathLike):
        return Path(program).read_bytes()
    raise TypeError(
        f"program must be bytes, a dict of state, a path or a dspy.Module, not {type(program).__name__}"
    )


def _signature_name(signature_name: str, version: str | None) -> str:
    """signatures/{s}/versions/{v} from a short name (version `latest` unless given) or a resource name."""
    if "/versions/" in signature_name:
        return signature_name
    return f"{_name('signatures', signature_name)}/versions/{version or 'latest'}"


def _strategy(
    strategy: str | int | dpb.DeploymentStrategy | None,
    canary_percent: int | Sequence[int] | None,
    pause: timedelta | float | None,
) -> dpb.DeploymentStrategy | None:
    if strategy is None and (canary_percent is not None or pause is not None):
        strategy = "canary"  # a weight or a pause says what is meant
    if strategy is None or isinstance(strategy, dpb.DeploymentStrategy):
        return strategy
    if canary_percent is None:
        canary_percent = 10
    out = dpb.DeploymentStrategy(strategy=_enum(dpb.Strategy, "STRATEGY_", strategy))  # type: ignore[arg-type]
    if out.strategy == dpb.STRATEGY_CANARY:
        weights = [canary_percent] if isinstance(canary_percent, int) else list(canary_percent)
        for weight in weights:
            step = out.canary.steps.add(weight_percent=weight)
            paused = _duration(pause)
            if paused is not None:
                step.pause.CopyFrom(paused)
    return out


def _selectors(
    program: str, environment: str, selectors: Sequence[tuple[str, str]]
) -> list[dpb.TargetSelector]:
    pairs = list(selectors) or ([(program, environment)] if program or environment else [])
    return [dpb.TargetSelector(program=p, environment=e) for p, e in pairs]


class Registry:
    """An asynchronous client of the registry. Use `Registry.connect(...)` as an async context manager."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float | None = 30.0, retries: int = 3) -> None:
        self.channel = channel
        self.timeout = timeout
        self.retries = retries
        self._registry = pb_grpc.RegistryServiceStub(channel)  # type: ignore[no-untyped-call]
        self._deployments = dpb_grpc.DeploymentServiceStub(channel)  # type: ignore[no-untyped-call]
        self._access = apb_grpc.AccessServiceStub(channel)  # type: ignore[no-untyped-call]

    @classmethod
    def connect(
        cls,
        target: str | None = None,
        *,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        tls: TlsArgument = None,
        config_file: str | os.PathLike[str] | None = None,
        timeout: float | None = 30.0,
        retries: int = 3,
        options: Sequence[tuple[str, Any]] = (),
    ) -> Registry:
        """A client of `target`; arguments left out come from the environment, then the config file.

        `tls`: True for the system roots, a CA bundle path, or a `Tls(ca=, cert=, key=)` for mutual TLS.
        `timeout` is each unary call's deadline in seconds; `retries` how often a call that found the
        server UNAVAILABLE is tried again (with the same request_id).
        """
        settings = resolve(target, token=token, token_file=token_file, tls=tls, config_file=config_file)
        interceptors = bearer_interceptors(settings.token) if settings.token else None
        channel_options = [("grpc.max_receive_message_length", 8 << 20), *options]
        if settings.tls is not None:
            channel = grpc.aio.secure_channel(
                settings.target,
                settings.tls.credentials(),
                options=channel_options,
                interceptors=interceptors,
            )
        else:
            channel = grpc.aio.insecure_channel(
                settings.target, options=channel_options, interceptors=interceptors
            )
        return cls(channel, timeout=timeout, retries=retries)

    async def close(self) -> None:
        await self.channel.close(None)

    async def __aenter__(self) -> Registry:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- how calls are made

    async def _unary(self, method: Any, request: Any) -> Any:
        attempt = 0
        while True:
            try:
                return await method(request, timeout=self.timeout)
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                    # The same request (and request_id) again: the server applies a mutation once.
                    attempt += 1
                    await asyncio.sleep(min(2.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.0))
                    continue
                raise from_rpc_error(err) from err

    async def _stream(self, method: Any, request: Any, timeout: float | None = None) -> AsyncIterator[Any]:
        call = method(request, timeout=timeout)
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from err
        finally:
            call.cancel()

    async def _pages(self, method: Any, request: Any, items: str) -> AsyncIterator[Any]:
        while True:
            response = await self._unary(method, request)
            for item in getattr(response, items):
                yield item
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    # -- RegistryService: signatures

    async def register_signature(
        self,
        name: str,
        signature: Any,
        version: str = "",
        metadata: Mapping[str, Any] | None = None,
        *,
        change_type: str | int | None = None,
    ) -> pb.SignatureVersion:
        """Registers a signature version (`version` empty: bumped by `change_type` or by what changed)."""
        response = await self._unary(
            self._registry.RegisterSignature,
            pb.RegisterSignatureRequest(
                signature=_short("signatures", name),
                version=version,
                change_type=_enum(pb.ChangeType, "CHANGE_TYPE_", change_type),  # type: ignore[arg-type]
                spec=_signature_spec(signature),
                metadata=_struct(metadata),
                request_id=_request_id(),
            ),
        )
        for warning in response.warnings:
            log.warning("register_signature %s: %s", name, warning)
        result: pb.SignatureVersion = response.signature_version
        return result

    async def get_signature(self, name: str, version: str = "latest") -> pb.SignatureVersion:
        response = await self._unary(
            self._registry.GetSignature,
            pb.GetSignatureRequest(name=_signature_name(name, version)),
        )
        result: pb.SignatureVersion = response.signature_version
        return result

    async def list_signatures(
        self, name_prefix: str = "", *, page_size: int = 0
    ) -> AsyncIterator[pb.Signature]:
        request = pb.ListSignaturesRequest(name_prefix=name_prefix, page_size=page_size)
        async for item in self._pages(self._registry.ListSignatures, request, "signatures"):
            yield item

    async def list_signature_versions(
        self, name: str, *, page_size: int = 0
    ) -> AsyncIterator[pb.SignatureVersion]:
        request = pb.ListSignatureVersionsRequest(parent=_name("signatures", name), page_size=page_size)
        async for item in self._pages(self._registry.ListSignatureVersions, request, "signature_versions"):
            yield item

    async def check_signature_compatibility(
        self,
        name: str,
        base_version: str = "latest",
        *,
        target_version: str | None = None,
        proposed: Any = None,
        proposed_version: str = "",
    ) -> pb.CheckSignatureCompatibilityResponse:
        """Compares `target_version`, or a `proposed` spec, with `base_version`."""
        request = pb.CheckSignatureCompatibilityRequest(
            base=_signature_name(name, base_version), proposed_version=proposed_version
        )
        if target_version is not None:
            request.target = _signature_name(name, target_version)
        if proposed is not None:
            request.proposed.CopyFrom(_signature_spec(proposed))
        result: pb.CheckSignatureCompatibilityResponse = await self._unary(
            self._registry.CheckSignatureCompatibility, request
        )
        return result

    # -- RegistryService: programs

    @staticmethod
    def _program_spec(
        name: str,
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
            program=_short("programs", name),
            version=version,
            change_type=_enum(pb.ChangeType, "CHANGE_TYPE_", change_type),  # type: ignore[arg-type]
            media_type=media_type,
            signature=_signature_name(signature_name, signature_version),
            performance=dict(performance or {}),
            labels=dict(labels or {}),
            metadata=_struct(metadata),
        )

    async def register_program(
        self,
        name: str,
        program: Any,
        signature_name: str,
        version: str = "",
        metadata: Mapping[str, Any] | None = None,
        *,
        signature_version: str | None = None,
        performance: Mapping[str, float] | None = None,
        labels: Mapping[str, str] | None = None,
        change_type: str | int | None = None,
        media_type: str = "",
        progress: Callable[[int, int], None] | None = None,
    ) -> pb.ProgramVersion:
        """Registers a program version: `program` is the artifact (bytes, a state dict or a path).

        `signature_name` is a short name (its `signature_version`, else latest) or a resource name.
        Artifacts above 3 MiB go through UploadProgram; `progress(sent, total)` follows their chunks.
        """
        spec = self._program_spec(
            name,
            signature_name,
            version,
            metadata,
            signature_version,
            performance,
            labels,
            change_type,
            media_type,
        )
        artifact = _artifact_bytes(program)
        if len(artifact) > UNARY_ARTIFACT_LIMIT:
            return await self._upload(spec, artifact, progress)
        response = await self._unary(
            self._registry.RegisterProgram,
            pb.RegisterProgramRequest(spec=spec, artifact=artifact, request_id=_request_id()),
        )
        result: pb.ProgramVersion = response.program_version
        return result

    async def upload_program(
        self,
        name: str,
        program: Any,
        signature_name: str,
        version: str = "",
        metadata: Mapping[str, Any] | None = None,
        *,
        signature_version: str | None = None,
        performance: Mapping[str, float] | None = None,
        labels: Mapping[str, str] | None = None,
        change_type: str | int | None = None,
        media_type: str = "",
        progress: Callable[[int, int], None] | None = None,
    ) -> pb.ProgramVersion:
        """As register_program, always streamed in 1 MiB chunks (any size up to the server's limit)."""
        spec = self._program_spec(
            name,
            signature_name,
            version,
            metadata,
            signature_version,
            performance,
            labels,
            change_type,
            media_type,
        )
        return await self._upload(spec, _artifact_bytes(program), progress)

    async def _upload(
        self,
        spec: pb.ProgramVersionSpec,
        artifact: bytes,
        progress: Callable[[int, int], None] | None = None,
    ) -> pb.ProgramVersion:
        header = pb.UploadProgramHeader(
            spec=spec,
            request_id=_request_id(),
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
        response = await self._unary(
            lambda _, timeout: self._registry.UploadProgram(parts(), timeout=timeout), None
        )
        result: pb.ProgramVersion = response.program_version
        return result

    async def get_program(self, name: str) -> pb.Program:
        response = await self._unary(
            self._registry.GetProgram, pb.GetProgramRequest(name=_name("programs", name))
        )
        result: pb.Program = response.program
        return result

    async def get_program_version(
        self, name: str, version: str | None = None, environment: str | None = None
    ) -> pb.ProgramVersion:
        """A version by number, the one `environment` serves, or (neither given) the latest."""
        if environment:
            request = pb.GetProgramVersionRequest(name=_name("programs", name), environment=environment)
        else:
            request = pb.GetProgramVersionRequest(
                name=f"{_name('programs', name)}/versions/{version or 'latest'}"
            )
        response = await self._unary(self._registry.GetProgramVersion, request)
        result: pb.ProgramVersion = response.program_version
        return result

    async def get_latest_version(self, name: str) -> pb.ProgramVersion:
        """The highest non-yanked, non-pre-release version."""
        return await self.get_program_version(name)

    @overload
    async def load_program(
        self, name: str, version: str | None = None, environment: str | None = None, module: None = None
    ) -> LoadedProgram: ...

    @overload
    async def load_program(
        self,
        name: str,
        version: str | None = None,
        environment: str | None = None,
        *,
        module: Callable[[], _Module],
    ) -> _Module: ...

    async def load_program(
        self,
        name: str,
        version: str | None = None,
        environment: str | None = None,
        module: Callable[[], Any] | None = None,
    ) -> Any:
        """A version (by number, the one `environment` serves, or the latest) with its artifact.

        With `module` (a dspy.Module subclass or a zero-argument factory): `module()` with the
        artifact's state loaded (`.load(path)`), ready to call; else a `LoadedProgram`.
        """
        program_version = await self.get_program_version(name, version, environment)
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
        environment: str | None = None,
        team: str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        name_prefix: str = "",
        page_size: int = 0,
    ) -> AsyncIterator[pb.Program]:
        """Programs in name order; `team` is the label team=..., `environment` those deployed there."""
        selected = dict(labels or {})
        if team:
            selected["team"] = team
        request = pb.ListProgramsRequest(
            environment=environment or "", labels=selected, name_prefix=name_prefix, page_size=page_size
        )
        async for item in self._pages(self._registry.ListPrograms, request, "programs"):
            yield item

    async def list_versions(self, name: str, *, page_size: int = 0) -> AsyncIterator[pb.ProgramVersion]:
        """A program's versions, newest first, yanked ones included (and marked)."""
        request = pb.ListProgramVersionsRequest(parent=_name("programs", name), page_size=page_size)
        async for item in self._pages(self._registry.ListProgramVersions, request, "program_versions"):
            yield item

    async def get_artifact(self, name: str, digest: str) -> bytes:
        """A program's artifact by digest, checked against it."""
        request = pb.GetArtifactRequest(program=_name("programs", name), digest=digest)
        chunks = [
            chunk.data async for chunk in self._stream(self._registry.GetArtifact, request, self.timeout)
        ]
        data = b"".join(chunks)
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise ValueError(f"artifact of {name} has digest {actual}, not {digest}")
        return data

    async def compare_versions(
        self, name: str, base_version: str, target_version: str = "latest"
    ) -> pb.CompareProgramVersionsResponse:
        """Performance, configuration and signature differences, and a recommendation."""
        program = _name("programs", name)
        result: pb.CompareProgramVersionsResponse = await self._unary(
            self._registry.CompareProgramVersions,
            pb.CompareProgramVersionsRequest(
                base=f"{program}/versions/{base_version}", target=f"{program}/versions/{target_version}"
            ),
        )
        return result

    async def generate_upgrade_path(
        self, name: str, from_version: str, to_version: str = "latest"
    ) -> list[pb.UpgradeStep]:
        """The steps from one version to a later one, through every non-yanked version between."""
        response = await self._unary(
            self._registry.GetUpgradePath,
            pb.GetUpgradePathRequest(
                program=_name("programs", name), from_version=from_version, to_version=to_version
            ),
        )
        return list(response.steps)

    async def yank_version(
        self, name: str, version: str, reason: str = "", *, undo: bool = False, etag: str = ""
    ) -> pb.ProgramVersion:
        """Marks a version yanked (refused by new deployments), or lifts the mark with `undo`."""
        response = await self._unary(
            self._registry.YankProgramVersion,
            pb.YankProgramVersionRequest(
                name=f"{_name('programs', name)}/versions/{version}",
                reason=reason,
                undo=undo,
                etag=etag,
                request_id=_request_id(),
            ),
        )
        result: pb.ProgramVersion = response.program_version
        return result

    # -- DeploymentService: environments

    async def list_environments(self, *, page_size: int = 0) -> AsyncIterator[dpb.Environment]:
        request = dpb.ListEnvironmentsRequest(page_size=page_size)
        async for item in self._pages(self._deployments.ListEnvironments, request, "environments"):
            yield item

    async def get_environment(self, name: str) -> dpb.Environment:
        response = await self._unary(
            self._deployments.GetEnvironment, dpb.GetEnvironmentRequest(name=_name("environments", name))
        )
        result: dpb.Environment = response.environment
        return result

    async def update_environment(
        self,
        environment: dpb.Environment | Mapping[str, Any],
        *,
        update_mask: Sequence[str] = (),
        etag: str = "",
        allow_missing: bool = False,
    ) -> dpb.Environment:
        """Changes the fields in `update_mask` (all of them when empty); creates it with `allow_missing`."""
        if isinstance(environment, Mapping):
            environment = json_format.ParseDict(dict(environment), dpb.Environment())
        if environment.name:
            environment.name = _name("environments", environment.name)
        response = await self._unary(
            self._deployments.UpdateEnvironment,
            dpb.UpdateEnvironmentRequest(
                environment=environment,
                update_mask=field_mask_pb2.FieldMask(paths=list(update_mask)),
                etag=etag,
                allow_missing=allow_missing,
                request_id=_request_id(),
            ),
        )
        result: dpb.Environment = response.environment
        return result

    # -- DeploymentService: deployments

    async def deploy(
        self,
        name: str,
        version: str,
        environment: str,
        strategy: str | int | dpb.DeploymentStrategy | None = None,
        canary_percent: int | Sequence[int] | None = None,
        *,
        pause: timedelta | float | None = None,
        reason: str = "",
        supersede: bool = False,
        allow_breaking: bool = False,
        expected_target_etag: str = "",
    ) -> dpb.Deployment:
        """Deploys a version to an environment (CreateDeployment).

        `strategy`: "canary" (one step at `canary_percent`, 10 unless given, or one step per weight
        given, each held for `pause`), "blue_green", "replace", a DeploymentStrategy, or None for the
        environment's default (a canary when `canary_percent` or `pause` is given). The environment's
        policy validates the version first (its minimum performance, the semver guard); the
        deployment may wait in PENDING_APPROVAL (see `approve`).
        """
        response = await self._unary(
            self._deployments.CreateDeployment,
            dpb.CreateDeploymentRequest(
                program=_short("programs", name),
                version=version,
                environment=_short("environments", environment),
                strategy=_strategy(strategy, canary_percent, pause),
                reason=reason,
                request_id=_request_id(),
                expected_target_etag=expected_target_etag,
                supersede=supersede,
                allow_breaking=allow_breaking,
            ),
        )
        result: dpb.Deployment = response.deployment
        return result

    async def get_deployment(self, deployment_id: str) -> dpb.Deployment:
        response = await self._unary(
            self._deployments.GetDeployment,
            dpb.GetDeploymentRequest(name=_name("deployments", deployment_id)),
        )
        result: dpb.Deployment = response.deployment
        return result

    async def list_deployments(
        self,
        name: str = "",
        environment: str = "",
        *,
        states: Iterable[str | int] = (),
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        page_size: int = 0,
    ) -> AsyncIterator[dpb.Deployment]:
        """Deployments, newest first, of a program and/or environment, in the given states."""
        request = dpb.ListDeploymentsRequest(
            program=_short("programs", name),
            environment=_short("environments", environment),
            states=_enums(dpb.DeploymentState, "DEPLOYMENT_STATE_", states),  # type: ignore[arg-type]
            start_time=_timestamp(start_time),
            end_time=_timestamp(end_time),
            page_size=page_size,
        )
        async for item in self._pages(self._deployments.ListDeployments, request, "deployments"):
            yield item

    async def approve(
        self, deployment_id: str, comment: str = "", *, reject: bool = False, etag: str = ""
    ) -> dpb.Deployment:
        """Approves a deployment pending approval (or rejects it, ending it ABORTED)."""
        response = await self._unary(
            self._deployments.ApproveDeployment,
            dpb.ApproveDeploymentRequest(
                name=_name("deployments", deployment_id),
                comment=comment,
                reject=reject,
                etag=etag,
                request_id=_request_id(),
            ),
        )
        result: dpb.Deployment = response.deployment
        return result

    async def promote_version(
        self,
        name: str,
        version: str,
        target_environment: str,
        *,
        strategy: str | int | dpb.DeploymentStrategy | None = None,
        reason: str = "",
    ) -> dpb.Deployment:
        """The seed's VersionManager#promote_version: puts `version` into `target_environment`.

        The same as `deploy` with the environment's own strategy; the server validates the version
        against the environment's policy (INVALID_ARGUMENT or FAILED_PRECONDITION, saying why) before
        anything changes. To advance a deployment already in progress, use `promote_deployment`.
        """
        return await self.deploy(name, version, target_environment, strategy, reason=reason)

    async def promote_deployment(
        self, deployment_id: str, *, full: bool = False, reason: str = "", etag: str = ""
    ) -> dpb.Deployment:
        """Advances a deployment now: the next canary step (all with `full`), or the blue-green switch."""
        response = await self._unary(
            self._deployments.PromoteDeployment,
            dpb.PromoteDeploymentRequest(
                name=_name("deployments", deployment_id),
                full=full,
                reason=reason,
                etag=etag,
                request_id=_request_id(),
            ),
        )
        result: dpb.Deployment = response.deployment
        return result

    async def abort_deployment(
        self, deployment_id: str, reason: str = "", *, etag: str = ""
    ) -> dpb.Deployment:
        response = await self._unary(
            self._deployments.AbortDeployment,
            dpb.AbortDeploymentRequest(
                name=_name("deployments", deployment_id), reason=reason, etag=etag, request_id=_request_id()
            ),
        )
        result: dpb.Deployment = response.deployment
        return result

    async def rollback(
        self, deployment_id: str, reason: str = "", *, etag: str = ""
    ) -> dpb.RollbackDeploymentResponse:
        """Rolls a deployment back to the previous version: `.deployment` is the rollback, `.rolled_back` it."""
        result: dpb.RollbackDeploymentResponse = await self._unary(
            self._deployments.RollbackDeployment,
            dpb.RollbackDeploymentRequest(
                name=_name("deployments", deployment_id), reason=reason, etag=etag, request_id=_request_id()
            ),
        )
        return result

    async def get_deployment_status(self, name: str, environment: str) -> dpb.GetDeploymentStatusResponse:
        """The target, its current deployment, live health per version, and the sidecars serving it."""
        result: dpb.GetDeploymentStatusResponse = await self._unary(
            self._deployments.GetDeploymentStatus,
            dpb.GetDeploymentStatusRequest(
                program=_short("programs", name), environment=_short("environments", environment)
            ),
        )
        return result

    # -- DeploymentService: streams

    async def watch(
        self,
        program: str = "",
        environment: str = "",
        *,
        selectors: Sequence[tuple[str, str]] = (),
        start_revision: int = 0,
        sidecar_id: str = "",
        progress_interval: timedelta | float | None = None,
    ) -> AsyncGenerator[dpb.WatchTargetsResponse, None]:
        """Streams targets (`program` may be a glob; `selectors` for several): a snapshot, then changes."""
        request = dpb.WatchTargetsRequest(
            selectors=_selectors(program, environment, selectors),
            start_revision=start_revision,
            sidecar_id=sidecar_id,
            progress_interval=_duration(progress_interval),
        )
        async for message in self._stream(self._deployments.WatchTargets, request):
            yield message

    async def watch_events(
        self,
        program: str = "",
        environment: str = "",
        *,
        selectors: Sequence[tuple[str, str]] = (),
        start_revision: int = 0,
        kinds: Iterable[str | int] = (),
        progress_interval: timedelta | float | None = None,
    ) -> AsyncGenerator[dpb.WatchEventsResponse, None]:
        """Streams deployment events: a snapshot of live deployments, then each revision's events."""
        request = dpb.WatchEventsRequest(
            selectors=_selectors(program, environment, selectors),
            start_revision=start_revision,
            kinds=_enums(dpb.DeploymentEventKind, "DEPLOYMENT_EVENT_KIND_", kinds),  # type: ignore[arg-type]
            progress_interval=_duration(progress_interval),
        )
        async for message in self._stream(self._deployments.WatchEvents, request):
            yield message

    # -- DeploymentService: sidecar reports (client/watcher.py sends these for a serving process)

    async def report_sidecar_status(
        self,
        sidecar_id: str,
        targets: Iterable[dpb.SidecarTargetStatus] = (),
        *,
        revision: int = 0,
        heartbeat_interval: timedelta | float | None = None,
        leaving: bool = False,
    ) -> dpb.ReportSidecarStatusResponse:
        result: dpb.ReportSidecarStatusResponse = await self._unary(
            self._deployments.ReportSidecarStatus,
            dpb.ReportSidecarStatusRequest(
                sidecar_id=sidecar_id,
                targets=list(targets),
                revision=revision,
                heartbeat_interval=_duration(heartbeat_interval),
                leaving=leaving,
            ),
        )
        return result

    async def report_metrics(
        self, sidecar_id: str, windows: Iterable[dpb.MetricWindow]
    ) -> dpb.ReportMetricsResponse:
        result: dpb.ReportMetricsResponse = await self._unary(
            self._deployments.ReportMetrics,
            dpb.ReportMetricsRequest(sidecar_id=sidecar_id, windows=list(windows)),
        )
        return result

    # -- DeploymentService: webhooks

    async def create_webhook(
        self,
        webhook_id: str,
        url: str,
        secret: str,
        *,
        event_kinds: Iterable[str | int] = (),
        selectors: Sequence[tuple[str, str]] = (),
        description: str = "",
    ) -> dpb.Webhook:
        response = await self._unary(
            self._deployments.CreateWebhook,
            dpb.CreateWebhookRequest(
                webhook_id=_short("webhooks", webhook_id),
                webhook=dpb.Webhook(
                    url=url,
                    secret=secret,
                    description=description,
                    event_kinds=_enums(dpb.DeploymentEventKind, "DEPLOYMENT_EVENT_KIND_", event_kinds),  # type: ignore[arg-type]
                    selectors=_selectors("", "", selectors),
                ),
                request_id=_request_id(),
            ),
        )
        result: dpb.Webhook = response.webhook
        return result

    async def list_webhooks(self, *, page_size: int = 0) -> AsyncIterator[dpb.Webhook]:
        request = dpb.ListWebhooksRequest(page_size=page_size)
        async for item in self._pages(self._deployments.ListWebhooks, request, "webhooks"):
            yield item

    async def delete_webhook(self, webhook_id: str) -> dpb.Webhook:
        response = await self._unary(
            self._deployments.DeleteWebhook,
            dpb.DeleteWebhookRequest(name=_name("webhooks", webhook_id), request_id=_request_id()),
        )
        result: dpb.Webhook = response.webhook
        return result

    async def list_webhook_deliveries(
        self, webhook_id: str, *, states: Iterable[str | int] = (), page_size: int = 0
    ) -> AsyncIterator[dpb.WebhookDelivery]:
        request = dpb.ListWebhookDeliveriesRequest(
            parent=_name("webhooks", webhook_id),
            states=_enums(dpb.DeliveryState, "DELIVERY_STATE_", states),  # type: ignore[arg-type]
            page_size=page_size,
        )
        async for item in self._pages(self._deployments.ListWebhookDeliveries, request, "deliveries"):
            yield item

    # -- AccessService

    async def whoami(self) -> apb.WhoAmIResponse:
        """The calling principal, how it authenticated, and its grants."""
        result: apb.WhoAmIResponse = await self._unary(self._access.WhoAmI, apb.WhoAmIRequest())
        return result

    async def create_principal(
        self,
        principal_id: str,
        *,
        type: str | int = "user",
        display_name: str = "",
        team: str = "",
        email: str = "",
        certificate_subjects: Iterable[str] = (),
    ) -> apb.Principal:
        """Creates a user (`type="user"`) or a service account (`type="service_account"`)."""
        response = await self._unary(
            self._access.CreatePrincipal,
            apb.CreatePrincipalRequest(
                principal_id=_short("principals", principal_id),
                principal=apb.Principal(
                    type=_enum(apb.PrincipalType, "PRINCIPAL_TYPE_", type),  # type: ignore[arg-type]
                    display_name=display_name,
                    team=team,
                    email=email,
                    certificate_subjects=list(certificate_subjects),
                ),
                request_id=_request_id(),
            ),
        )
        result: apb.Principal = response.principal
        return result

    async def list_principals(
        self,
        *,
        type: str | int | None = None,
        team: str = "",
        include_disabled: bool = False,
        page_size: int = 0,
    ) -> AsyncIterator[apb.Principal]:
        request = apb.ListPrincipalsRequest(
            type=_enum(apb.PrincipalType, "PRINCIPAL_TYPE_", type),  # type: ignore[arg-type]
            team=team,
            include_disabled=include_disabled,
            page_size=page_size,
        )
        async for item in self._pages(self._access.ListPrincipals, request, "principals"):
            yield item

    async def disable_principal(
        self, principal: str, reason: str = "", *, undo: bool = False, etag: str = ""
    ) -> apb.Principal:
        """Disables a principal (its calls fail at once), or enables it again with `undo`."""
        response = await self._unary(
            self._access.DisablePrincipal,
            apb.DisablePrincipalRequest(
                name=_name("principals", principal),
                reason=reason,
                undo=undo,
                etag=etag,
                request_id=_request_id(),
            ),
        )
        result: apb.Principal = response.principal
        return result

    async def create_token(
        self,
        principal: str,
        description: str = "",
        *,
        ttl: timedelta | float | None = None,
        expire_time: datetime | None = None,
    ) -> apb.CreateTokenResponse:
        """A new bearer token: `.secret` (shown only here) and `.token`."""
        result: apb.CreateTokenResponse = await self._unary(
            self._access.CreateToken,
            apb.CreateTokenRequest(
                parent=_name("principals", principal),
                description=description,
                ttl=_duration(ttl),
                expire_time=_timestamp(expire_time),
                request_id=_request_id(),
            ),
        )
        return result

    async def list_tokens(
        self, principal: str = "-", *, include_inactive: bool = False, page_size: int = 0
    ) -> AsyncIterator[apb.Token]:
        """A principal's tokens (everyone's with "-"), never the secrets."""
        request = apb.ListTokensRequest(
            parent=_name("principals", principal), include_inactive=include_inactive, page_size=page_size
        )
        async for item in self._pages(self._access.ListTokens, request, "tokens"):
            yield item

    async def revoke_token(self, name: str) -> apb.Token:
        """Revokes a token by resource name: principals/{principal}/tokens/{token}."""
        response = await self._unary(
            self._access.RevokeToken, apb.RevokeTokenRequest(name=name, request_id=_request_id())
        )
        result: apb.Token = response.token
        return result

    async def grant_permission(self, principal: str, action: str | int, resource: str) -> apb.Permission:
        """Grants `action` ("read", "register", "deploy", "rollback", "approve", "admin") on a name or glob."""
        response = await self._unary(
            self._access.GrantPermission,
            apb.GrantPermissionRequest(
                principal=_name("principals", principal),
                action=_enum(apb.Action, "ACTION_", action),  # type: ignore[arg-type]
                resource=resource,
                request_id=_request_id(),
            ),
        )
        result: apb.Permission = response.permission
        return result

    async def revoke_permission(self, permission: str) -> apb.Permission:
        response = await self._unary(
            self._access.RevokePermission,
            apb.RevokePermissionRequest(name=_name("permissions", permission), request_id=_request_id()),
        )
        result: apb.Permission = response.permission
        return result

    async def list_permissions(
        self,
        principal: str = "",
        action: str | int | None = None,
        resource: str = "",
        *,
        page_size: int = 0,
    ) -> AsyncIterator[apb.Permission]:
        request = apb.ListPermissionsRequest(
            principal=_name("principals", principal) if principal else "",
            action=_enum(apb.Action, "ACTION_", action),  # type: ignore[arg-type]
            resource=resource,
            page_size=page_size,
        )
        async for item in self._pages(self._access.ListPermissions, request, "permissions"):
            yield item

    async def check_permission(
        self, action: str | int, resource: str, principal: str = ""
    ) -> apb.CheckPermissionResponse:
        """Whether `principal` (the caller by default) may do `action` on `resource`: `.allowed`, `.reason`."""
        result: apb.CheckPermissionResponse = await self._unary(
            self._access.CheckPermission,
            apb.CheckPermissionRequest(
                principal=_name("principals", principal) if principal else "",
                action=_enum(apb.Action, "ACTION_", action),  # type: ignore[arg-type]
                resource=resource,
            ),
        )
        return result

    async def list_audit_events(
        self,
        *,
        principal: str = "",
        resource: str = "",
        method: str = "",
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        outcomes: Iterable[str | int] = (),
        codes: Iterable[int] = (),
        page_size: int = 0,
    ) -> AsyncIterator[apb.AuditEvent]:
        request = apb.ListAuditEventsRequest(
            principal=_name("principals", principal) if principal else "",
            resource=resource,
            method=method,
            start_time=_timestamp(start_time),
            end_time=_timestamp(end_time),
            outcomes=_enums(apb.AuditOutcome, "AUDIT_OUTCOME_", outcomes),  # type: ignore[arg-type]
            codes=list(codes),
            page_size=page_size,
        )
        async for item in self._pages(self._access.ListAuditEvents, request, "audit_events"):
            yield item

"""The Python client (dspy_registry.client) against a real server over a real channel, on SQLite and
Postgres: every RPC has a method, where the target and token come from, the seed's flow, typed
errors with their details, watch streams, and TLS."""

from __future__ import annotations

import asyncio
import inspect
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from dspy_registry.client import (
    RPC_METHODS,
    AccessDeniedError,
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    Registry,
    SyncRegistry,
    Tls,
    UnauthenticatedError,
    UnavailableError,
)
from dspy_registry.client.auth import bearer_interceptors
from dspy_registry.client.config import DEFAULT_TARGET, resolve
from dspy_registry.server.app import App
from dspy_registry.v1 import access_pb2, deployment_pb2, registry_pb2
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import registry_pb2 as pb
from tests import docs
from tests.api.conftest import Running
from tests.certificates import Authority, tls_config
from tests.factories import dspy_state, spec_proto


def test_readme_shows_the_seed_flow() -> None:
    example = docs.block("<!-- same code as tests/api/test_client.py::test_seed_flow -->", "python")
    test = inspect.getsource(test_seed_flow)
    # Whitespace aside: the formatter wraps a call in the test, four columns deeper, that fits on one
    # line in the README.
    assert re.sub(r"\s+", "", example) in re.sub(r"\s+", "", test)


def test_every_rpc_has_a_client_method() -> None:
    rpcs = {
        method.full_name
        for module, service in (
            (registry_pb2, "RegistryService"),
            (deployment_pb2, "DeploymentService"),
            (access_pb2, "AccessService"),
        )
        for method in module.DESCRIPTOR.services_by_name[service].methods
    }
    assert not rpcs - RPC_METHODS.keys(), "RPCs without a client method"
    assert not RPC_METHODS.keys() - rpcs, "client methods of RPCs the contract no longer has"
    assert len(RPC_METHODS) == 49
    for rpc, method in RPC_METHODS.items():
        assert callable(getattr(Registry, method, None)), f"{rpc}: Registry.{method} is missing"
        assert callable(getattr(SyncRegistry, method, None)), f"{rpc}: SyncRegistry.{method} is missing"


def test_settings_come_from_arguments_then_environment_then_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    (tmp_path / "file.token").write_text("from-file\n")
    (tmp_path / "ca.pem").write_text("")  # a TLS file is read as the settings are resolved
    config.write_text('target = "file:1"\ntoken_file = "file.token"\ntls_ca = "ca.pem"\n')
    env = {"DSPY_REGISTRY_CONFIG": str(config)}
    from_file = resolve(env=env)
    assert (from_file.target, from_file.token) == ("file:1", "from-file")
    assert from_file.tls == Tls(ca=str(tmp_path / "ca.pem"))
    env |= {"DSPY_REGISTRY_TARGET": "env:2", "DSPY_REGISTRY_TOKEN": "from-env"}
    assert (resolve(env=env).target, resolve(env=env).token) == ("env:2", "from-env")
    explicit = resolve("arg:3", token="from-arg", tls=False, env=env)
    assert (explicit.target, explicit.token, explicit.tls) == ("arg:3", "from-arg", None)
    nothing = resolve(env={"DSPY_REGISTRY_CONFIG": str(tmp_path / "absent.toml")})
    assert (nothing.target, nothing.token, nothing.tls) == (DEFAULT_TARGET, None, None)
    assert resolve(tls=True, env={"DSPY_REGISTRY_CONFIG": str(tmp_path / "absent.toml")}).tls == Tls()


async def test_connect_with_arguments_environment_or_config_file(
    server: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSPY_REGISTRY_CONFIG", str(tmp_path / "absent.toml"))
    async with Registry.connect(server.target, token=server.admin_token) as registry:
        admin = (await registry.who_am_i()).principal.name
        assert admin.startswith("principals/")
    monkeypatch.setenv("DSPY_REGISTRY_TARGET", server.target)
    monkeypatch.setenv("DSPY_REGISTRY_TOKEN", server.admin_token)
    async with Registry.connect() as registry:
        assert (await registry.who_am_i()).principal.name == admin
    monkeypatch.delenv("DSPY_REGISTRY_TARGET")
    monkeypatch.delenv("DSPY_REGISTRY_TOKEN")
    (tmp_path / "admin.token").write_text(server.admin_token)
    (tmp_path / "config.toml").write_text(f'target = "{server.target}"\ntoken_file = "admin.token"\n')
    monkeypatch.setenv("DSPY_REGISTRY_CONFIG", str(tmp_path / "config.toml"))
    async with Registry.connect() as registry:
        assert (await registry.who_am_i()).principal.name == admin
    monkeypatch.setenv("DSPY_REGISTRY_CONFIG", str(tmp_path / "absent.toml"))
    async with Registry.connect(server.target) as anonymous:
        with pytest.raises(UnauthenticatedError):
            await anonymous.who_am_i()


# The signature as a dict in the proto3 JSON mapping of SignatureSpec (a SignatureSpec message works too).
SPEC = {
    "description": "Classify text sentiment with confidence scoring",
    "instructions": "Classify sentiment.",
    "input_fields": [{"name": "text", "type": {"kind": "KIND_STRING"}}],
    "output_fields": [
        {
            "name": "sentiment",
            "type": {"kind": "KIND_ENUM", "enum_values": ["positive", "negative", "neutral"]},
        },
        {"name": "confidence", "type": {"kind": "KIND_FLOAT"}},
    ],
}


def saved_state(version: str) -> bytes:
    """What dspy.Module.save("program.json") writes for one version."""
    return dspy_state(f"Classify sentiment, v{version}.")


async def test_seed_flow(server: Running) -> None:
    target, admin_token, spec = server.target, server.admin_token, SPEC
    # docs/client.md's "Python client" example is this block, whitespace aside (test_readme_shows_the_seed_flow).
    async with Registry.connect(target, token=admin_token) as registry:
        await registry.register_signature(name="text_classifier", signature=spec, version="1.0.0")
        for version, accuracy in (("1.0.0", 0.89), ("1.1.0", 0.92)):
            await registry.register_program(
                name="sentiment",
                program=saved_state(version),
                signature_name="text_classifier",
                version=version,
                metadata={"changelog": f"v{version}"},
                performance={"accuracy": accuracy},
            )
        loaded = await registry.load_program("sentiment", version="1.0.0")  # .state: the saved JSON
        latest = await registry.get_latest_version("sentiment")
        comparison = await registry.compare_program_versions("sentiment", "1.0.0", "1.1.0")
        staging = await registry.create_deployment("sentiment", "1.0.0", "staging", strategy="replace")
        canary = await registry.create_deployment(
            "sentiment", "1.1.0", "staging", canary_percent=20, pause=3600
        )
        status = await registry.get_deployment_status("sentiment", "staging")  # candidate at 20 %
        rolled = await registry.rollback_deployment(canary.name, reason="holding 1.1.0 back")

    assert loaded.version == "1.0.0" and loaded.performance == {"accuracy": 0.89}
    assert loaded.metadata == {"changelog": "v1.0.0"}
    assert loaded.state["predict"]["signature"]["instructions"] == "Classify sentiment, v1.0.0."
    assert loaded.artifact == saved_state("1.0.0")
    assert latest.version == "1.1.0"
    assert comparison.performance_diff[0].metric == "accuracy"
    assert comparison.recommendation == pb.RECOMMENDATION_UPGRADE
    assert staging.state == dpb.DEPLOYMENT_STATE_SUCCEEDED
    assert canary.state == dpb.DEPLOYMENT_STATE_IN_PROGRESS
    assert (status.target.candidate.version, status.target.candidate.weight_percent) == ("1.1.0", 20)
    assert status.target.stable.version == "1.0.0"
    assert rolled.rolled_back.state == dpb.DEPLOYMENT_STATE_ROLLED_BACK
    assert rolled.deployment.version == "1.0.0"

    async with Registry.connect(target, token=admin_token) as registry:
        assert [v.version async for v in registry.list_program_versions("sentiment")] == ["1.1.0", "1.0.0"]
        steps = await registry.get_upgrade_path("sentiment", "1.0.0", "1.1.0")
        assert [(s.from_version, s.to_version) for s in steps] == [("1.0.0", "1.1.0")]
        assert (await registry.load_program("sentiment", environment="development")).version == "1.1.0"
        assert (await registry.load_program("sentiment", environment="staging")).version == "1.0.0"
        registered = (await registry.get_signature("text_classifier")).spec  # the dict, parsed
        assert [f.name for f in registered.output_fields] == [f.name for f in spec_proto().output_fields]
        assert registered.output_fields[0].type.enum_values == ["positive", "negative", "neutral"]
        assert (await registry.get_deployment(rolled.deployment.name)).version == "1.0.0"
        # No strategy: the environment's default (staging's is blue-green); a pause alone means a canary.
        default = await registry.create_deployment("sentiment", "1.1.0", "staging")
        assert default.strategy.strategy == dpb.STRATEGY_BLUE_GREEN
        paused = await registry.create_deployment("sentiment", "1.1.0", "staging", pause=3600, supersede=True)
        assert [s.weight_percent for s in paused.strategy.canary.steps] == [10]
        await registry.abort_deployment(paused.name)

        # Production wants an approval from someone other than the requester.
        pending = await registry.create_deployment("sentiment", "1.0.0", "production", strategy="replace")
        assert pending.state == dpb.DEPLOYMENT_STATE_PENDING_APPROVAL
        await registry.create_principal("carol", team="ml_platform")
        await registry.grant_permission("carol", action="approve", resource="sentiment")
        await registry.grant_permission("carol", action="read", resource="sentiment")
        assert (await registry.check_permission("sentiment", action="approve", principal="carol")).allowed
        assert not (await registry.check_permission("sentiment", action="deploy", principal="carol")).allowed
        carol_token = (await registry.create_token("carol", description="approvals")).secret
    async with Registry.connect(target, token=carol_token) as carol:
        approved = await carol.approve_deployment(pending.name.split("/")[-1], comment="looks good")
        assert [a.principal for a in approved.approvals] == ["principals/carol"]
        assert (await carol.load_program("sentiment", environment="production")).version == "1.0.0"


async def test_list_programs_walks_every_page(server: Running) -> None:
    async with Registry.connect(server.target, token=server.admin_token) as registry:
        await registry.register_signature("sig", signature=spec_proto(), version="1.0.0")
        for i in range(5):
            team = "ml_platform" if i != 2 else "search"
            await registry.register_program(
                f"p{i}", program=dspy_state(), signature_name="sig", version="1.0.0", labels={"team": team}
            )
        pages = 0
        list_programs = registry.registry_service.ListPrograms

        def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal pages
            pages += 1
            return list_programs(*args, **kwargs)

        registry.registry_service.ListPrograms = counted
        names = [p.name async for p in registry.list_programs(team="ml_platform", page_size=2)]
        assert names == ["programs/p0", "programs/p1", "programs/p3", "programs/p4"] and pages == 2
        everything = [p.name async for p in registry.list_programs(environment="development", page_size=2)]
        assert len(everything) == 5 and pages == 5


async def test_errors_are_typed_and_carry_their_details(server: Running) -> None:
    async with Registry.connect(server.target, token=server.admin_token) as registry:
        with pytest.raises(NotFoundError) as missing:
            await registry.get_program("nope")
        assert missing.value.code == grpc.StatusCode.NOT_FOUND

        with pytest.raises(InvalidArgumentError) as invalid:
            await registry.register_signature(name="Bad Name", signature=spec_proto(), version="1.0")
        fields = {f for f, _ in invalid.value.field_violations}
        assert {"signature", "version"} <= fields, invalid.value.details

        await registry.register_signature("sig", signature=spec_proto(), version="1.0.0")
        version = await registry.register_program(
            "sentiment", program=dspy_state(), signature_name="sig", version="1.0.0"
        )
        with pytest.raises(ConflictError):
            await registry.yank_program_version(
                "sentiment", "1.0.0", reason="broken", etag=version.etag + "-stale"
            )
        yanked = await registry.yank_program_version("sentiment", "1.0.0", reason="broken", etag=version.etag)
        assert yanked.yanked

        await registry.create_principal("dave", type="service_account")
        dave_token = (await registry.create_token("dave", ttl=3600)).secret
    async with Registry.connect(server.target, token=dave_token) as dave:
        with pytest.raises(AccessDeniedError) as denied:
            await dave.get_program("sentiment")
        assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert not (await dave.check_permission("sentiment", action="read")).allowed


async def test_watch_reads_a_snapshot_then_a_change(server: Running) -> None:
    async with Registry.connect(server.target, token=server.admin_token) as registry:
        await registry.register_signature("sig", signature=spec_proto(), version="1.0.0")
        await registry.register_program(
            "sentiment", program=dspy_state(), signature_name="sig", version="1.0.0"
        )
        stream = registry.watch_targets("sentiment", "staging")
        async with asyncio.timeout(20):
            first = await anext(stream)
            assert first.WhichOneof("kind") == "snapshot" and not first.snapshot.targets
            await registry.create_deployment("sentiment", "1.0.0", "staging", strategy="replace")
            async for message in stream:
                if message.WhichOneof("kind") == "changes":
                    (target,) = message.changes.targets
                    assert target.stable.version == "1.0.0" and message.revision > first.revision
                    break
        await stream.aclose()


async def test_tls_with_a_private_authority(tmp_path: Path) -> None:
    app = App(tls_config(tmp_path, Authority("client test CA")))
    port = await app.start()
    try:
        target, token_file = f"localhost:{port}", tmp_path / "admin.token"
        async with Registry.connect(target, token_file=token_file, tls=tmp_path / "ca.crt") as registry:
            assert (await registry.who_am_i()).principal.name
        async with Registry.connect(
            target, token_file=token_file, tls=Tls(ca=tmp_path / "ca.crt")
        ) as registry:
            assert [e.name async for e in registry.list_environments()][0] == "environments/development"
    finally:
        await app.stop(grace=0)


async def test_mutual_tls_a_client_certificate_is_the_principal(tmp_path: Path) -> None:
    ca = Authority("client mTLS CA")
    app = App(tls_config(tmp_path, ca, mutual=True))
    port = await app.start()
    try:
        target, token_file = f"localhost:{port}", tmp_path / "admin.token"
        ca.issue("operator", server=False).save(tmp_path, "operator")
        ca.issue("pod-7", server=False).save(tmp_path, "pod")
        # Mutual TLS still takes a token: the admin, over a handshake with the operator's certificate.
        admin_tls = Tls(ca=tmp_path / "ca.crt", cert=tmp_path / "operator.crt", key=tmp_path / "operator.key")
        async with Registry.connect(target, token_file=token_file, tls=admin_tls) as registry:
            await registry.create_principal(
                "pod", type="service_account", certificate_subjects=["CN=pod-7,O=dspy-registry tests"]
            )
        # No token at all: the certificate named in the config file is the principal.
        config = tmp_path / "pod.toml"
        config.write_text(
            f'target = "{target}"\ntls_ca = "ca.crt"\ntls_cert = "pod.crt"\ntls_key = "pod.key"\n'
        )
        async with Registry.connect(config_file=config) as registry:
            me = await registry.who_am_i()
        assert me.principal.name == "principals/pod"
        assert me.authentication_method == access_pb2.AUTHENTICATION_METHOD_CLIENT_CERTIFICATE
        # Without a client certificate the handshake itself fails.
        async with Registry.connect(
            target, token_file=token_file, tls=tmp_path / "ca.crt", retries=0
        ) as registry:
            with pytest.raises(UnavailableError):
                await registry.who_am_i()
    finally:
        await app.stop(grace=0)


async def test_large_programs_are_streamed_both_ways(server: Running) -> None:
    big = dspy_state(pad=5 << 20)  # above the unary limit: UploadProgram, then GetArtifact in chunks
    async with Registry.connect(server.target, token=server.admin_token) as registry:
        await registry.register_signature("sig", signature=spec_proto(), version="1.0.0")
        registered = await registry.register_program(
            "big", program=big, signature_name="sig", version="1.0.0"
        )
        assert registered.artifact.size_bytes == len(big)
        small = await registry.upload_program(
            "big", program=dspy_state(), signature_name="sig", change_type="minor"
        )
        assert small.version == "1.1.0"
        loaded = await registry.load_program("big", "1.0.0")
        assert loaded.artifact == big and loaded.state["predict"]["demos"]


class _FlakyOnce(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Fails the first call of each request_id with UNAVAILABLE, without sending it."""

    def __init__(self) -> None:
        self.request_ids: list[str] = []

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        request_id = getattr(request, "request_id", "")
        self.request_ids.append(request_id)
        if self.request_ids.count(request_id) == 1:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "try again", None
            )
        return await continuation(details, request)


async def test_unavailable_is_retried_with_the_same_request_id(server: Running) -> None:
    flaky = _FlakyOnce()
    interceptors: list[Any] = [flaky, *bearer_interceptors(server.admin_token)]
    registry = Registry(grpc.aio.insecure_channel(server.target, interceptors=interceptors), retries=1)
    async with registry:
        version = await registry.register_signature("sig", signature=spec_proto(), version="1.0.0")
        assert version.version == "1.0.0"
        (first, second) = flaky.request_ids
        assert first == second and first  # one logical call, one id: the server applies it once
    flaky.request_ids.clear()
    unauthenticated = grpc.aio.insecure_channel(server.target, interceptors=interceptors[:1])
    async with Registry(unauthenticated, retries=0) as once:
        with pytest.raises(UnavailableError):
            await once.who_am_i()


async def test_watch_events_reads_a_deployment(server: Running) -> None:
    async with Registry.connect(server.target, token=server.admin_token) as registry:
        await registry.register_signature("sig", signature=spec_proto(), version="1.0.0")
        await registry.register_program(
            "sentiment", program=dspy_state(), signature_name="sig", version="1.0.0"
        )
        stream = registry.watch_events("sentiment", "staging", kinds=["succeeded"])
        async with asyncio.timeout(20):
            assert (await anext(stream)).WhichOneof("kind") == "snapshot"
            deployment = await registry.create_deployment("sentiment", "1.0.0", "staging", strategy="replace")
            async for message in stream:
                if message.WhichOneof("kind") == "events":
                    assert [(e.kind, e.deployment) for e in message.events.events] == [
                        (dpb.DEPLOYMENT_EVENT_KIND_SUCCEEDED, deployment.name)
                    ]
                    break
        await stream.aclose()


def test_the_client_does_not_import_the_server() -> None:
    code = "import sys, dspy_registry.client; print(sorted(m for m in sys.modules if '.server' in m))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"

"""Transport: TLS and mutual TLS (handshakes good and refused, a certificate as a principal), deadlines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from dspy_registry.server.app import App
from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import access_pb2_grpc as apb_grpc
from tests.certificates import Authority, Issued, tls_config

SUBJECT = "CN=sidecar-1,O=dspy-registry tests"  # RFC 2253, as grpc reports it


@dataclass
class TlsServer:
    app: App
    address: str
    ca: Authority
    admin_token: str


async def _serve(tmp_path: Path, *, mutual: bool, ca: Authority) -> TlsServer:
    app = App(tls_config(tmp_path, ca, mutual=mutual))
    port = await app.start()
    return TlsServer(app, f"localhost:{port}", ca, (tmp_path / "admin.token").read_text().strip())


@pytest.fixture
async def mutual(tmp_path: Path) -> AsyncIterator[TlsServer]:
    server = await _serve(tmp_path, mutual=True, ca=Authority("test CA"))
    yield server
    await server.app.stop(grace=0)


def _channel(server: TlsServer, client: Issued | None, token: str | None = None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=server.ca.pem,
        private_key=client.key if client else None,
        certificate_chain=client.certificate if client else None,
    )
    if token is not None:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token)
        )
    return grpc.aio.secure_channel(server.address, credentials)


async def test_a_client_certificate_authenticates_as_the_principal_it_maps_to(mutual: TlsServer) -> None:
    admin_cert = mutual.ca.issue("operator", server=False)
    async with _channel(mutual, admin_cert, mutual.admin_token) as channel:
        admin = apb_grpc.AccessServiceStub(channel)
        await admin.CreatePrincipal(
            apb.CreatePrincipalRequest(
                principal_id="sidecar",
                principal=apb.Principal(
                    type=apb.PRINCIPAL_TYPE_SERVICE_ACCOUNT, certificate_subjects=[SUBJECT]
                ),
            )
        )
    async with _channel(mutual, mutual.ca.issue("sidecar-1", server=False)) as channel:
        me = await apb_grpc.AccessServiceStub(channel).WhoAmI(apb.WhoAmIRequest())
    assert me.principal.name == "principals/sidecar"
    assert me.authentication_method == apb.AUTHENTICATION_METHOD_CLIENT_CERTIFICATE
    async with _channel(mutual, mutual.ca.issue("stranger", server=False)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await apb_grpc.AccessServiceStub(channel).WhoAmI(apb.WhoAmIRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED  # a good certificate of nobody


async def test_mutual_tls_refuses_a_foreign_or_missing_client_certificate(mutual: TlsServer) -> None:
    rogue = Authority("rogue CA").issue("sidecar-1", server=False)
    for client in (rogue, None):
        async with _channel(mutual, client, mutual.admin_token) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await apb_grpc.AccessServiceStub(channel).WhoAmI(apb.WhoAmIRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake failed


async def test_tls_without_client_certificates_takes_tokens_and_refuses_plaintext(tmp_path: Path) -> None:
    server = await _serve(tmp_path, mutual=False, ca=Authority("test CA"))
    try:
        async with _channel(server, None, server.admin_token) as channel:
            me = await apb_grpc.AccessServiceStub(channel).WhoAmI(apb.WhoAmIRequest())
        assert me.principal.name == "principals/admin"
        async with grpc.aio.insecure_channel(server.address) as plaintext:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await apb_grpc.AccessServiceStub(plaintext).WhoAmI(apb.WhoAmIRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.app.stop(grace=0)


async def test_a_call_past_its_deadline_stops_its_database_work(tmp_path: Path) -> None:
    """The write waits for a lock another process holds; its deadline passes; it never lands."""
    import sqlite3

    from dspy_registry.v1 import registry_pb2 as pb
    from tests.api.conftest import register_signature, start
    from tests.factories import dspy_state

    running = await start(f"sqlite:///{tmp_path / 'r.db'}")
    try:
        await register_signature(running.registry, name="sig")
        other = sqlite3.connect(tmp_path / "r.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # e.g. a backup tool holding the write lock
        request = pb.RegisterProgramRequest(
            spec=pb.ProgramVersionSpec(
                program="late", version="1.0.0", signature="signatures/sig/versions/1.0.0"
            ),
            artifact=dspy_state(),
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await running.registry.RegisterProgram(request, timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        other.execute("ROLLBACK")
        other.close()
        request.spec.program = "after"  # queued behind the late one: once it lands, so would have that
        await running.registry.RegisterProgram(request)
        listed = await running.registry.ListPrograms(pb.ListProgramsRequest())
        assert [p.name for p in listed.programs] == ["programs/after"]  # the late write was dropped
    finally:
        await running.channel.close(None)
        await running.app.stop(grace=0)

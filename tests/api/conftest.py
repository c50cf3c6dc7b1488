"""An in-process server on port 0, reached over a real channel."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from dspy_registry.client.auth import bearer_interceptors
from dspy_registry.server.app import App
from dspy_registry.server.config import Config
from dspy_registry.server.domain.clock import SYSTEM_CLOCK, Clock
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc
from tests.clock import FakeClock
from tests.factories import spec_proto


@dataclass
class Running:
    app: App
    channel: grpc.aio.Channel  # authenticated as the bootstrap admin
    registry: pb_grpc.RegistryServiceStub
    target: str
    admin_token: str

    @property
    def deployments(self) -> dpb_grpc.DeploymentServiceStub:
        """DeploymentService over the admin's channel."""
        return dpb_grpc.DeploymentServiceStub(self.channel)

    def channel_for(self, token: str | None) -> grpc.aio.Channel:
        """Another channel to this server, sending `token` (or nothing) with each call."""
        interceptors = bearer_interceptors(token) if token is not None else None
        return grpc.aio.insecure_channel(self.target, interceptors=interceptors, options=OPTIONS)


OPTIONS = [("grpc.max_receive_message_length", 8 << 20)]


async def start(
    database_url: str, admin_token: str = "", *, clock: Clock = SYSTEM_CLOCK, **config: object
) -> Running:
    """A server on port 0; `admin_token` for a store another server bootstrapped already; `clock`
    where it reads the time of day."""
    token_file = Path(tempfile.mkdtemp(prefix="dspy-registry-test-")) / "admin.token"
    config.setdefault("admin_token_file", str(token_file))
    app = App(Config(listen="127.0.0.1:0", database=database_url, **config), clock=clock)  # type: ignore[arg-type]
    port = await app.start()
    target = f"127.0.0.1:{port}"
    if app.config.auth and not admin_token:
        admin_token = Path(str(config["admin_token_file"])).read_text().strip()
    token = admin_token
    channel = grpc.aio.insecure_channel(target, interceptors=bearer_interceptors(token), options=OPTIONS)
    return Running(app, channel, pb_grpc.RegistryServiceStub(channel), target, token)


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[Running]:
    running = await start(database_url)
    yield running
    await running.channel.close(None)
    await running.app.stop(grace=0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def clocked_server(database_url: str, clock: FakeClock) -> AsyncIterator[Running]:
    """A server whose time of day moves only when the test moves `clock`: a pause passes at once."""
    running = await start(database_url, clock=clock)
    yield running
    await running.channel.close(None)
    await running.app.stop(grace=0)


@pytest.fixture
def registry(server: Running) -> pb_grpc.RegistryServiceStub:
    return server.registry


def details(err: grpc.aio.AioRpcError) -> dict[str, object]:
    """The rich error details of a failed call, unpacked by type name."""
    out: dict[str, object] = {}
    metadata: Any = err.trailing_metadata() or ()
    for key, value in metadata:
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for packed in status.details:
                for kind in (
                    error_details_pb2.BadRequest,
                    error_details_pb2.ErrorInfo,
                    error_details_pb2.PreconditionFailure,
                    error_details_pb2.ResourceInfo,
                    error_details_pb2.QuotaFailure,
                    error_details_pb2.RetryInfo,
                ):
                    if packed.Is(kind.DESCRIPTOR):
                        message = kind()
                        packed.Unpack(message)
                        out[kind.__name__] = message
    return out


def violations(err: grpc.aio.AioRpcError) -> set[str]:
    bad = details(err).get("BadRequest")
    assert isinstance(bad, error_details_pb2.BadRequest), f"no BadRequest in {err}"
    return {v.field for v in bad.field_violations}


async def register_signature(
    registry: pb_grpc.RegistryServiceStub, name: str = "text_classifier", version: str = "1.0.0", **kw: object
) -> pb.SignatureVersion:
    response = await registry.RegisterSignature(
        pb.RegisterSignatureRequest(signature=name, version=version, spec=spec_proto(**kw))  # type: ignore[arg-type]
    )
    signature_version: pb.SignatureVersion = response.signature_version
    return signature_version

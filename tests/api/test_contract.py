"""The contract itself: stubs match the protos, every RPC is served."""

from __future__ import annotations

import asyncio
import filecmp
import importlib.util
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from dspy_registry.server.api.access import AccessServicer
from dspy_registry.server.api.deployment import DeploymentServicer
from dspy_registry.server.api.registry import RegistryServicer
from dspy_registry.server.app import ACCESS_SERVICE, DEPLOYMENT_SERVICE, REGISTRY_SERVICE, SERVICES
from dspy_registry.v1 import registry_pb2_grpc
from tests.api.conftest import Running

ROOT = Path(__file__).resolve().parents[2]


def _load_generator() -> object:
    spec = importlib.util.spec_from_file_location("generate_protos", ROOT / "protos" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["generate_protos"] = module
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_are_what_the_protos_generate(tmp_path: Path) -> None:
    generator = _load_generator()
    written = generator.generate(tmp_path)  # type: ignore[attr-defined]
    assert written, "protoc generated nothing"
    committed = sorted(p.name for p in (ROOT / "client" / "v1").glob("*_pb2*.py*"))
    assert sorted(p.name for p in written) == committed
    stale = [p.name for p in written if not filecmp.cmp(p, ROOT / "client" / "v1" / p.name, shallow=False)]
    assert stale == [], f"run `make proto`: {stale} differ from the protos"


def test_every_rpc_has_an_implementation() -> None:
    """Nothing answers UNIMPLEMENTED any more: api/pending.py has no RPC left to refuse."""
    base = registry_pb2_grpc.RegistryServiceServicer
    missing = [
        m.name for m in REGISTRY_SERVICE.methods if getattr(RegistryServicer, m.name) is getattr(base, m.name)
    ]
    missing += [
        m.name for m in DEPLOYMENT_SERVICE.methods if not callable(getattr(DeploymentServicer, m.name, None))
    ]
    missing += [m.name for m in ACCESS_SERVICE.methods if not callable(getattr(AccessServicer, m.name, None))]
    assert missing == []


async def test_health_and_reflection_serve_the_whole_contract(server: Running) -> None:
    health = health_pb2_grpc.HealthStub(server.channel)
    for name in ["", *SERVICES]:
        response = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    # Health's stream too: health and reflection are served as generic handlers
    # (server/generic_handlers.py).
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()

    def list_services() -> set[str]:
        with grpc.insecure_channel(server.target) as channel:
            return set(ProtoReflectionDescriptorDatabase(channel).get_services())

    # The reflection client is synchronous: run it off the loop that serves.
    listed = await asyncio.to_thread(list_services)
    assert SERVICES.keys() <= listed
    assert "grpc.health.v1.Health" in listed

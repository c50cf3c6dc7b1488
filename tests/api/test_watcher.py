"""The client runtime against a real server: ProgramWatcher loads, hot-swaps, routes, ACKs and NACKs,
and serves from its disk cache when the server is gone; the routing split, measured."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import grpc
import pytest

from dspy_registry.client import Registry
from dspy_registry.client.routing import bucket, takes_candidate
from dspy_registry.client.watcher import Loaded, ProgramWatcher, load_json_or_bytes
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from tests.api.conftest import Running, register_signature
from tests.eventually import until
from tests.factories import dspy_state

PROGRAM = "sentiment"
SWAPS = 100


async def _register(server: Running, version: str) -> None:
    spec = pb.ProgramVersionSpec(program=PROGRAM, version=version, signature="signatures/sig/versions/1.0.0")
    artifact = dspy_state(f"version {version}")
    await server.registry.RegisterProgram(pb.RegisterProgramRequest(spec=spec, artifact=artifact))


@pytest.fixture
async def ready(server: Running) -> Running:
    """`sentiment` 1.0.0 registered, and so auto-deployed to development."""
    await register_signature(server.registry, name="sig")
    await _register(server, "1.0.0")
    return server


def _instructions(loaded: Loaded) -> str:
    return str(loaded.value["predict"]["signature"]["instructions"])


def _serves(version: str) -> Any:
    return lambda w: w.serving(PROGRAM).stable is not None and w.serving(PROGRAM).stable.version == version


async def _sidecars(server: Running, environment: str = "development") -> list[dpb.Sidecar]:
    status = await dpb_grpc.DeploymentServiceStub(server.channel).GetDeploymentStatus(
        dpb.GetDeploymentStatusRequest(program=PROGRAM, environment=environment)
    )
    return list(status.sidecars)


async def test_it_loads_hot_swaps_and_acks_each_version(ready: Running, tmp_path: Path) -> None:
    watcher = ProgramWatcher(
        ready.channel, [(PROGRAM, "development")], sidecar_id="pod-1", cache_dir=tmp_path, heartbeat=1
    )
    await watcher.start()
    try:
        await watcher.wait_for(_serves("1.0.0"))
        assert _instructions(watcher.get(PROGRAM)) == "version 1.0.0"

        seen: set[tuple[str, str]] = set()
        stop = asyncio.Event()

        async def caller() -> None:  # every answer is one whole version
            while not stop.is_set():
                loaded = watcher.get(PROGRAM, routing_key="user-1")
                seen.add((loaded.version, _instructions(loaded)))
                # A breath between calls, as serving has: spinning on sleep(0) here would starve the
                # in-process server's SQLite thread of the GIL (each handoff waits out the 5 ms
                # switch interval), which no real deployment has, the server being its own process.
                await asyncio.sleep(0.001)

        callers = [asyncio.create_task(caller()) for _ in range(8)]
        for minor in range(1, SWAPS + 1):
            await _register(ready, f"1.{minor}.0")  # auto-deploys to development
            await watcher.wait_for(_serves(f"1.{minor}.0"))
        stop.set()
        await asyncio.gather(*callers)  # none raised: zero failed calls
        assert seen <= {(f"1.{m}.0", f"version 1.{m}.0") for m in range(SWAPS + 1)}
        assert len(seen) > SWAPS // 2  # the callers ran throughout, across the swaps

        async def acked() -> bool:
            found = await _sidecars(ready)
            return [(s.sidecar_id, [(t.version, t.result) for t in s.targets]) for s in found] == [
                ("pod-1", [(f"1.{SWAPS}.0", dpb.APPLY_RESULT_ACK)])
            ]

        for _ in range(100):
            if await acked():
                break
            await asyncio.sleep(0.05)
        assert await acked()
    finally:
        await watcher.stop()
    assert await _sidecars(ready) == []  # stop() says it is leaving


async def test_a_version_that_fails_to_load_is_nacked_and_the_old_one_kept(ready: Running) -> None:
    def picky(program: str, data: bytes, media_type: str) -> Any:
        value = load_json_or_bytes(program, data, media_type)
        if "1.1.0" in value["predict"]["signature"]["instructions"]:
            raise ValueError("this build cannot load 1.1.0")
        return value

    watcher = ProgramWatcher(ready.channel, [(PROGRAM, "development")], sidecar_id="pod-picky", loader=picky)
    await watcher.start()
    try:
        await watcher.wait_for(_serves("1.0.0"))
        await _register(ready, "1.1.0")
        for _ in range(200):
            found = await _sidecars(ready)
            if found and any(t.result == dpb.APPLY_RESULT_NACK for t in found[0].targets):
                break
            await asyncio.sleep(0.05)
        [sidecar] = found
        nack = [t for t in sidecar.targets if t.version == "1.1.0"]
        assert [(t.result, t.error_detail.code) for t in nack] == [
            (dpb.APPLY_RESULT_NACK, grpc.StatusCode.INVALID_ARGUMENT.value[0])
        ]
        assert "cannot load 1.1.0" in nack[0].error_detail.message
        assert watcher.get(PROGRAM).version == "1.0.0"  # still serving the last good version

        # Once the target moves past 1.1.0, its NACK is no longer reported.
        await _register(ready, "1.2.0")
        await watcher.wait_for(_serves("1.2.0"))
        for _ in range(200):
            found = await _sidecars(ready)
            if [[(t.version, t.result) for t in s.targets] for s in found] == [
                [("1.2.0", dpb.APPLY_RESULT_ACK)]
            ]:
                break
            await asyncio.sleep(0.05)
        assert [[(t.version, t.result) for t in s.targets] for s in found] == [
            [("1.2.0", dpb.APPLY_RESULT_ACK)]
        ]
    finally:
        await watcher.stop()


async def test_it_serves_from_its_disk_cache_with_the_server_gone(ready: Running, tmp_path: Path) -> None:
    first = ProgramWatcher(ready.channel, [(PROGRAM, "development")], sidecar_id="pod-2", cache_dir=tmp_path)
    await first.start()
    await first.wait_for(_serves("1.0.0"))
    await first.stop()

    nowhere = grpc.aio.insecure_channel("127.0.0.1:9")  # nothing listens: the control plane is down
    second = ProgramWatcher(
        nowhere, [(PROGRAM, "development")], sidecar_id="pod-2", cache_dir=tmp_path, backoff=(0.01, 0.05)
    )
    try:
        await second.start()  # serves before it has connected
        assert _instructions(second.get(PROGRAM)) == "version 1.0.0"
        await asyncio.sleep(0.3)  # retrying all along, and still serving
        assert not second.connected.is_set()
        assert second.get(PROGRAM).version == "1.0.0"
    finally:
        await second.stop()
        await nowhere.close(None)


async def test_a_canary_routes_by_key_and_keys_only_move_forward(ready: Running) -> None:
    await _register(ready, "1.1.0")
    deploy = dpb_grpc.DeploymentServiceStub(ready.channel)
    await deploy.CreateDeployment(
        dpb.CreateDeploymentRequest(
            program=PROGRAM,
            version="1.0.0",
            environment="staging",
            strategy=dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE),
        )
    )
    canary = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_CANARY)
    canary.canary.steps.add(weight_percent=10).pause.FromSeconds(600)
    await deploy.CreateDeployment(
        dpb.CreateDeploymentRequest(program=PROGRAM, version="1.1.0", environment="staging", strategy=canary)
    )
    watcher = ProgramWatcher(ready.channel, [(PROGRAM, "staging")], sidecar_id="pod-3")
    await watcher.start()
    try:
        await watcher.wait_for(lambda w: w.serving(PROGRAM).candidate is not None)
        assert watcher.serving(PROGRAM).weight_percent == 10
        keys = [f"user-{i}" for i in range(10_000)]
        versions = {k: watcher.get(PROGRAM, routing_key=k).version for k in keys}
        share = sum(v == "1.1.0" for v in versions.values()) / len(keys)
        assert 0.08 < share < 0.12
        # The same key gets the same version on every call (and every pod: it is a hash).
        assert all(watcher.get(PROGRAM, routing_key=k).version == versions[k] for k in keys[:500])
    finally:
        await watcher.stop()


def test_the_split_is_within_half_a_point_and_raising_the_weight_moves_keys_one_way() -> None:
    keys = [f"key-{i}" for i in range(100_000)]
    at_10 = {k for k in keys if takes_candidate(PROGRAM, 10, k)}
    at_25 = {k for k in keys if takes_candidate(PROGRAM, 25, k)}
    assert abs(len(at_10) / len(keys) - 0.10) <= 0.005
    assert abs(len(at_25) / len(keys) - 0.25) <= 0.005
    assert at_10 <= at_25  # no key went back from candidate to stable
    assert all(0 <= bucket(PROGRAM, k) < 10_000 for k in keys[:1000])
    rng = random.Random(7)
    unkeyed = sum(takes_candidate(PROGRAM, 10, None, rng) for _ in range(100_000))
    assert abs(unkeyed / 100_000 - 0.10) <= 0.005
    assert not takes_candidate(PROGRAM, 0, "k") and takes_candidate(PROGRAM, 100, "k")


async def test_watch_targets_resumes_after_a_revision_and_connect_watches_through_a_registry(
    ready: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSPY_REGISTRY_CONFIG", str(tmp_path / "absent.toml"))
    async with Registry.connect(ready.target, token=ready.admin_token) as registry:
        stream = registry.watch_targets(PROGRAM, "development")
        first = await anext(stream)
        await stream.aclose()
        assert first.WhichOneof("kind") == "snapshot"
        await _register(ready, "1.1.0")
        # From the snapshot's revision: no snapshot again, the change after it first.
        stream = registry.watch_targets(PROGRAM, "development", start_revision=first.revision)
        resumed = await anext(stream)
        await stream.aclose()
        assert resumed.WhichOneof("kind") == "changes" and resumed.revision > first.revision
        assert [t.stable.version for t in resumed.changes.targets] == ["1.1.0"]

    # Settings as Registry.connect resolves them: here the target and token from the environment.
    monkeypatch.setenv("DSPY_REGISTRY_TARGET", ready.target)
    monkeypatch.setenv("DSPY_REGISTRY_TOKEN", ready.admin_token)
    async with ProgramWatcher.connect([(PROGRAM, "development")], sidecar_id="pod-connect") as watcher:
        await watcher.wait_for(_serves("1.1.0"))
        assert isinstance(watcher.registry, Registry)
        await until(lambda: _acked(ready, "pod-connect"), "pod-connect's ACK")
    assert watcher.registry.channel.get_state() == grpc.ChannelConnectivity.SHUTDOWN  # closed on leaving
    assert await _sidecars(ready) == []  # it said it was leaving


async def _acked(server: Running, sidecar_id: str) -> bool:
    return [s.sidecar_id for s in await _sidecars(server)] == [sidecar_id]

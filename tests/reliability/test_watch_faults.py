"""WatchTargets through SIGKILLs: twenty watchers see exactly the event log while server processes die.

The property of tests/api/test_watch_property.py (each watcher's changes are
the log's target changes it selects, nothing missed or repeated, in revision
order, one message per revision, and its view at the end a fresh snapshot's),
now driven by faults. SQLite: the one server process is SIGKILLed and started
again. PostgreSQL: three replica processes share the database, the watchers
start spread over them, and a random replica is SIGKILLed and started again
while the others serve; a watcher whose replica died resumes from the last
revision it saw on any replica that is up. Deployments and rollbacks go on
meanwhile, each asked again with its request_id when a kill ate the answer.

The second test resumes watchers on a replica that hears of commits late (a
proxy holds back its LISTEN connection), as one does right after a kill.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from dspy_registry.client.auth import bearer_interceptors
from dspy_registry.server.store.backends import open_store
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc
from tests.api.test_watch_property import ENVIRONMENTS, PROGRAMS, REPLACE, VERSIONS, Watcher, check_watchers
from tests.conftest import SKIP_POSTGRES, PostgresDatabases
from tests.factories import dspy_state, spec_proto
from tests.reliability.conftest import Tally, budget, soaking
from tests.reliability.crash_workers import new_request_id
from tests.reliability.pg_proxy import LaggingListenProxy
from tests.reliability.servers import RETRYABLE, Restartable, current_revision

SECONDS = budget(6, 0.05)  # per backend
KILLS = 20 if soaking() else 3  # at least, per backend
WATCHERS = 20
RESUMES = 10  # watches opened right after a write, on the replica that hears of it late


class Fleet:
    """The replicas, and an authenticated channel to each one's current process."""

    def __init__(self, replicas: list[Restartable]) -> None:
        self.replicas = replicas
        self.token = replicas[0].admin_token()
        self._channels: dict[tuple[int, int], grpc.aio.Channel] = {}
        self.codes: Counter[str] = Counter()

    def live(self) -> list[int]:
        return [i for i, r in enumerate(self.replicas) if r.alive]

    def channel(self, index: int) -> grpc.aio.Channel:
        replica = self.replicas[index]
        key = (index, replica.generation)
        if key not in self._channels:
            self._channels[key] = grpc.aio.insecure_channel(
                replica.address, interceptors=bearer_interceptors(self.token)
            )
        return self._channels[key]

    async def call(self, rng: random.Random, method: str, request: Any) -> Any:
        """The answer from any live replica, or the status code of a refusal; the same request again,
        to another replica if need be, while answers are lost to kills."""
        while True:
            live = self.live()
            if live:
                stub = dpb_grpc.DeploymentServiceStub(self.channel(rng.choice(live)))
                try:
                    response = await getattr(stub, method)(request, timeout=10)
                except grpc.aio.AioRpcError as err:
                    self.codes[err.code().name] += 1
                    if err.code() not in RETRYABLE:
                        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
                        return err.code()
                else:
                    self.codes["OK"] += 1
                    return response
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)


@dataclass
class FaultWatcher(Watcher):
    replica: int = 0  # where its stream is now

    async def follow_fleet(self, fleet: Fleet, until: list[int], rng: random.Random) -> None:
        """Hold a stream to a live replica, resuming from the last revision after each kill, until `until[0]`."""
        interval = duration_pb2.Duration()
        interval.FromMilliseconds(100)
        while not until or self.last < until[0]:
            live = fleet.live()
            if not live:
                await asyncio.sleep(0.05)
                continue
            if self.replica not in live:
                self.replica = rng.choice(live)
            request = dpb.WatchTargetsRequest(start_revision=self.last, progress_interval=interval)
            if self.program or self.environment:
                request.selectors.add(program=self.program, environment=self.environment)
            stream: Any = dpb_grpc.DeploymentServiceStub(fleet.channel(self.replica)).WatchTargets(request)
            self.streams += 1
            try:
                async for message in stream:
                    self._take(message)
                    if until and self.last >= until[0]:
                        stream.cancel()
                        return
            except grpc.aio.AioRpcError as err:
                # A killed server's stream ends UNAVAILABLE; nothing else is a status a client can act on.
                assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), err
            await asyncio.sleep(0.02)


async def _operate(fleet: Fleet, rng: random.Random, done: asyncio.Event) -> int:
    """Deployments and rollbacks to random targets until `done`; how many were answered."""
    answered = 0
    while not done.is_set():
        program, environment = rng.choice(PROGRAMS), rng.choice(ENVIRONMENTS)
        if rng.random() < 0.2:
            listed = await fleet.call(
                rng,
                "ListDeployments",
                dpb.ListDeploymentsRequest(program=program, environment=environment, page_size=1),
            )
            if listed.deployments:
                request: Any = dpb.RollbackDeploymentRequest(
                    name=listed.deployments[0].name, reason="watch faults", request_id=new_request_id()
                )
                await fleet.call(rng, "RollbackDeployment", request)
                answered += 1
        else:
            request = dpb.CreateDeploymentRequest(
                program=program,
                version=rng.choice(VERSIONS),
                environment=environment,
                strategy=REPLACE,
                supersede=True,
                request_id=new_request_id(),
            )
            await fleet.call(rng, "CreateDeployment", request)
            answered += 1
        await asyncio.sleep(rng.uniform(0, 0.02))
    return answered


async def _kill(fleet: Fleet, rng: random.Random) -> int:
    """SIGKILL a random replica at random moments and start it again, for SECONDS and KILLS at least."""
    loop = asyncio.get_running_loop()
    began, kills = loop.time(), 0
    while loop.time() - began < SECONDS or kills < KILLS:
        await asyncio.sleep(rng.uniform(0.3, 1.5))
        replica = rng.choice(fleet.replicas)
        await asyncio.to_thread(replica.kill)
        kills += 1
        await asyncio.to_thread(replica.start)
    return kills


def _register(replica: Restartable) -> int:
    """Both programs' versions (each auto-deploys to development); the revision after them."""
    with replica.channel() as channel:
        registry = pb_grpc.RegistryServiceStub(channel)
        registry.RegisterSignature(
            pb.RegisterSignatureRequest(signature="sig", version="1.0.0", spec=spec_proto())
        )
        for program in PROGRAMS:
            for version in VERSIONS:
                spec = pb.ProgramVersionSpec(
                    program=program, version=version, signature="signatures/sig/versions/1.0.0"
                )
                artifact = dspy_state(f"{program} {version}")
                registry.RegisterProgram(pb.RegisterProgramRequest(spec=spec, artifact=artifact))
        return current_revision(channel)


@pytest.mark.timeout(int(SECONDS * 4 + 150))
async def test_twenty_watchers_see_exactly_the_log_through_sigkilled_servers(
    database_url: str, tmp_path: Path, tally: Tally
) -> None:
    seed = int(os.environ.get("WATCH_SEED") or random.randrange(1 << 32))  # replay with WATCH_SEED=<seed>
    rng = random.Random(seed)
    count = 1 if database_url.startswith("sqlite") else 3
    replicas = [Restartable(database_url, tmp_path, f"replica{i}") for i in range(count)]
    try:
        for replica in replicas:  # one after the other: the first bootstraps the store
            await asyncio.to_thread(replica.start)
        fleet = Fleet(replicas)
        first = await asyncio.to_thread(_register, replicas[0])
        watchers = []
        for i in range(WATCHERS):
            begin = rng.choice((0, rng.randint(1, first)))
            watcher = FaultWatcher(rng.choice(("", *PROGRAMS)), rng.choice(("", *ENVIRONMENTS)), begin, begin)
            watcher.replica = i % count
            watchers.append(watcher)
        until: list[int] = []
        tasks = [
            asyncio.create_task(w.follow_fleet(fleet, until, random.Random(rng.random()))) for w in watchers
        ]
        done = asyncio.Event()
        operations = asyncio.create_task(_operate(fleet, random.Random(rng.random()), done))
        try:
            kills = await _kill(fleet, rng)
            done.set()
            answered = await operations
            until.append(await asyncio.to_thread(_revision, replicas[0]))
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
            stub = dpb_grpc.DeploymentServiceStub(fleet.channel(0))
            snapshot = await stub.WatchTargets(dpb.WatchTargetsRequest()).read()
        finally:
            for task in [*tasks, operations]:
                task.cancel()
            await fleet.close()
        for replica in replicas:
            assert await asyncio.to_thread(replica.stop) == 0, replica.log()
    finally:
        for replica in replicas:
            replica.ensure_dead()
    store = open_store(database_url)
    await store.open()
    try:
        async with store.read() as tx:
            log = await tx.events_after(0, limit=1_000_000)
    finally:
        await store.close()

    tally.kills += kills
    tally.operations += answered
    tally.watch_events_checked += sum(len(w.changes) for w in watchers)
    tally.codes.update(fleet.codes)
    check_watchers(watchers, log, snapshot, seed)
    if count == 1:
        # Every watcher was cut and resumed. Not one stream per kill: a kill that comes before a
        # watcher, slowed by a busy machine, has opened its next stream cuts nothing of it.
        assert all(w.streams > 1 for w in watchers), [w.streams for w in watchers]
    else:
        assert sum(w.streams for w in watchers) > WATCHERS, "no watcher resumed"
    assert sum(len(w.changes) for w in watchers) > 100, seed


def _revision(replica: Restartable) -> int:
    with replica.channel() as channel:
        return current_revision(channel)


@pytest.mark.postgres
async def test_a_watcher_resuming_on_a_replica_that_hears_late_gets_changes_not_a_reset(
    pg_databases: PostgresDatabases, tmp_path: Path, tally: Tally
) -> None:
    """What a watcher does when its replica dies: resume, on another replica, from the last revision it
    saw. That replica hears of the revision through NOTIFY a moment later (here 0.3 s, through a proxy
    that holds back its LISTEN connection); until then the revision is ahead of its hub but not of the
    store, so the contract's answer is the changes after it, never a snapshot flagged `reset` (kept for
    a revision compacted away, or one the store never had)."""
    if SKIP_POSTGRES:
        pytest.skip("DSPY_REGISTRY_SKIP_POSTGRES=1")
    url = await pg_databases.create()
    proxy = LaggingListenProxy(delay=0.3).start()
    a = Restartable(url, tmp_path, "a")
    b = Restartable(proxy.url(url), tmp_path, "b")
    try:
        await asyncio.to_thread(a.start)
        await asyncio.to_thread(b.start)
        resets = await asyncio.to_thread(_resume_after_writes, a, b, RESUMES)
        tally.watch_events_checked += RESUMES
    finally:
        for replica in (a, b):
            replica.ensure_dead()
        proxy.stop()
    assert not resets, f"{len(resets)} of {RESUMES} resumes right after a write were reset: {resets}"


def _resume_after_writes(a: Restartable, b: Restartable, count: int) -> list[int]:
    """Write on `a`, then at once watch on `b` from the revision written: the revisions answered with a
    reset snapshot."""
    assert a.current is not None
    a.current.register("p", ["1.0.0", "1.1.0"])
    resets = []
    with a.channel() as on_a, b.channel() as on_b:
        writes, watches = dpb_grpc.DeploymentServiceStub(on_a), dpb_grpc.DeploymentServiceStub(on_b)
        for i in range(count):
            written = writes.CreateDeployment(
                dpb.CreateDeploymentRequest(
                    program="p",
                    version=VERSIONS[i % 2],
                    environment="staging",
                    strategy=REPLACE,
                    supersede=True,
                )
            )
            request = dpb.WatchTargetsRequest(start_revision=written.deployment.revision)
            request.progress_interval.FromMilliseconds(50)  # the first message: progress, or the reset
            stream = watches.WatchTargets(request, timeout=10)
            first = next(stream)
            stream.cancel()
            if first.WhichOneof("kind") == "snapshot":
                resets.append(written.deployment.revision)
    return resets

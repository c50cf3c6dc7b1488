"""WatchTargets' guarantees as a property, on SQLite and Postgres: a generated run of deployments,
rollbacks and server restarts while 20 watchers (random selectors, random start revisions) hold
streams and resume from the last revision they saw. Each watcher's changes must equal the event
log filtered by its selectors — nothing missed, nothing repeated, in revision order, one message
per revision — and its view at the end must equal a fresh snapshot."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import duration_pb2

from dspy_registry.server.domain.model import Event
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from tests.api.conftest import Running, register_signature, start
from tests.factories import dspy_state

PROGRAMS = ("alpha", "beta")
ENVIRONMENTS = ("development", "staging")
VERSIONS = ("1.0.0", "1.1.0", "1.2.0")
REPLACE = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE)
Key = tuple[str, str]
State = tuple[str, str, int]  # stable, candidate, weight


def _state(t: dpb.Target) -> State:
    return (t.stable.version, t.candidate.version, t.candidate.weight_percent)


@dataclass
class Watcher:
    program: str  # "" for every program
    environment: str  # "" for every environment
    start: int  # the revision it first asked to start from (0: a snapshot first)
    last: int = 0  # the last revision seen; where a resumed stream starts
    base: int = -1  # the revision of the snapshot this watcher's view starts from
    view: dict[Key, State] = field(default_factory=dict)
    changes: list[tuple[int, str, str]] = field(default_factory=list)
    messages: list[int] = field(default_factory=list)  # each change message's revision
    streams: int = 0  # how many streams it opened: 1 + its resumes

    def selects(self, program: str, environment: str) -> bool:
        return self.program in ("", program) and self.environment in ("", environment)

    async def follow(self, server: list[Running], until: list[int]) -> None:
        """Hold a stream to whichever server runs now, resuming after each restart, until `until[0]`."""
        interval = duration_pb2.Duration()
        interval.FromMilliseconds(100)
        while not until or self.last < until[0]:
            request = dpb.WatchTargetsRequest(start_revision=self.last, progress_interval=interval)
            if self.program or self.environment:
                request.selectors.add(program=self.program, environment=self.environment)
            stream: Any = dpb_grpc.DeploymentServiceStub(server[0].channel).WatchTargets(request)
            self.streams += 1
            try:
                async for message in stream:
                    self._take(message)
                    if until and self.last >= until[0]:
                        stream.cancel()
                        return
            except grpc.aio.AioRpcError as err:
                assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), err
            await asyncio.sleep(0.02)

    def _take(self, m: dpb.WatchTargetsResponse) -> None:
        kind = m.WhichOneof("kind")
        assert m.revision >= self.last, "revisions never go back"
        if kind == "snapshot":
            assert self.base == -1 and not m.snapshot.reset, "one snapshot, only when starting from 0"
            self.base = m.revision
            self.view = {(t.program, t.environment): _state(t) for t in m.snapshot.targets}
        elif kind == "changes":
            assert m.revision > self.last, "each revision once"
            self.messages.append(m.revision)
            for t in m.changes.targets:
                assert t.revision == m.revision, "atomic: a message holds one revision"
                assert self.selects(t.program, t.environment)
                self.changes.append((m.revision, t.program, t.environment))
                self.view[(t.program, t.environment)] = _state(t)
        self.last = m.revision


def check_watchers(
    watchers: Sequence[Watcher], log: Sequence[Event], snapshot: dpb.WatchTargetsResponse, seed: int
) -> None:
    """What each watcher saw is exactly the log's target changes it selects (nothing missed or repeated,
    in order, a message per revision), and its view at the end is `snapshot`'s, a fresh one."""
    updates = [
        (e.revision, e.data["program"], e.data["environment"]) for e in log if e.kind == "target.updated"
    ]
    current = {(t.program, t.environment): _state(t) for t in snapshot.snapshot.targets}
    for w in watchers:
        after = w.base if w.base >= 0 else w.start
        expected = [u for u in updates if u[0] > after and w.selects(u[1], u[2])]
        assert w.changes == expected, (seed, w.program, w.environment, w.start)  # nothing missed or repeated
        assert w.messages == sorted(set(w.messages))  # ordered, unique
        selected = {k: v for k, v in current.items() if w.selects(*k)}
        if w.base >= 0:  # from a snapshot: the whole selection
            assert w.view == selected
        else:  # from a revision: what changed since, as it is now
            assert w.view == {k: selected[k] for k in w.view}


async def _operate(server: list[Running], rng: random.Random, url: str, steps: int) -> None:
    """Deployments and rollbacks to random targets, and a server restart every so often."""
    for step in range(steps):
        running = server[0]
        deploy = dpb_grpc.DeploymentServiceStub(running.channel)
        program, environment = rng.choice(PROGRAMS), rng.choice(ENVIRONMENTS)
        try:
            if rng.random() < 0.2:
                listed = await deploy.ListDeployments(
                    dpb.ListDeploymentsRequest(program=program, environment=environment, page_size=1)
                )
                if listed.deployments:
                    await deploy.RollbackDeployment(
                        dpb.RollbackDeploymentRequest(name=listed.deployments[0].name, reason="property")
                    )
            else:
                await deploy.CreateDeployment(
                    dpb.CreateDeploymentRequest(
                        program=program,
                        version=rng.choice(VERSIONS),
                        environment=environment,
                        strategy=REPLACE,
                        supersede=True,
                    )
                )
        except grpc.aio.AioRpcError as err:  # a rollback with nothing to roll back to, say
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
        if step % 10 == 9:
            await running.app.stop(grace=0)  # its streams end UNAVAILABLE; the watchers resume
            server[0] = await start(url, admin_token=running.admin_token)
            server.append(running)  # its channel is closed at the end: closing it now would cancel
        await asyncio.sleep(rng.uniform(0, 0.02))


async def test_twenty_watchers_see_exactly_the_log_across_restarts(database_url: str) -> None:
    # A new run each time; a failure names its seed, and PROPERTY_SEED=<seed> replays the operations.
    seed = int(os.environ.get("PROPERTY_SEED") or random.randrange(1 << 32))
    rng = random.Random(seed)
    server = [await start(database_url)]
    await register_signature(server[0].registry, name="sig")
    for program in PROGRAMS:
        for version in VERSIONS:
            spec = pb.ProgramVersionSpec(
                program=program, version=version, signature="signatures/sig/versions/1.0.0"
            )
            artifact = dspy_state(f"{program} {version}")
            await server[0].registry.RegisterProgram(pb.RegisterProgramRequest(spec=spec, artifact=artifact))
    async with server[0].app.store.read() as tx:
        first = await tx.current_revision()
    watchers = []
    for _ in range(20):
        begin = rng.choice((0, rng.randint(1, first)))
        watchers.append(Watcher(rng.choice(("", *PROGRAMS)), rng.choice(("", *ENVIRONMENTS)), begin, begin))
    until: list[int] = []
    tasks = [asyncio.create_task(w.follow(server, until)) for w in watchers]
    try:
        await _operate(server, rng, database_url, steps=40)
        async with server[0].app.store.read() as tx:
            until.append(await tx.current_revision())
            log = await tx.events_after(0, limit=100_000)
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        snapshot = (
            await dpb_grpc.DeploymentServiceStub(server[0].channel)
            .WatchTargets(dpb.WatchTargetsRequest())
            .read()
        )
    finally:
        for task in tasks:
            task.cancel()
        await server[0].app.stop(grace=0)
        for running in server:
            await running.channel.close(None)

    check_watchers(watchers, log, snapshot, seed)
    assert any(w.base >= 0 for w in watchers) and any(w.base == -1 for w in watchers)
    assert all(w.streams >= 4 for w in watchers)  # each resumed across the four restarts
    assert sum(len(w.changes) for w in watchers) > 100

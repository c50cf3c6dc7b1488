"""One leader for the background work among replicas on one PostgreSQL (server/leader.py): exactly one
leads; when it stops, or its lock connection is terminated, another leads within 5 s; canary steps are
taken once and webhooks recorded once across the change. A lone SQLite server always leads."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import grpc
import pytest

from dspy_registry.client.auth import bearer_interceptors
from dspy_registry.server.app import App
from dspy_registry.server.config import Config
from dspy_registry.server.store.postgres_leader import LEADER_LOCK
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc
from tests.api.conftest import OPTIONS, Running, start
from tests.api.test_telemetry import Observed
from tests.api.test_webhooks import LOOPBACK, SECRET, _create, _deliveries, _program, _webhook
from tests.calls import canary_strategy
from tests.conftest import SKIP_POSTGRES, PostgresDatabases
from tests.eventually import until
from tests.webhook_receiver import Receiver

TAKEOVER_SECONDS = 5.0
S = dpb.DeploymentState
K = dpb.DeploymentEventKind


class Fleet:
    """Replicas on one PostgreSQL database, each with in-memory telemetry."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.replicas: list[Running] = []
        self.observed: list[Observed] = []
        self.stopped: set[int] = set()

    async def add(self, name: str) -> Running:
        token_file = Path(tempfile.mkdtemp(prefix="dspy-registry-test-")) / "admin.token"
        observed = Observed()
        config = Config(
            listen="127.0.0.1:0",
            database=self.url,
            admin_token_file=str(token_file),
            webhook_allow=LOOPBACK,
            replica_name=name,
        )
        app = App(config, telemetry=observed.telemetry)
        port = await app.start()
        token = self.replicas[0].admin_token if self.replicas else token_file.read_text().strip()
        target = f"127.0.0.1:{port}"
        channel = grpc.aio.insecure_channel(target, interceptors=bearer_interceptors(token), options=OPTIONS)
        running = Running(app, channel, pb_grpc.RegistryServiceStub(channel), target, token)
        self.replicas.append(running)
        self.observed.append(observed)
        return running

    @property
    def live(self) -> list[Running]:
        return [r for i, r in enumerate(self.replicas) if i not in self.stopped]

    def leaders(self) -> list[Running]:
        return [r for r in self.live if r.app.leadership.leading]

    def one_leads(self) -> bool:
        return len(self.leaders()) == 1

    async def stop(self, replica: Running) -> None:
        self.stopped.add(self.replicas.index(replica))
        await replica.channel.close(None)
        await replica.app.stop(grace=0)

    async def close(self) -> None:
        for replica in self.live:
            await self.stop(replica)
        for observed in self.observed:
            observed.shutdown()


@pytest.fixture
async def fleet(pg_databases: PostgresDatabases) -> AsyncIterator[Fleet]:
    if SKIP_POSTGRES:
        pytest.skip("DSPY_REGISTRY_SKIP_POSTGRES=1")
    f = Fleet(await pg_databases.create())
    yield f
    await f.close()


async def _leader_seen_by(replica: Running) -> str:
    response = await replica.deployments.GetDeploymentStatus(
        dpb.GetDeploymentStatusRequest(program="sentiment", environment="development")
    )
    return str(response.leader)


async def _agreed(fleet: Fleet, name: str) -> bool:
    return all([await _leader_seen_by(r) == name for r in fleet.live])


def _gauges(fleet: Fleet) -> list[float | None]:
    return [o.value("dspy_registry.leader") for o in fleet.observed]


@pytest.mark.postgres
@pytest.mark.parametrize("replicas", [2, 3])
async def test_exactly_one_replica_leads_and_every_replica_names_it(fleet: Fleet, replicas: int) -> None:
    for i in range(replicas):
        await fleet.add(f"replica-{i}")
    await _program(fleet.replicas[0])
    await until(fleet.one_leads, "one replica leads")
    leader = fleet.leaders()[0]
    name = leader.app.leadership.replica
    await until(lambda: _agreed(fleet, name), f"every replica names {name} the leader")
    gauges = _gauges(fleet)
    assert gauges.count(1.0) == 1 and gauges.count(0.0) == replicas - 1, gauges
    assert fleet.observed[fleet.replicas.index(leader)].value("dspy_registry.leader") == 1.0
    # Store-wide numbers come from the leader alone: a sum over the replicas counts each deployment once.
    counted = [o.points("dspy_registry.deployments") for o in fleet.observed]
    assert [bool(points) for points in counted] == [r is leader for r in fleet.replicas]
    assert fleet.one_leads()


@pytest.mark.postgres
async def test_each_poll_of_the_leader_lock_is_one_statement(fleet: Fleet) -> None:
    # Held: `SELECT 1` alone (the session answering is the lock); it used to ask pg_locks who held the
    # lock after it as well, every second on every replica. Not held: the attempt and the holder,
    # in one statement.
    for i in range(2):
        await fleet.add(f"replica-{i}")
    await until(fleet.one_leads, "one replica leads")
    conn = await asyncpg.connect(fleet.url)
    try:

        async def last_statements() -> dict[str, str]:
            rows = await conn.fetch(
                "SELECT application_name, query FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name LIKE 'dspy-registry leader %'"
            )
            return {
                str(r["application_name"]).rsplit(" ", 1)[1]: " ".join(str(r["query"]).split()) for r in rows
            }

        leader = fleet.leaders()[0].app.leadership.replica
        follower = next(
            r.app.leadership.replica for r in fleet.replicas if r.app.leadership.replica != leader
        )

        async def polled_once_more() -> bool:
            last = await last_statements()
            return last.get(leader) == "SELECT 1" and last.get(follower, "").startswith(
                "SELECT pg_try_advisory_lock($1) AS took, (SELECT a.application_name"
            )

        await until(polled_once_more, "each replica's last poll is its one statement", seconds=10)
    finally:
        await conn.close()


@pytest.mark.postgres
async def test_a_stopped_leader_is_followed_by_another_within_5_seconds(fleet: Fleet) -> None:
    for i in range(3):
        await fleet.add(f"replica-{i}")
    await until(fleet.one_leads, "one replica leads")
    for _ in range(2):
        old = fleet.leaders()[0]
        await fleet.stop(old)
        await until(fleet.one_leads, "another replica leads", seconds=TAKEOVER_SECONDS)
        assert fleet.leaders()[0] is not old


@pytest.mark.postgres
async def test_a_leader_whose_lock_connection_is_terminated_stops_leading_at_once(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dspy_registry.leader")
    for i in range(2):
        await fleet.add(f"replica-{i}")
    await until(fleet.one_leads, "one replica leads")
    old = fleet.leaders()[0]
    admin = await asyncpg.connect(fleet.url)
    try:
        holder = await admin.fetchval(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid::bigint = $1 AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            LEADER_LOCK,
        )
        assert holder is not None
        await admin.execute("SELECT pg_terminate_backend($1)", holder)
    finally:
        await admin.close()

    # Not at its next poll: asyncpg tells of the terminated session, and it stops leading on that.
    def stopped_on_the_loss() -> bool:
        said = f"{old.app.leadership.replica} no longer leads: the leader lock's connection dropped"
        return any(said in r.getMessage() for r in caplog.records)

    await until(stopped_on_the_loss, "the old leader stops leading when its lock's connection drops")
    # Either replica may win the lock next; exactly one does, and the lock is held by it alone.
    await until(fleet.one_leads, "a replica leads again", seconds=TAKEOVER_SECONDS)


async def _step_through(
    fleet: Fleet, receiver: Receiver, change: Callable[[Running], Awaitable[None]]
) -> dpb.Deployment:
    """A canary on the fleet with a webhook for every event; `change` applied to the leader once the
    first step is taken; the deployment once it ends."""
    await _create(fleet.replicas[0], "all", _webhook(receiver.url))
    await _program(fleet.replicas[0], versions=("1.0.0", "1.1.0"))
    follower = next(r for r in fleet.live if not r.app.leadership.leading)
    created = await follower.deployments.CreateDeployment(
        dpb.CreateDeploymentRequest(
            program="sentiment",
            version="1.1.0",
            environment="staging",
            strategy=canary_strategy((10, 0.3), (30, 0.3), (60, 0.3), (90, 0.3)),
        )
    )
    name = created.deployment.name

    async def get() -> dpb.Deployment:
        response = await follower.deployments.GetDeployment(dpb.GetDeploymentRequest(name=name))
        found: dpb.Deployment = response.deployment
        return found

    async def stepped() -> bool:
        return any(e.kind == K.DEPLOYMENT_EVENT_KIND_STEP_ADVANCED for e in (await get()).timeline)

    await until(stepped, "the first canary step")
    await until(fleet.one_leads, "one replica leads")
    await change(fleet.leaders()[0])

    async def ended() -> bool:
        return (await get()).state == S.DEPLOYMENT_STATE_SUCCEEDED

    await until(ended, "the canary succeeds")
    return await get()


def _steps_once(deployment: dpb.Deployment) -> None:
    steps = [e.step for e in deployment.timeline if e.kind == K.DEPLOYMENT_EVENT_KIND_STEP_ADVANCED]
    assert steps == [2, 3, 4], steps


async def _recorded_once(fleet: Fleet, receiver: Receiver) -> None:
    replica = fleet.live[0]

    async def settled() -> bool:
        return not await _deliveries(replica, "webhooks/all", dpb.DELIVERY_STATE_PENDING)

    await until(settled, "every delivery settles")
    deliveries = await _deliveries(replica, "webhooks/all")
    events = [d.event_id for d in deliveries]
    assert len(events) == len(set(events))  # one delivery recorded per event
    assert all(d.state == dpb.DELIVERY_STATE_SUCCEEDED for d in deliveries), deliveries
    assert set(receiver.delivered()) == {d.name.rsplit("/", 1)[1] for d in deliveries}  # each arrived


@pytest.mark.postgres
async def test_canary_steps_and_webhooks_happen_once_across_a_leader_stop(fleet: Fleet) -> None:
    receiver = await Receiver(SECRET, statuses=[503] * 3).start()  # some deliveries are retried
    try:
        for i in range(3):
            await fleet.add(f"replica-{i}")
        await until(fleet.one_leads, "one replica leads")
        done = await _step_through(fleet, receiver, fleet.stop)
        _steps_once(done)
        await _recorded_once(fleet, receiver)
    finally:
        await receiver.stop()


@pytest.mark.postgres
async def test_canary_steps_and_webhooks_happen_once_across_a_lost_lock(fleet: Fleet) -> None:
    receiver = await Receiver(SECRET, statuses=[503] * 3).start()

    async def terminate_lock(leader: Running) -> None:
        admin = await asyncpg.connect(fleet.url)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                "dspy-registry leader " + leader.app.leadership.replica,
            )
        finally:
            await admin.close()

    try:
        for i in range(2):
            await fleet.add(f"replica-{i}")
        await until(fleet.one_leads, "one replica leads")
        done = await _step_through(fleet, receiver, terminate_lock)
        _steps_once(done)
        await _recorded_once(fleet, receiver)
    finally:
        await receiver.stop()


async def test_a_lone_sqlite_server_leads_and_says_so(tmp_path: Path) -> None:
    server = await start(f"sqlite:///{tmp_path}/registry.db", replica_name="only-one")
    try:
        assert server.app.leadership.leading
        await _program(server)
        assert await _leader_seen_by(server) == "only-one"
    finally:
        await server.channel.close(None)
        await server.app.stop(grace=0)


def test_a_replica_name_postgres_cannot_carry_is_refused_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="replica name"):
        App(Config(database="sqlite:///unused.db", replica_name="x" * 43))

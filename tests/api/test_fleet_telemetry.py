"""Telemetry off the revision lock, over real channels, on SQLite and Postgres: heartbeats and metric
windows are held in the replica's memory and written in batches outside the revision order — no
revision, a handful of write transactions for hundreds of reports — while GetDeploymentStatus and
analysis read them at once; another replica sees joins at once and the rest after the holder's
flush; a graceful stop flushes; a sidecar that moved replicas is counted once.

The replicas here flush only when a test says so (an interval of an hour), so that what is counted
is the reports' doing, not a timer's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import grpc
import pytest

from dspy_registry.server.app import build
from dspy_registry.server.config import Config
from dspy_registry.server.domain import sidecars as domain_sidecars
from dspy_registry.server.domain.health import STANDARD_BOUNDS_MS, Window
from dspy_registry.server.domain.sidecars import Report
from dspy_registry.server.errors import StoreUnavailable
from dspy_registry.server.store.backends import open_store
from dspy_registry.server.store.base import Store
from dspy_registry.server.usecases import live_sidecars
from dspy_registry.server.usecases import rollups as rollups_module
from dspy_registry.server.usecases.rollups import MetricRollups
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from tests.api.conftest import Running, start
from tests.api.test_sidecars import PROGRAM, _ack, _report, _with_program
from tests.clock import FakeClock
from tests.conftest import SKIP_POSTGRES, PostgresDatabases

NEVER = 3600.0  # a flush interval no test outlives: flushes happen when a test calls them


async def _replica(database_url: str, admin_token: str = "") -> Running:
    return await start(database_url, admin_token, telemetry_flush_seconds=NEVER)


async def _stop(*replicas: Running) -> None:
    for replica in replicas:
        await replica.channel.close(None)
        await replica.app.stop(grace=0)


async def _status(replica: Running) -> dpb.GetDeploymentStatusResponse:
    response: dpb.GetDeploymentStatusResponse = await replica.deployments.GetDeploymentStatus(
        dpb.GetDeploymentStatusRequest(program=PROGRAM, environment="development")
    )
    return response


def _window(start: datetime, requests: int, errors: int = 0) -> dpb.MetricWindow:
    out = dpb.MetricWindow(
        program=PROGRAM,
        environment="development",
        version="1.0.0",
        request_count=requests,
        error_count=errors,
    )
    out.start_time.FromDatetime(start)
    out.end_time.FromDatetime(start + timedelta(seconds=1))
    counts = [0] * (len(STANDARD_BOUNDS_MS) + 1)
    counts[0] = requests
    out.latency.counts.extend(counts)
    out.latency.sum_ms = 2.0 * requests
    return out


async def _revision(replica: Running) -> int:
    async with replica.app.store.read() as tx:
        return await tx.current_revision()


def _writes(replica: Running) -> tuple[int, int]:
    w = replica.app.store.writes
    return w.revisioned, w.telemetry


def _requests(status: dpb.GetDeploymentStatusResponse) -> int:
    [stable] = status.health
    return int(stable.request_count)


def _ids(status: dpb.GetDeploymentStatusResponse) -> list[str]:
    return [s.sidecar_id for s in status.sidecars]


async def _join(replica: Running, sidecar_id: str) -> str:
    """`sidecar_id` joins through `replica`, ACKing the development target's stable version; its digest."""
    digest = (await _status(replica)).target.stable.digest
    await replica.deployments.ReportSidecarStatus(_report(sidecar_id, _ack(digest)))
    return digest


def _nack(digest: str, message: str = "") -> dpb.SidecarTargetStatus:
    """`_ack`'s opposite: the sidecar could not apply `digest` (DATA_LOSS) and serves what it had."""
    nack = _ack(digest)
    nack.result = dpb.APPLY_RESULT_NACK
    nack.error_detail.code = grpc.StatusCode.DATA_LOSS.value[0]
    nack.error_detail.message = message
    return nack


@pytest.fixture
async def replica(database_url: str) -> AsyncIterator[Running]:
    running = await _with_program(await _replica(database_url))
    yield running
    await _stop(running)


async def test_reports_move_no_revision_and_hundreds_take_a_few_write_transactions(replica: Running) -> None:
    stub = replica.deployments
    digest = (await _status(replica)).target.stable.digest
    revision = await _revision(replica)
    before = _writes(replica)
    pods, rounds = 20, 10
    for pod in range(pods):  # each joins: written before it is answered, outside the revision order
        await stub.ReportSidecarStatus(_report(f"pod-{pod}", _ack(digest)))
    assert _writes(replica) == (before[0], before[1] + pods)
    start = datetime.now(UTC) - timedelta(seconds=rounds)
    for r in range(rounds):
        for pod in range(pods):
            await stub.ReportSidecarStatus(_report(f"pod-{pod}", _ack(digest)))  # a heartbeat
            reply = await stub.ReportMetrics(
                dpb.ReportMetricsRequest(
                    sidecar_id=f"pod-{pod}", windows=[_window(start + timedelta(seconds=r), 3)]
                )
            )
            assert reply.accepted_count == 1
    # 400 reports, not one write: the replica holds them; and what it holds is read at once.
    assert _writes(replica) == (before[0], before[1] + pods)
    status = await _status(replica)
    assert sorted(_ids(status)) == sorted(f"pod-{pod}" for pod in range(pods))
    assert _requests(status) == pods * rounds * 3
    await replica.app.replica_flush.run_once()
    assert _writes(replica) == (before[0], before[1] + pods + 2)  # one batch of windows, one of heartbeats
    assert await _revision(replica) == revision
    # Written, and still counted once: the rollups in the store are the ones no longer in memory.
    assert replica.app.replica_flush.rollups.held() == []
    again = await _status(replica)
    assert _requests(again) == pods * rounds * 3 and len(again.sidecars) == pods


async def test_a_flush_writes_only_the_sidecars_heard_since_it_last_wrote_them(replica: Running) -> None:
    stub = replica.deployments
    live = replica.app.replica_flush.live
    digest = (await _status(replica)).target.stable.digest
    for pod in range(4):  # each joins: written at once
        await stub.ReportSidecarStatus(_report(f"pod-{pod}", _ack(digest)))
    before = _writes(replica)
    assert await live.flush() == 0  # nothing heard since: no row to write, not even a transaction
    assert _writes(replica) == before
    for pod in (1, 3):
        await stub.ReportSidecarStatus(_report(f"pod-{pod}", _ack(digest)))  # heartbeats, held
    heard = {f"pod-{pod}": live.held[f"pod-{pod}"].time for pod in (1, 3)}
    assert await live.flush() == 2
    assert _writes(replica) == (before[0], before[1] + 1)
    assert await live.flush() == 0
    async with replica.app.store.read() as tx:
        for sidecar_id, time in heard.items():
            [row] = await tx.presence_of(sidecar_id, datetime.now(UTC))
            assert row.report.time == time  # the heartbeat's time, written
    assert sorted(_ids(await _status(replica))) == [f"pod-{pod}" for pod in range(4)]


async def test_a_flush_gives_the_event_loop_a_turn_between_batches(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls that arrive during a flush are answered between its batches, not after the whole fleet:
    no turn of the loop goes through, or writes, more than a batch of sidecars."""
    monkeypatch.setattr(live_sidecars, "FLUSH_BATCH", 4, raising=False)  # absent before batches
    clock = FakeClock()
    replica = await _with_program(await start(database_url, clock=clock, telemetry_flush_seconds=NEVER))
    try:
        stub = replica.deployments
        live = replica.app.replica_flush.live
        digest = (await _status(replica)).target.stable.digest
        pods = 3 * 4 + 3
        for pod in range(pods):  # silent from now on: let go by the flush
            await stub.ReportSidecarStatus(_report(f"gone-{pod}", _ack(digest)))
        clock.advance(3600)
        for _ in range(2):  # a join (written at once), then a heartbeat, written with the next flush
            for pod in range(pods):
                await stub.ReportSidecarStatus(_report(f"pod-{pod}", _ack(digest)))
        looked_at, written = [0], [0]
        live_at, live_until = Report.live_at, domain_sidecars.live_until

        def counted_live_at(r: Report, now: datetime) -> bool:
            looked_at[0] += 1
            return live_at(r, now)

        def counted_live_until(r: Report, flush_seconds: float) -> datetime:
            written[0] += 1
            return live_until(r, flush_seconds)

        monkeypatch.setattr(Report, "live_at", counted_live_at)
        monkeypatch.setattr(domain_sidecars, "live_until", counted_live_until)
        flush = asyncio.create_task(live.flush())
        turns = [(0, 0)]
        while not flush.done():
            await asyncio.sleep(0)
            turns.append((looked_at[0], written[0]))
        assert await flush == pods and looked_at[0] == 2 * pods and written[0] == pods
        assert all(b[0] - a[0] <= 4 and b[1] - a[1] <= 4 for a, b in zip(turns, turns[1:], strict=False))
        assert sorted(live.held) == sorted(f"pod-{pod}" for pod in range(pods))  # the silent let go
    finally:
        await _stop(replica)


async def test_a_retried_window_counts_once_and_a_changed_report_is_written_at_once(replica: Running) -> None:
    stub = replica.deployments
    digest = await _join(replica, "pod-a")
    window = _window(datetime.now(UTC), 7)
    for _ in range(3):
        assert (
            await stub.ReportMetrics(dpb.ReportMetricsRequest(sidecar_id="pod-a", windows=[window]))
        ).accepted_count == 1
    assert _requests(await _status(replica)) == 7
    before = _writes(replica)
    nack = _nack(digest, "digest mismatch")
    await stub.ReportSidecarStatus(_report("pod-a", nack))  # what it runs changed: written now
    # The report, in a telemetry transaction; the new NACK, offered to the deployments it may end.
    assert _writes(replica) == (before[0] + 1, before[1] + 1)
    await stub.ReportSidecarStatus(_report("pod-a", nack))  # said again: nothing more to write
    assert _writes(replica) == (before[0] + 1, before[1] + 1)
    async with replica.app.store.read() as tx:
        [row] = await tx.presence_serving(PROGRAM, "development", datetime.now(UTC))
    assert [a.acked for a in row.report.targets] == [False]


async def test_a_graceful_stop_writes_what_the_replica_held(database_url: str) -> None:
    clock = FakeClock()
    first = await _with_program(await start(database_url, clock=clock, telemetry_flush_seconds=NEVER))
    digest = await _join(first, "pod-a")
    joined = clock.now()
    clock.advance(5.0)
    await first.deployments.ReportSidecarStatus(_report("pod-a", _ack(digest)))  # a heartbeat: held only
    await first.deployments.ReportMetrics(
        dpb.ReportMetricsRequest(sidecar_id="pod-a", windows=[_window(clock.now(), 11)])
    )
    await _stop(first)
    second = await _replica(database_url, first.admin_token)  # another replica, or the same restarted
    try:
        status = await _status(second)
        assert _requests(status) == 11
        [sidecar] = status.sidecars
        seen = sidecar.last_report_time.ToDatetime(UTC)
        assert abs(seen - (joined + timedelta(seconds=5))) < timedelta(milliseconds=1)  # the heartbeat's time
    finally:
        await _stop(second)


@pytest.fixture
async def replicas(pg_databases: PostgresDatabases) -> AsyncIterator[tuple[Running, Running]]:
    if SKIP_POSTGRES:
        pytest.skip("DSPY_REGISTRY_SKIP_POSTGRES=1")
    url = await pg_databases.create()
    a = await _with_program(await _replica(url))
    b = await _replica(url, a.admin_token)
    yield a, b
    await _stop(a, b)


@pytest.mark.postgres
async def test_another_replica_sees_joins_at_once_windows_after_the_flush_and_a_moved_sidecar_once(
    replicas: tuple[Running, Running],
) -> None:
    a, b = replicas
    digest = (await _status(a)).target.stable.digest
    for pod in ("pod-0", "pod-1", "pod-2"):
        await a.deployments.ReportSidecarStatus(_report(pod, _ack(digest)))
    assert _ids(await _status(b)) == ["pod-0", "pod-1", "pod-2"]  # joins are written before the answer
    await a.deployments.ReportMetrics(
        dpb.ReportMetricsRequest(sidecar_id="pod-0", windows=[_window(datetime.now(UTC), 30)])
    )
    assert (_requests(await _status(a)), _requests(await _status(b))) == (30, 0)  # held by a only
    await a.app.replica_flush.run_once()
    assert _requests(await _status(b)) == 30
    assert _requests(await _status(a)) == 30  # in memory and in the store for a moment: counted once

    # pod-0 reconnects to b: one sidecar, on both replicas' status, before and after their flushes.
    await b.deployments.ReportSidecarStatus(_report("pod-0", _ack(digest)))
    for replica in (a, b):
        assert _ids(await _status(replica)) == ["pod-0", "pod-1", "pod-2"]
    await a.app.replica_flush.run_once()
    await b.app.replica_flush.run_once()
    for replica in (a, b):
        assert _ids(await _status(replica)) == ["pod-0", "pod-1", "pod-2"]


@pytest.mark.postgres
async def test_a_sidecar_that_reports_to_both_replicas_in_turn_is_written_once_and_counted_once(
    replicas: tuple[Running, Running],
) -> None:
    a, b = replicas
    digest = await _join(a, "pod-0")  # written
    before = (_writes(a), _writes(b))
    for _ in range(5):  # a round-robin client: every other call to each replica
        for replica in (b, a):
            await replica.deployments.ReportSidecarStatus(_report("pod-0", _ack(digest)))
    assert (_writes(a), _writes(b)) == before  # b found in the store what it heard: held, not written
    for replica in (a, b):
        await replica.app.replica_flush.run_once()  # a row each
        assert _ids(await _status(replica)) == ["pod-0"]
    # It ACKs another digest through b: written at once, and the newest word on both replicas.
    await b.deployments.ReportSidecarStatus(_report("pod-0", _nack(digest)))
    for replica in (a, b):
        [sidecar] = (await _status(replica)).sidecars
        assert [t.result for t in sidecar.targets] == [dpb.APPLY_RESULT_NACK]
    await a.app.replica_flush.run_once()  # a's older word, written again, does not undo it
    [sidecar] = (await _status(b)).sidecars
    assert [t.result for t in sidecar.targets] == [dpb.APPLY_RESULT_NACK]
    # It leaves through a: gone on both, although b still holds its last report.
    await a.deployments.ReportSidecarStatus(_report("pod-0", leaving=True))
    await b.app.replica_flush.run_once()
    for replica in (a, b):
        assert _ids(await _status(replica)) == []


@pytest.mark.postgres
async def test_a_sidecar_reported_on_one_replica_blocks_another_principal_on_the_other(
    replicas: tuple[Running, Running],
) -> None:
    from dspy_registry.v1 import access_pb2 as apb
    from dspy_registry.v1 import access_pb2_grpc as apb_grpc

    a, b = replicas
    digest = await _join(a, "pod-a")
    access = apb_grpc.AccessServiceStub(a.channel)
    await access.CreatePrincipal(apb.CreatePrincipalRequest(principal_id="intruder"))
    await access.GrantPermission(
        apb.GrantPermissionRequest(principal="principals/intruder", action=apb.ACTION_READ, resource=PROGRAM)
    )
    token = (await access.CreateToken(apb.CreateTokenRequest(parent="principals/intruder"))).secret
    channel = b.channel_for(token)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await dpb_grpc.DeploymentServiceStub(channel).ReportSidecarStatus(_report("pod-a", _ack(digest)))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await channel.close(None)


@pytest.mark.postgres
async def test_windows_sent_where_the_sidecar_does_not_heartbeat_read_nothing_from_the_store(
    replicas: tuple[Running, Running],
) -> None:
    # A client that spreads its calls over the replicas sends most windows to a replica its heartbeats
    # do not reach: each of them was a read of the sidecar's rows, most of a fleet's database load.
    a, b = replicas
    await _join(a, "pod-a")
    start = datetime.now(UTC) - timedelta(seconds=20)
    await b.deployments.ReportMetrics(
        dpb.ReportMetricsRequest(sidecar_id="pod-a", windows=[_window(start, 1)])
    )
    kinds: list[str] = []
    timer = b.app.store.timer
    observe = timer.observe
    timer.observe = lambda kind, seconds: kinds.append(kind)
    try:
        for second in range(1, 11):
            window = _window(start + timedelta(seconds=second), 1)
            reply = await b.deployments.ReportMetrics(
                dpb.ReportMetricsRequest(sidecar_id="pod-a", windows=[window])
            )
            assert reply.accepted_count == 1
    finally:
        timer.observe = observe
    # Ten calls, ten reads before; now none (b's own background work may read once meanwhile).
    assert kinds.count("read") <= 1 and "write" not in kinds and "telemetry" not in kinds
    assert _requests(await _status(b)) == 11


@pytest.mark.postgres
async def test_a_flush_rewrites_only_the_targets_that_changed_and_restores_those_removed(
    replicas: tuple[Running, Running],
) -> None:
    a, b = replicas
    digest = await _join(a, "pod-a")

    async def targets_rows() -> list[tuple[str, str]]:  # (replica, xmin): a rewritten row has a new xmin
        async with a.app.store.read() as tx:
            rows = await tx.conn.fetch(
                "SELECT replica, xmin::text AS x FROM sidecar_presence_targets WHERE sidecar_id = ?", "pod-a"
            )
        return sorted((str(r["replica"]), str(r["x"])) for r in rows)

    written = await targets_rows()
    assert len(written) == 1
    await a.deployments.ReportSidecarStatus(_report("pod-a", _ack(digest)))  # a heartbeat, held
    for _ in range(2):
        await a.app.replica_flush.run_once()
    assert await targets_rows() == written  # unchanged, so not rewritten: no dead rows every flush
    # It leaves through b, which takes a's rows along, and comes back to a, which still holds it:
    # a heartbeat there, yet a's next flush puts back what it serves, and b finds it again.
    await b.deployments.ReportSidecarStatus(_report("pod-a", leaving=True))
    assert await targets_rows() == []
    await a.deployments.ReportSidecarStatus(_report("pod-a", _ack(digest)))
    await a.app.replica_flush.run_once()
    assert _ids(await _status(b)) == ["pod-a"]


@pytest.mark.postgres
async def test_pooled_sessions_end_idle_transactions_and_are_not_reset_after_each_use(
    replicas: tuple[Running, Running],
) -> None:
    a, _ = replicas
    async with a.app.store.read() as tx:  # set once per session: no statement per telemetry transaction
        row = await tx.conn.fetchrow("SELECT current_setting('idle_in_transaction_session_timeout') AS t")
        assert row is not None and row["t"] == "30s"
        database = (await tx.conn.fetchrow("SELECT current_database() AS d") or {"d": ""})["d"]
    async with a.app.store.read() as tx:
        rows = await tx.conn.fetch(
            "SELECT query FROM pg_stat_activity WHERE datname = ? AND query LIKE ?", database, "%RESET ALL%"
        )
    # asyncpg's default reset, a round trip and a commit each time a connection went back to the pool.
    assert [r["query"] for r in rows] == []


async def test_a_flush_the_store_refuses_keeps_what_was_held_for_the_next_up_to_a_bound(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(database_url)
    await store.open()
    clock = FakeClock()
    rollups = MetricRollups(store, "r1", clock=clock)
    windows = []
    for second in range(5):  # one rollup a second
        w = _window_value(clock.now(), requests=second + 1)
        windows.append(w)
        rollups.add("admin", "pod-a", [w], clock.now())
        clock.advance(1.0)
    await store.close()  # the store is away
    monkeypatch.setattr(rollups_module, "MAX_HELD", 3)
    with pytest.raises(StoreUnavailable):
        await rollups.flush(3600)
    assert sorted(r.totals.request_count for r in rollups.held()) == [3, 4, 5]  # the oldest let go
    rollups.store = open_store(database_url)  # the store is back
    await rollups.store.open()
    try:
        assert await rollups.flush(3600) == 3
        async with rollups.store.read() as tx:
            stored = await tx.metric_rollups(PROGRAM, "development", ["1.0.0"], windows[0].start_time)
        assert sorted(r.totals.request_count for r in stored) == [3, 4, 5]
    finally:
        await rollups.store.close()


def test_a_window_is_remembered_for_retries_for_retry_seconds_then_let_go() -> None:
    clock = FakeClock()
    rollups = MetricRollups(cast(Store, None), "r1", clock=clock)  # adding never reads the store
    w = _window_value(clock.now(), requests=1)

    def held() -> int:
        return sum(r.totals.request_count for r in rollups.held())

    rollups.add("admin", "pod-a", [w], clock.now())
    for _ in range(int(rollups_module.RETRY_SECONDS)):  # a retry each second: the same window
        clock.advance(1.0)
        rollups.add("admin", "pod-a", [w], clock.now())
    assert held() == 1
    rollups.add("someone-else", "pod-a", [w], clock.now())  # another principal's is not a retry
    assert held() == 2
    clock.advance(1.0)  # the first sighting is RETRY_SECONDS + 1 old: let go, so it counts again
    rollups.add("admin", "pod-a", [w], clock.now())
    assert held() == 3


def _window_value(start: datetime, requests: int) -> Window:
    return Window(
        sidecar_id="pod-a",
        program=PROGRAM,
        environment="development",
        version="1.0.0",
        start_time=start,
        end_time=start + timedelta(seconds=1),
        request_count=requests,
        error_count=0,
        bounds_ms=STANDARD_BOUNDS_MS,
        counts=(requests, *[0] * len(STANDARD_BOUNDS_MS)),
        sum_ms=1.0,
        feedback_correct=0,
        feedback_total=0,
    )


def test_a_flush_interval_that_is_not_positive_fails_the_start(tmp_path: Path) -> None:
    for seconds in (0.0, -5.0):
        with pytest.raises(ValueError, match="--telemetry-flush must be positive"):
            build(Config(database=f"sqlite:///{tmp_path / 'r.db'}", telemetry_flush_seconds=seconds))

"""Changed reports in group commits, over a real channel, on SQLite and Postgres: the ACKs a deployment
brings, all at once, are written by a few telemetry transactions rather than one each; each is
answered only once its row is committed, recorded, and counted once; a transaction that fails fails
every report in it, and writes none of them.

A flush in flight is what holds the first transaction back here (the test takes the replica's
writing turn, as a flush does), so that the count of transactions is the reports' doing, not how
fast they happened to arrive."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import grpc
import pytest

from dspy_registry.v1 import deployment_pb2 as dpb
from tests.api.conftest import Running
from tests.api.test_fleet_telemetry import _replica, _status, _stop, _writes
from tests.api.test_sidecars import PROGRAM, _ack, _report, _with_program
from tests.eventually import until

PODS = 40


@pytest.fixture
async def replica(database_url: str) -> AsyncIterator[Running]:
    running = await _with_program(await _replica(database_url))
    yield running
    await _stop(running)


async def _queued_behind_a_flush(
    replica: Running, reports: list[dpb.ReportSidecarStatusRequest]
) -> list[asyncio.Future[dpb.ReportSidecarStatusResponse]]:
    """Send `reports` at once while the replica's writing turn is taken (a flush in flight); once every
    one waits for the next transaction, give the turn back. The calls, none answered before."""
    live = replica.app.replica_flush.live
    async with live._writing:
        calls = [asyncio.ensure_future(replica.deployments.ReportSidecarStatus(r)) for r in reports]
        await until(lambda: live.waiting == len(reports), "every report waits for the next transaction")
        assert not any(c.done() for c in calls)  # a change is answered once written, not before
    return calls


async def test_concurrent_acks_take_one_transaction_and_each_is_recorded_and_counted_once(
    replica: Running,
) -> None:
    digest = (await _status(replica)).target.stable.digest
    before = _writes(replica)
    calls = await _queued_behind_a_flush(
        replica, [_report(f"pod-{i:02d}", _ack(digest)) for i in range(PODS)]
    )
    await asyncio.gather(*calls)
    # One telemetry transaction for the forty joins (one each before), and no revision.
    assert _writes(replica) == (before[0], before[1] + 1)
    ids = [f"pod-{i:02d}" for i in range(PODS)]
    status = await _status(replica)
    assert sorted(s.sidecar_id for s in status.sidecars) == ids  # each once
    async with replica.app.store.read() as tx:
        rows = await tx.presence_serving(PROGRAM, "development", datetime.now(UTC))
    assert sorted(p.report.sidecar_id for p in rows) == ids  # committed: one row each
    # Written and held: the same again is a heartbeat, which writes nothing.
    await asyncio.gather(*(replica.deployments.ReportSidecarStatus(_report(i, _ack(digest))) for i in ids))
    assert _writes(replica) == (before[0], before[1] + 1)


async def test_a_report_naming_a_missing_program_is_refused_alone_in_its_batch(replica: Running) -> None:
    digest = (await _status(replica)).target.stable.digest
    before = _writes(replica)
    reports = [_report(f"pod-{i:02d}", _ack(digest)) for i in range(4)]
    reports.append(_report("pod-lost", _ack(digest, program="nowhere")))
    calls = await _queued_behind_a_flush(replica, reports)
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, dpb.ReportSidecarStatusResponse) for r in results[:4]), results
    lost = results[4]
    assert isinstance(lost, grpc.aio.AioRpcError) and lost.code() == grpc.StatusCode.NOT_FOUND, lost
    assert "programs/nowhere" in (lost.details() or "")
    assert _writes(replica) == (before[0], before[1] + 1)
    assert sorted(s.sidecar_id for s in (await _status(replica)).sidecars) == [
        f"pod-{i:02d}" for i in range(4)
    ]


async def _sql(database_url: str, *, sqlite: str, postgres: list[str]) -> None:
    """Run the statements for the test's backend on a connection of the test's own."""
    if database_url.startswith("sqlite:"):
        db = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        try:
            db.execute(sqlite)
            db.commit()
        finally:
            db.close()
        return
    conn = await asyncpg.connect(database_url)
    try:
        for statement in postgres:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _fault_at(database_url: str, sidecar_id: str) -> None:
    """A real fault in the store as the row of `sidecar_id` is written, mid-batch: on PostgreSQL its
    backend is terminated (what a failover does to a session), on SQLite the statement is aborted."""
    await _sql(
        database_url,
        sqlite=f"CREATE TRIGGER fault BEFORE INSERT ON sidecar_presence WHEN NEW.sidecar_id = '{sidecar_id}' "
        "BEGIN SELECT RAISE(ABORT, 'fault'); END",
        postgres=[
            "CREATE FUNCTION fault() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$",
            "CREATE TRIGGER fault BEFORE INSERT ON sidecar_presence FOR EACH ROW "
            f"WHEN (NEW.sidecar_id = '{sidecar_id}') EXECUTE FUNCTION fault()",
        ],
    )


async def _no_fault(database_url: str) -> None:
    await _sql(database_url, sqlite="DROP TRIGGER fault", postgres=["DROP TRIGGER fault ON sidecar_presence"])


async def test_a_fault_in_the_batch_fails_every_report_in_it_and_writes_none(
    replica: Running, database_url: str
) -> None:
    digest = (await _status(replica)).target.stable.digest
    ids = [f"pod-{i:02d}" for i in range(20)]
    await _fault_at(database_url, "pod-10")  # the rows before it are written in the same transaction
    before = _writes(replica)
    calls = await _queued_behind_a_flush(replica, [_report(i, _ack(digest)) for i in ids])
    results = await asyncio.gather(*calls, return_exceptions=True)
    codes = {r.code() if isinstance(r, grpc.aio.AioRpcError) else r for r in results}
    # UNAVAILABLE (retry) where the database went away; the statement's own ABORTED on SQLite.
    expected = grpc.StatusCode.ABORTED if database_url.startswith("sqlite:") else grpc.StatusCode.UNAVAILABLE
    assert codes == {expected}, results
    assert _writes(replica) == before  # nothing committed
    async with replica.app.store.read() as tx:
        assert await tx.presence_serving(PROGRAM, "development", datetime.now(UTC)) == []
    assert list((await _status(replica)).sidecars) == []
    # None was held: sent again once the store is sound, each is a change, written.
    await _no_fault(database_url)
    await asyncio.gather(*(replica.deployments.ReportSidecarStatus(_report(i, _ack(digest))) for i in ids))
    async with replica.app.store.read() as tx:
        rows = await tx.presence_serving(PROGRAM, "development", datetime.now(UTC))
    assert sorted(p.report.sidecar_id for p in rows) == ids

"""Changed reports in group commits, over a real channel, on SQLite and Postgres: the ACKs a deployment
brings, all at once, are written by a few telemetry transactions rather than one each; each is
answered only once its row is committed, recorded, and counted once; a transaction that fails fails
every report in it, and writes none of them.

A flush in flight is what holds the first transaction back here (the test takes the replica's
writing turn, as a flush does), so that the count of transactions is the reports' doing, not how
fast they happened to arrive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from dspy_registry.server.domain.sidecars import Applied, Report
from dspy_registry.v1 import deployment_pb2 as dpb
from tests.api.conftest import Running
from tests.api.test_fleet_telemetry import _replica, _status, _stop, _writes
from tests.api.test_sidecars import PROGRAM, _ack, _report, _with_program
from tests.eventually import until
from tests.sql import execute

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


async def _fault_at(database_url: str, sidecar_id: str) -> None:
    """A real fault in the store as the row of `sidecar_id` is written, mid-batch: on PostgreSQL its
    backend is terminated (what a failover does to a session), on SQLite the statement is aborted."""
    if database_url.startswith("sqlite"):
        await execute(
            database_url,
            f"CREATE TRIGGER fault BEFORE INSERT ON sidecar_presence WHEN NEW.sidecar_id = '{sidecar_id}' "
            "BEGIN SELECT RAISE(ABORT, 'fault'); END",
        )
        return
    await execute(
        database_url,
        "CREATE FUNCTION fault() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$",
        "CREATE TRIGGER fault BEFORE INSERT ON sidecar_presence FOR EACH ROW "
        f"WHEN (NEW.sidecar_id = '{sidecar_id}') EXECUTE FUNCTION fault()",
    )


async def _no_fault(database_url: str) -> None:
    sqlite = database_url.startswith("sqlite")
    await execute(database_url, "DROP TRIGGER fault" + ("" if sqlite else " ON sidecar_presence"))


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


def _domain_report(sidecar_id: str, digest: str, *, acked: bool, at: datetime) -> Report:
    applied = Applied(
        program=PROGRAM,
        environment="development",
        version="1.0.0",
        digest=digest,
        acked=acked,
        error_code=0 if acked else 13,
        error_message="" if acked else "digest mismatch",
        revision=1,
        apply_time=None,
    )
    return Report(
        sidecar_id=sidecar_id,
        principal="admin",
        targets=(applied,),
        heartbeat_seconds=10,
        time=at,
        revision=1,
    )


async def _rows_of(replica: Running, sidecar_id: str) -> list[bool]:
    """Whether each row the store holds of the sidecar says it left."""
    async with replica.app.store.read() as tx:
        return [p.leaving for p in await tx.presence_of(sidecar_id, datetime.now(UTC))]


async def test_a_report_whose_caller_went_while_it_waited_is_not_written(replica: Running) -> None:
    # It was written all the same, after whatever took the writing turn meanwhile: after the sidecar
    # had left through `leave` (it shut down once its call timed out), it was live again.
    live = replica.app.replica_flush.live
    digest = (await _status(replica)).target.stable.digest
    async with live._writing:
        waiting = asyncio.ensure_future(
            live.keep(_domain_report("pod-gone", digest, acked=True, at=datetime.now(UTC)))
        )
        await until(lambda: live.waiting == 1, "the report waits for the next transaction")
        waiting.cancel()  # its deadline
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await until(lambda: live.waiting == 0 and not live._writing.locked(), "the queue is written")
    assert await _rows_of(replica, "pod-gone") == []
    assert live.last("pod-gone", datetime.now(UTC)) is None


async def test_a_nack_whose_caller_went_before_hearing_it_was_written_is_not_held_so_it_comes_again_as_a_change(
    replica: Running,
) -> None:
    # Written and held, but the caller was cancelled in the turn between its answer and its resuming:
    # it never offered the NACK to the deployments, and the same report again was taken for a heartbeat.
    live = replica.app.replica_flush.live
    digest = (await _status(replica)).target.stable.digest
    nack = _domain_report("pod-n", digest, acked=False, at=datetime.now(UTC))
    caller = asyncio.ensure_future(live.keep(nack))
    while live.last("pod-n", datetime.now(UTC)) is None and not caller.done():
        await asyncio.sleep(0)  # queued ahead of the caller's resuming once the answer is set
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert await _rows_of(replica, "pod-n") == [False]  # written
    assert live.last("pod-n", datetime.now(UTC)) is None  # not held: its next report is a change


async def test_of_two_reports_of_one_sidecar_in_a_batch_one_whose_caller_went_is_not_held(
    replica: Running,
) -> None:
    live = replica.app.replica_flush.live
    digest = (await _status(replica)).target.stable.digest
    now = datetime.now(UTC)
    ack = _domain_report("pod-2", digest, acked=True, at=now)
    nack = _domain_report("pod-2", digest, acked=False, at=now + timedelta(seconds=1))
    async with live._writing:
        first = asyncio.ensure_future(live.keep(ack))
        second = asyncio.ensure_future(live.keep(nack))
        await until(lambda: live.waiting == 2, "both wait for the next transaction")
        second.cancel()  # the newer one's caller went: it never acted on the NACK
    await first
    with pytest.raises(asyncio.CancelledError):
        await second
    assert live.last("pod-2", datetime.now(UTC)) == ack  # the NACK is a change when it comes again

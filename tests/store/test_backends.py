"""What each backend promises beyond the conformance suite."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from dspy_registry.server.domain.model import Event
from dspy_registry.server.errors import StoreError, StoreUnavailable
from dspy_registry.server.store.backends import open_store
from dspy_registry.server.store.base import Store
from dspy_registry.server.store.deployment_records import ACTIVE_DEPLOYMENT_SQL, SHAPING_DEPLOYMENTS_SQL
from dspy_registry.server.store.sqlite import SqliteStore
from tests.store.event_log import append, resources, revision


async def test_a_second_server_on_the_same_file_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    first = open_store(url)
    await first.open()
    second = open_store(url)
    with pytest.raises(StoreUnavailable, match="in use by another dspy-registry server"):
        await second.open()
    await first.close()
    await second.open()  # free again once the first one closed
    await second.close()


def test_relative_and_absolute_urls() -> None:
    from dspy_registry.server.store.sqlite import path_from_url

    assert path_from_url("sqlite:///.dspy-registry/registry.db") == ".dspy-registry/registry.db"
    assert path_from_url("sqlite:////var/lib/r.db") == "/var/lib/r.db"
    with pytest.raises(ValueError):
        path_from_url("sqlite://")


async def test_an_unreachable_postgres_is_store_unavailable_not_a_driver_error() -> None:
    store = open_store("postgresql://postgres@127.0.0.1:1/nothing")
    with pytest.raises(StoreUnavailable):
        await store.open()


async def test_sqlite_waits_out_another_connections_lock_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    store = SqliteStore(f"sqlite:///{path}", busy_timeout=2.0)
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # an admin shell or a backup holding the write lock

    async def write() -> int:
        async with store.write() as tx:
            return await tx.append([Event(kind="e", resource="r/1")])

    pending = asyncio.create_task(write())
    ticks = 0
    while not pending.done() and ticks < 20:
        await asyncio.sleep(0.01)  # the loop keeps running meanwhile
        ticks += 1
    assert ticks == 20 and not pending.done()
    other.execute("ROLLBACK")
    assert await pending == 1
    other.close()
    await store.close()


async def test_sqlite_writer_survives_a_lock_held_past_its_timeout(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    store = SqliteStore(f"sqlite:///{path}", busy_timeout=0.2)
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreUnavailable, match="stayed locked"):
        async with store.write() as tx:
            await tx.append([Event(kind="e", resource="r/1")])
    other.execute("ROLLBACK")
    other.close()
    async with store.write() as tx:  # the writer task is alive and the revision was not consumed
        assert await tx.append([Event(kind="e", resource="r/1")]) == 1
    await store.close()


async def test_a_transaction_that_went_on_after_a_failed_statement_never_commits(store: Store) -> None:
    # PostgreSQL turned the COMMIT of such a transaction into a silent ROLLBACK: the caller
    # heard of a success that never happened. SQLite committed the rest without the failed part.
    with pytest.raises(StoreError):
        async with store.write() as tx:
            await tx.put_artifact("sha256:lost", [b"bytes"])
            try:
                await tx.conn.execute("SELECT no_such_column FROM revisions")
            except StoreError:
                pass  # a caller that catches and goes on (auto-deploy skips a refusing environment)
    async with store.read() as tx:
        assert await tx.conn.fetch("SELECT digest FROM artifacts") == []
    assert await append(store, "r/next") == 1  # the store goes on


async def test_sqlite_finds_a_targets_active_deployment_by_index_not_by_walking_its_history(
    tmp_path: Path,
) -> None:
    """Every registration auto-deploys to development: a walk would cost more with each one."""
    plan = await _sqlite_plan(tmp_path, ACTIVE_DEPLOYMENT_SQL, ("p", "development", 1, 2, 8))
    assert plan == [
        "SEARCH deployments USING INDEX deployments_by_state (state=? AND program=? AND environment=?)"
    ]


async def test_the_revision_row_holds_the_last_committed_revision_after_a_batch_with_a_failure(
    database_url: str,
) -> None:
    """SQLite writes the revision row once per batch of transactions that share a COMMIT (PostgreSQL
    in each): a transaction rolled back inside the batch takes no revision, and a store opened again
    goes on from the last committed one."""
    store = open_store(database_url)
    await store.open()

    async def fails() -> None:
        with pytest.raises(ValueError):
            async with store.write() as tx:
                await tx.append([Event(kind="e", resource="r/failed")])
                raise ValueError("rolled back")

    try:
        done = await asyncio.gather(
            append(store, "r/0"),
            fails(),
            append(store, "r/1"),
            append(store, "r/2"),
            fails(),
            append(store, "r/3"),
        )
        assert sorted(r for r in done if r is not None) == [1, 2, 3, 4]
        assert await revision(store) == 4
    finally:
        await store.close()
    reopened = open_store(database_url)
    await reopened.open()
    try:
        assert await revision(reopened) == 4
        assert await append(reopened, "r/after") == 5
        assert await resources(reopened) == ["r/0", "r/1", "r/2", "r/3", "r/after"]
    finally:
        await reopened.close()


async def test_sqlite_keeps_a_batchs_savepoint_journals_off_the_disk(tmp_path: Path) -> None:
    """Each transaction of a batch is a SAVEPOINT: SQLite keeps the pages it changes to roll back
    to, a journal that spilled into a temporary file past 64 KiB, a pwrite per page (most
    auto-deploying registrations did). In memory, a transaction that changes more than that still
    rolls back alone, and the one after it in the batch commits."""
    store = SqliteStore(f"sqlite:///{tmp_path / 'registry.db'}")
    await store.open()
    try:
        async with store.write() as tx:
            await tx.append(
                [Event(kind="e", resource=f"r/{i}", data={"pad": "x" * 1000}) for i in range(200)]
            )
        seen: list[str] = []

        async def rewrites_every_page_then_fails() -> None:
            with pytest.raises(ValueError):
                async with store.write() as tx:
                    # Some fifty pages of 4 KiB, all there before this transaction began.
                    await tx.conn.execute("UPDATE events SET data = ?", '{"pad":"y"}')
                    raise ValueError("rolled back to its savepoint")

        async def looks_for_a_spilled_journal() -> int:
            async with store.write() as tx:
                # SQLite names its temporary files etilqs_*, and keeps this one open until COMMIT.
                seen.extend(
                    target for fd in Path("/proc/self/fd").iterdir() if "etilqs_" in (target := _link(fd))
                )
                return await tx.append([Event(kind="e", resource="r/after")])

        _, after = await asyncio.gather(rewrites_every_page_then_fails(), looks_for_a_spilled_journal())
        assert seen == []
        assert after == 2
        async with store.read() as tx:
            pads = {r["data"] for r in await tx.conn.fetch("SELECT data FROM events WHERE revision = 1")}
        assert pads == {'{"pad":"' + "x" * 1000 + '"}'}
    finally:
        await store.close()


def _link(fd: Path) -> str:
    try:
        return str(fd.readlink())
    except OSError:  # closed since it was listed
        return ""


async def test_sqlite_finds_recently_succeeded_deployments_from_their_targets_not_by_end_time(
    tmp_path: Path,
) -> None:
    """The analysis loop asks every second; every auto-deploy of the monitoring window ended in it."""
    plan = await _sqlite_plan(tmp_path, SHAPING_DEPLOYMENTS_SQL, (2, 0, 3, 0))
    assert "SCAN t" in plan
    assert "SEARCH d USING INDEX sqlite_autoindex_deployments_1 (id=?)" in plan
    assert not any("end_time" in step for step in plan)


async def _sqlite_plan(tmp_path: Path, sql: str, params: tuple[object, ...]) -> list[str]:
    """The steps of SQLite's plan for `sql` on a freshly migrated database (its indexes all there)."""
    path = tmp_path / "registry.db"
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    await store.close()
    db = sqlite3.connect(path)
    try:
        return [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    finally:
        db.close()

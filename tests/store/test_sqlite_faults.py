"""SQLite on a full disk: writes refused, reads served, and writable again when space returns.

The disk is a tmpfs of the test's own (tests/small_disk.py), filled to the
last byte; skipped, saying so, where mounting is not permitted.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from dspy_registry.server.domain.model import Event
from dspy_registry.server.errors import ResourceExhausted, StoreError, StoreUnavailable
from dspy_registry.server.store.backends import open_store
from dspy_registry.server.store.sqlite import SqliteStore
from dspy_registry.server.store.sqlite_connections import MIN_FREE_BYTES
from dspy_registry.server.store.sqlite_connections import translate as translate_sqlite
from tests.small_disk import fill, small_disk
from tests.store.event_log import append, resources, revision


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_disk(tmp_path / "disk", "4m") as mounted:
        yield mounted


async def _write_until_refused(store: SqliteStore, size: int = 8192) -> ResourceExhausted:
    for i in range(10_000):
        try:
            async with store.write() as tx:
                await tx.append([Event(kind="e", resource=f"r/{i}", data={"pad": "x" * size})])
        except ResourceExhausted as exc:
            return exc
    raise AssertionError("the disk never filled")


async def test_sqlite_on_a_full_disk_refuses_writes_serves_reads_and_recovers(disk: Path) -> None:
    # "sqlite: database or disk is full" was a StoreError: INTERNAL.
    store = SqliteStore(f"sqlite:///{disk / 'registry.db'}")
    await store.open()
    try:
        filler = fill(disk, leave=2 * MIN_FREE_BYTES)
        refused = await _write_until_refused(store)
        assert refused.limit == "database_disk"
        before = await revision(store)  # reads go on
        with pytest.raises(ResourceExhausted, match="read-only"):
            await append(store)
        found = await store.ping(timeout=5)
        assert found.readable and not found.writable and "full" in found.detail
        filler.unlink()
        assert (await store.ping(timeout=5)).writable
        assert await append(store) == before + 1
    finally:
        await store.close()
    check = sqlite3.connect(disk / "registry.db")
    assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    check.close()


async def test_sqlite_that_fills_its_disk_as_it_commits_loses_no_acknowledged_write(disk: Path) -> None:
    store = SqliteStore(f"sqlite:///{disk / 'registry.db'}")
    await store.open()
    acknowledged: list[str] = []
    fill(disk, leave=MIN_FREE_BYTES + 256 * 1024)  # room for a few batches, then none

    async def writer(n: int) -> None:
        for i in range(1000):
            try:
                async with store.write() as tx:
                    await tx.append([Event(kind="e", resource=f"r/{n}/{i}", data={"pad": "x" * 16384})])
            except ResourceExhausted:
                return
            acknowledged.append(f"r/{n}/{i}")

    await asyncio.gather(*(writer(n) for n in range(8)))  # group commits: batches fail whole
    await store.close()
    reopened = SqliteStore(f"sqlite:///{disk / 'registry.db'}")
    await reopened.open()
    try:
        assert acknowledged and set(acknowledged) <= set(await resources(reopened))
    finally:
        await reopened.close()


async def test_sqlite_started_on_a_full_disk_opens_read_only_and_turns_writable(disk: Path) -> None:
    url = f"sqlite:///{disk / 'registry.db'}"
    store = SqliteStore(url)
    await store.open()
    assert await append(store) == 1
    await store.close()
    filler = fill(disk, leave=0)
    store = SqliteStore(url)
    await store.open()  # refused to start before: the lock file's pid, the first write
    try:
        assert await resources(store) == ["r/1"]
        with pytest.raises(ResourceExhausted, match="read-only.*full"):
            await append(store)
        assert not (await store.ping(timeout=5)).writable
        filler.unlink()
        assert (await store.ping(timeout=5)).writable
        assert await append(store) == 2  # the revision read at the start, not a stale one
    finally:
        await store.close()


async def test_sqlite_refuses_to_start_a_new_database_on_a_full_disk(disk: Path) -> None:
    fill(disk, leave=0)
    store = open_store(f"sqlite:///{disk / 'registry.db'}")
    with pytest.raises(ResourceExhausted, match="disk holding .* is full.*must be written"):
        await store.open()
    await store.close()


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (sqlite3.SQLITE_FULL, ResourceExhausted),
        (sqlite3.SQLITE_IOERR_WRITE, StoreUnavailable),
        (sqlite3.SQLITE_IOERR_FSYNC, StoreUnavailable),
        (sqlite3.SQLITE_BUSY, StoreUnavailable),
        (sqlite3.SQLITE_READONLY, StoreUnavailable),
        (sqlite3.SQLITE_CANTOPEN, StoreUnavailable),
        (sqlite3.SQLITE_CORRUPT, StoreError),  # not a retry's business
        (sqlite3.SQLITE_ERROR, StoreError),  # a bad statement: our bug
    ],
)
def test_each_sqlite_error_is_translated(code: int, expected: type[Exception]) -> None:
    error = sqlite3.OperationalError("from the driver")
    error.sqlite_errorcode = code
    assert type(translate_sqlite(error)) is expected

"""The embedded backend: SQLite.

WAL journal, `synchronous=FULL` (an acknowledged write survives power loss),
foreign keys on, a busy timeout. One server process owns a database file (an
exclusive lock file says so), which lets the writer keep the revision in
memory.

Reads go through a small pool of aiosqlite connections, so that a long scan
never blocks the event loop. The single writer is different: a write
transaction is a dozen statements of a few microseconds each, and a thread
hop costs about 90 µs on the 2-core machine (measured: 14 hops made a
registration 2.4 ms, 410/s), so its statements run inline on the loop and
only COMMIT — the fsync, ~0.7 ms with a 10 KB artifact — goes to a thread.

Group commit: one writer task runs the write transactions one after the
other. Each runs inside a SAVEPOINT of a shared SQLite transaction; when the
fsync of one batch is done, every transaction that queued meanwhile joins
the next batch, which commits with one fsync. Each still gets its own
revision, in order (the revision row is written once, just before the
batch's COMMIT); one that fails rolls back to its savepoint alone; none
is acknowledged before the COMMIT that makes it durable.

A full disk. A write that finds no room fails with RESOURCE_EXHAUSTED
(SQLite rolls it back), and the store turns read-only: writes are refused at
once, reads go on, and `ping()` — every second, from the server — says so,
until the disk holding the database has MIN_FREE_BYTES free again; then
writes resume by themselves. The same holds from the start: a server started
on a disk with less than that free opens read-only (the lock file, the WAL
and the revision are all read as usual; nothing is written), unless the
database must be written before it can be read at all (a new one, or
migrations to apply): then it refuses to start and says why.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import IO
from urllib.parse import quote

import aiosqlite

from ..calls import Call
from ..errors import RegistryError, ResourceExhausted, StoreUnavailable
from .base import AVAILABLE, Availability, SoleLeader, WriteCounts
from .commits import CommitListeners
from .migrations import APPLIED, SQLITE, migrate, pending
from .records import Records
from .sqlite_connections import (
    DISK_LIMIT,
    MIN_FREE_BYTES,
    Reader,
    Writer,
    free_bytes,
    translate,
)
from .timing import TimedTransactions, TransactionTimer
from .transactions import WriteConnection

log = logging.getLogger("dspy_registry.store")

READERS = 4
MAX_BATCH = 64  # transactions per COMMIT, at most
BUSY_TIMEOUT_MS = 5000
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
)


def path_from_url(url: str) -> str:
    """sqlite:///relative/path or sqlite:////absolute/path (SQLAlchemy's convention)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(f"{url!r}: expected sqlite:///relative/path or sqlite:////absolute/path")
    return url[len(prefix) :]


def applied_migrations(url: str) -> set[int]:
    """The migrations the database's ledger lists, read without writing (none for a new file)."""
    path = path_from_url(url)
    if not Path(path).exists():
        return set()
    try:
        # Read-only: a check must not create the WAL, nor wait on a server's writes.
        db = sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True)
        try:
            ledger = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
            if db.execute(ledger).fetchone() is None:
                return set()
            return {int(row[0]) for row in db.execute(APPLIED)}
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise translate(exc) from None


class SqliteStore(TimedTransactions):
    def __init__(
        self, url: str, *, readers: int = READERS, busy_timeout: float = BUSY_TIMEOUT_MS / 1000
    ) -> None:
        self.url = url
        self._busy_timeout = busy_timeout
        self.path = path_from_url(url)
        self.commits = CommitListeners()
        self.timer = TransactionTimer()
        self.writes = WriteCounts()
        self._readers_wanted = readers
        self._readers: asyncio.Queue[Reader] = asyncio.Queue()
        self._reader_dbs: list[aiosqlite.Connection] = []
        self._writer: Writer | None = None
        self._queue: asyncio.Queue[_Slot] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None
        self._fsync = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-commit")
        self._revision = 0
        self._lock_file: IO[bytes] | None = None
        self._full = ""  # why writes are refused (the disk is full); "" while they are not
        self._snapshot_readers: set[Reader] = set()  # after a read-only start: immutable readers
        self._retired: set[Reader] = set()  # snapshot readers to close when they come back
        self._closed = True  # until open() succeeds, and again after close()

    def _claim(self) -> None:
        """Refuse a second server on the same file: revisions live in this process."""
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: on a full disk the pid fails to write here, not again at close().
        self._lock_file = open(self.path + ".lock", "wb", buffering=0)  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            raise StoreUnavailable(f"{self.path} is in use by another dspy-registry server") from None
        try:
            self._lock_file.write(str(os.getpid()).encode())
            self._lock_file.flush()
        except OSError as exc:  # a full disk: the lock is what counts, the pid only tells who holds it
            log.warning("could not write the pid into %s.lock: %s", self.path, exc)

    async def open(self) -> None:
        self._claim()
        try:
            await self._open_writable()
        except RegistryError as exc:
            self._close_writer()
            if free_bytes(self.path) >= MIN_FREE_BYTES or not self._clean_on_disk():
                raise self._cannot_open(exc) from None
            # A full disk, and no WAL: SQLite cannot create the files a writable (or
            # even a plain read-only) connection needs, but the database file is whole.
            await self._open_read_only()
        else:
            free = free_bytes(self.path)
            if free < MIN_FREE_BYTES:
                self._full = self._no_room(free)
                log.warning("the store opened read-only: %s; writes resume once space is freed", self._full)
        self._closed = False

    async def _open_writable(self) -> None:
        """The writer (migrations applied), its task, and the read pool."""
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise translate(exc) from None
        self._writer = writer = Writer(db, self._noticed)
        db.row_factory = sqlite3.Row
        for pragma in PRAGMAS:
            await writer.execute(pragma)
        # The writer runs on the loop: it must never sleep in SQLite's busy
        # handler. _begin() waits out another process's lock asynchronously.
        await writer.execute("PRAGMA busy_timeout=0")
        await self._migrate(writer)
        # Each transaction of a batch is a SAVEPOINT, and SQLite copies every page it changes that
        # existed before it began into a sub-journal, to roll back to; past 64 KiB that journal went
        # to a temporary file, two pwrites a page. An auto-deploying registration changes some
        # twenty-five pages: 44 pwrites of its 74 were that file's (issue 19). In memory, the
        # journal is freed as each savepoint is released, and holds what one transaction changes
        # (maintenance deletes in bounded steps for that). Set after the migrations, whose index
        # builds may sort more than memory should hold.
        await writer.execute("PRAGMA temp_store=MEMORY")
        row = await writer.fetchrow("SELECT revision FROM revisions WHERE id = 1")
        assert row is not None
        self._revision = int(row["revision"])
        self._writer_task = asyncio.create_task(self._write_batches(writer), name="sqlite-writer")
        await self._open_readers(self.path)

    async def _open_readers(self, database: str, *, uri: bool = False) -> list[Reader]:
        opened: list[aiosqlite.Connection] = []
        try:
            for _ in range(self._readers_wanted):
                reader = await aiosqlite.connect(database, isolation_level=None, uri=uri)
                opened.append(reader)
                reader.row_factory = sqlite3.Row
                for pragma in PRAGMAS[2:]:
                    await reader.execute(pragma)
        except sqlite3.Error as exc:
            for reader in opened:
                await reader.close()
            raise translate(exc) from None
        self._reader_dbs += opened
        readers = [Reader(db) for db in opened]
        for each in readers:
            self._readers.put_nowait(each)
        return readers

    def _clean_on_disk(self) -> bool:
        """No write-ahead log with frames in it: the database file alone holds every commit."""
        wal = Path(self.path + "-wal")
        return Path(self.path).exists() and (not wal.exists() or wal.stat().st_size == 0)

    async def _open_read_only(self) -> None:
        """Readers of the database file as it is (immutable: SQLite needs no -shm to be created).

        Safe only because nothing else writes it: the lock file is ours, and the
        store refuses writes until `_become_writable()` replaces these readers.
        """
        snapshot = f"file:{quote(os.path.abspath(self.path))}?mode=ro&immutable=1"
        try:
            self._snapshot_readers = set(await self._open_readers(snapshot, uri=True))
            async with self.read() as tx:
                done = {int(r["number"]) for r in await tx.conn.fetch(APPLIED)}
                self._revision = await tx.current_revision()
        except (RegistryError, sqlite3.Error) as exc:
            raise self._cannot_open(ResourceExhausted(DISK_LIMIT, str(exc))) from None
        if pending(done):
            raise self._cannot_open(ResourceExhausted(DISK_LIMIT, "migrations to apply"))
        self._full = self._no_room(free_bytes(self.path))
        log.warning(
            "the store opened read-only, on the database file alone (no room for its WAL index): %s; "
            "writes resume once space is freed",
            self._full,
        )

    async def _become_writable(self) -> None:
        """After a read-only start: the writer, and readers that see its commits, in place of the snapshot's."""
        try:
            await self._open_writable()
        except RegistryError:
            self._close_writer()
            raise
        retired, self._snapshot_readers = self._snapshot_readers, set()
        idle = []
        while not self._readers.empty():
            idle.append(self._readers.get_nowait())
        for reader in idle:
            if reader in retired:
                await self._retire(reader)
            else:
                self._readers.put_nowait(reader)
        self._retired |= retired - set(idle)  # in use now: closed as they come back

    async def _retire(self, reader: Reader) -> None:
        if reader.db in self._reader_dbs:  # else close() has closed it already
            self._reader_dbs.remove(reader.db)
            await reader.db.close()

    def _cannot_open(self, exc: RegistryError) -> RegistryError:
        if isinstance(exc, ResourceExhausted) or free_bytes(self.path) < MIN_FREE_BYTES:
            return ResourceExhausted(
                DISK_LIMIT,
                f"cannot open {self.path}: {self._no_room(free_bytes(self.path))}, and the database "
                "must be written before it can be served (a new database, migrations to apply, or "
                "a write-ahead log to index); free some space and start again",
            )
        return StoreUnavailable(f"cannot open {self.path}: {exc.message}")

    def _close_writer(self) -> None:
        if self._writer_task is not None:
            self._writer_task.cancel()  # it has not run yet: nothing is queued before open() returns
            self._writer_task = None
        if self._writer is not None:
            self._writer.db.close()
            self._writer = None

    def _no_room(self, free: int) -> str:
        return f"the disk holding {self.path} is full ({free} bytes free, {MIN_FREE_BYTES} needed)"

    def _noticed(self, error: RegistryError) -> None:
        """A failure of the writer: on a full disk, the store turns read-only until there is room."""
        if isinstance(error, ResourceExhausted) and not self._full:
            self._full = self._no_room(free_bytes(self.path))

    async def _migrate(self, conn: Writer) -> None:
        await migrate(conn, SQLITE, lambda: self._migration_transaction(conn))

    @asynccontextmanager
    async def _migration_transaction(self, conn: Writer) -> AsyncIterator[None]:
        """Each migration in its own transaction, begun as every write is (another process's lock waited out)."""
        await self._begin(conn)
        try:
            yield
            await conn.execute("COMMIT")
        except BaseException:
            _rollback_quietly(conn.db)  # SQLite may have rolled back already (a full disk)
            raise

    async def close(self) -> None:
        self._closed = True
        if self._writer_task is not None:
            await self._queue.join()  # acknowledged or failed: every queued write is finished
            self._writer_task.cancel()
            await asyncio.gather(self._writer_task, return_exceptions=True)
            self._writer_task = None
        for reader in self._reader_dbs:
            await reader.close()
        self._reader_dbs.clear()
        if self._writer is not None:
            self._writer.db.close()
            self._writer = None
        self._fsync.shutdown(wait=True)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[Records]:
        reader = await self._readers.get()
        try:
            yield Records(reader)
        finally:
            if reader in self._retired:  # a read-only start's snapshot reader: the writer is back
                self._retired.discard(reader)
                await self._retire(reader)
            else:
                self._readers.put_nowait(reader)

    def leader_lock(self, replica: str, lost: Callable[[], None]) -> SoleLeader:
        """One server per file (`_claim`): it is the leader."""
        return SoleLeader(replica)

    async def ping(self, timeout: float) -> Availability:
        """A read through the read pool within `timeout`; and whether writes are refused for room."""
        if self._closed:
            return Availability(readable=False, writable=False, detail="the store is closed")
        if self._writer_task is not None and self._writer_task.done():
            return Availability(False, False, "the writer task stopped")  # a bug: the log has it
        try:
            async with asyncio.timeout(timeout):
                async with self._read() as tx:  # not timed: a probe is no caller's transaction
                    await tx.current_revision()
        except TimeoutError:
            return Availability(False, False, f"{self.path} did not answer a read within {timeout:g}s")
        except RegistryError as exc:
            return Availability(False, False, f"{self.path} cannot be read: {exc.message}")
        # The server's health monitor logs the changes this makes (server/store_health.py).
        free = free_bytes(self.path)
        if self._full and free >= MIN_FREE_BYTES:
            try:
                if self._writer is None:
                    await self._become_writable()
                self._full = ""
            except RegistryError as exc:
                log.warning("still read-only: the writer cannot be opened yet: %s", exc.message)
        elif not self._full and free < MIN_FREE_BYTES:
            self._full = self._no_room(free)
        if self._full:
            return Availability(True, False, f"the store is read-only: {self._full}")
        return AVAILABLE

    def _write(self, call: Call | None = None) -> AbstractAsyncContextManager[Records]:
        return self._unit(_Slot(call))

    def _telemetry(self) -> AbstractAsyncContextManager[Records]:
        # SQLite has one writer: telemetry joins its queue like any write, without a revision.
        return self._unit(_Slot(None, revisioned=False))

    @asynccontextmanager
    async def _unit(self, slot: _Slot) -> AsyncIterator[Records]:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        if self._full or self._writer_task is None:
            raise ResourceExhausted(
                DISK_LIMIT, f"the store is read-only: {self._full}; writes resume once space is freed"
            )
        self._queue.put_nowait(slot)
        try:
            records = await slot.granted
        except BaseException:
            if slot.granted.done() and not slot.granted.cancelled():
                slot.finished.set_result(False)  # granted as we were cancelled: hand it back
            else:
                slot.granted.cancel()
            raise
        try:
            yield records
            await records.finish()
        except BaseException:
            slot.finished.set_result(False)
            raise
        slot.finished.set_result(True)
        # Shielded: the batch commits whether or not this caller is still waiting.
        await asyncio.shield(slot.durable)

    async def _write_batches(self, writer: Writer) -> None:
        """The writer task: BEGIN, run queued transactions as savepoints, COMMIT once.

        Whatever fails, the waiting callers get the error and the task goes on
        to the next batch; it ends only when the store closes.
        """
        while True:
            slot = await self._queue.get()
            batch: list[tuple[_Slot, Records]] = []
            committed_revision = self._revision
            try:
                await self._begin(writer)
                while True:
                    if not slot.granted.cancelled():
                        records = await self._run_unit(writer, slot)
                        if records is not None:
                            if slot.revisioned:
                                self._revision = records.revision
                            batch.append((slot, records))
                    if self._queue.empty() or len(batch) >= MAX_BATCH:
                        break
                    self._queue.task_done()
                    slot = self._queue.get_nowait()
                if self._revision != committed_revision:
                    # The batch's last revision, once: its transactions' revisions commit together.
                    await writer.execute("UPDATE revisions SET revision = ? WHERE id = 1", self._revision)
                # The executor itself, not loop.run_in_executor: uvloop's inspects the function
                # (is it a coroutine function?) on every call, a percent of a registration's time.
                await asyncio.wrap_future(self._fsync.submit(writer.db.execute, "COMMIT"))
            except BaseException as exc:
                _rollback_quietly(writer.db)
                self._revision = committed_revision
                if isinstance(exc, RegistryError):
                    error: RegistryError = exc
                elif isinstance(exc, sqlite3.Error):
                    error = writer.failed(exc)
                else:
                    error = StoreUnavailable(f"write failed: {exc!r}")
                for waiting in [w for w, _ in batch] + [slot]:
                    for future in (waiting.granted, waiting.durable):
                        if not future.done():
                            future.set_exception(error)
                self._queue.task_done()
                if isinstance(exc, asyncio.CancelledError):
                    raise
                if not isinstance(exc, RegistryError | sqlite3.Error):
                    log.exception("sqlite writer: unexpected error; the batch was rolled back")
                continue
            for waiting, records in batch:
                records.committed()
                waiting.durable.set_result(None)
                if waiting.revisioned:
                    self.writes.revisioned += 1
                else:
                    self.writes.telemetry += 1
            self._queue.task_done()
            for _, records in batch:
                self.commits.publish(records.appended)

    async def _begin(self, writer: Writer) -> None:
        """BEGIN IMMEDIATE without blocking the loop: another process's lock is waited out here."""
        deadline = time.monotonic() + self._busy_timeout
        delay = 0.001
        while True:
            try:
                writer.db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise StoreUnavailable(
                        f"{self.path} stayed locked by another connection for {self._busy_timeout:g}s"
                    ) from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def _run_unit(self, writer: Writer, slot: _Slot) -> Records | None:
        """Run one transaction in a savepoint; its records if it succeeded, else None."""
        await writer.execute("SAVEPOINT unit")
        unit = WriteConnection(writer, lambda: writer.db.in_transaction)
        records = Records(
            unit,
            base_revision=self._revision if slot.revisioned else None,
            call=slot.call,
            revision_row=False,  # _write_batches writes it once per batch
        )
        slot.granted.set_result(records)
        succeeded = await slot.finished
        if not writer.db.in_transaction:
            # SQLite rolled the shared transaction back (a full disk, an I/O error):
            # the units before this one in the batch are gone too, and all of them fail.
            raise unit.failure or StoreUnavailable("the database rolled the write transaction back")
        if not succeeded or unit.failure is not None:
            await writer.execute("ROLLBACK TO unit")
        await writer.execute("RELEASE unit")
        if not succeeded:
            slot.durable.set_result(None)  # nobody awaits it; a failed unit was never acknowledged
            return None
        if unit.failure is not None:
            # Its caller went on after a failed statement: it hears of the failure, not of a commit.
            slot.durable.set_exception(unit.failure)
            return None
        return records


def _rollback_quietly(db: sqlite3.Connection) -> None:
    try:
        if db.in_transaction:
            db.execute("ROLLBACK")
    except sqlite3.Error:
        log.exception("sqlite writer: ROLLBACK failed")


class _Slot:
    """One write transaction's handshake with the writer task."""

    def __init__(self, call: Call | None, *, revisioned: bool = True) -> None:
        self.call = call  # the call it serves, for its audit event
        self.revisioned = revisioned  # False: telemetry, which takes no revision
        loop = asyncio.get_running_loop()
        self.granted: asyncio.Future[Records] = loop.create_future()
        self.finished: asyncio.Future[bool] = loop.create_future()
        self.durable: asyncio.Future[None] = loop.create_future()

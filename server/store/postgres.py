"""The scale-out backend: PostgreSQL through an asyncpg pool.

Every write transaction starts by locking the single `revisions` row
(`SELECT … FOR UPDATE`), so writes serialize across all replicas and
revisions commit in the order they are taken — a bare sequence could commit
out of order and a watcher reading "events after N" would miss one. Inside
one process, writers queue on an asyncio lock for the one connection kept for
writes, so that waiting writers never hold pooled connections reads need.

Replicas learn of each other's commits through LISTEN/NOTIFY: a write sends
`NOTIFY` with its revision inside its transaction (delivered only if it
commits), and every replica then reads the events after the last revision it
delivered from the event log and hands them, in order, to its commit
listeners. If the listening connection drops, listeners are told to forget
everything (`reset`) until it is back.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any, TypeVar

import asyncpg

from ..domain.model import Event
from ..errors import Aborted, RegistryError, StoreError, StoreUnavailable
from .commits import CommitListeners
from .migrations import CREATE_LEDGER, MIGRATIONS, POSTGRES, render
from .records import Records
from .sql import Row, now_us

log = logging.getLogger("dspy_registry.store")

T = TypeVar("T")

# Any constant: serializes migrations when several replicas start at once.
_MIGRATION_LOCK = 0x64737079
CHANNEL = "dspy_registry_commits"
RECONNECT_SECONDS = 1.0


@lru_cache(maxsize=512)
def _numbered(sql: str) -> str:
    """Rewrite `?` placeholders as `$1, $2, …` (the SQL here has no `?` in literals)."""
    counter = iter(range(1, 1000))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


def _translate(exc: BaseException) -> RegistryError:
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        return Aborted(f"conflicting concurrent change: {exc}")
    if isinstance(exc, asyncpg.SerializationError | asyncpg.DeadlockDetectedError):
        return Aborted(f"transaction conflict, retry: {exc}")
    if isinstance(exc, asyncpg.QueryCanceledError):
        return StoreUnavailable(f"statement cancelled or timed out: {exc}")
    if isinstance(exc, asyncpg.PostgresError):
        return StoreError(f"postgres: {exc}")
    return StoreUnavailable(f"postgres unreachable: {exc}")


_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


async def _driver(call: Awaitable[T]) -> T:
    """Await a driver call; its exceptions leave as the store's own."""
    try:
        return await call
    except _DRIVER_ERRORS as exc:
        raise _translate(exc) from None


class _Connection:
    """Adapts an asyncpg connection to records.Connection."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def fetch(self, sql: str, *args: Any) -> Sequence[Row]:
        rows: Sequence[Row] = await _driver(self.conn.fetch(_numbered(sql), *args))
        return rows

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        row: Row | None = await _driver(self.conn.fetchrow(_numbered(sql), *args))
        return row

    async def execute(self, sql: str, *args: Any) -> None:
        await _driver(self.conn.execute(_numbered(sql), *args))

    async def executemany(self, sql: str, args: list[tuple[Any, ...]]) -> None:
        if args:
            await _driver(self.conn.executemany(_numbered(sql), args))


class PostgresStore:
    def __init__(self, url: str, *, min_size: int = 2, max_size: int = 16) -> None:
        self.url = url
        self.commits = CommitListeners()
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._write_lock = asyncio.Lock()
        self._writer: asyncpg.Connection | None = None
        self._delivered = 0  # the last revision handed to the commit listeners
        self._delivery_lock = asyncio.Lock()
        self._listener: asyncpg.Connection | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        pool = await _driver(asyncpg.create_pool(self.url, min_size=self._min_size, max_size=self._max_size))
        self._pool = pool
        async with pool.acquire() as raw:
            await self._migrate(_Connection(raw), raw)
            row = await _Connection(raw).fetchrow("SELECT revision FROM revisions WHERE id = 1")
            assert row is not None
            self._delivered = int(row["revision"])
        await self._listen()
        self._listen_task = asyncio.create_task(self._keep_listening(), name="postgres-listen")

    async def _migrate(self, conn: _Connection, raw: asyncpg.Connection) -> None:
        async with raw.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(?)", _MIGRATION_LOCK)
            await conn.execute(CREATE_LEDGER)
            done = {int(r["number"]) for r in await conn.fetch("SELECT number FROM schema_migrations")}
            for migration in MIGRATIONS:
                if migration.number in done:
                    continue
                for statement in migration.statements:
                    await conn.execute(render(statement, POSTGRES))
                await conn.execute(
                    "INSERT INTO schema_migrations (number, name, applied_time) VALUES (?, ?, ?)",
                    migration.number,
                    migration.name,
                    now_us(),
                )

    async def close(self) -> None:
        if self._listen_task is not None:
            self._listen_task.cancel()
            await asyncio.gather(self._listen_task, return_exceptions=True)
            self._listen_task = None
        if self._listener is not None:
            await asyncio.gather(self._listener.close(), return_exceptions=True)
            self._listener = None
        async with self._write_lock:  # let the write in progress finish
            if self._pending:
                await asyncio.gather(*self._pending, return_exceptions=True)
            if self._writer is not None:
                await asyncio.gather(self._writer.close(), return_exceptions=True)
                self._writer = None
            if self._pool is not None:
                await self._pool.close()
                self._pool = None

    def _require_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("the store is closed")
        return self._pool

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Records]:
        pool = self._require_pool()
        raw = await _driver(pool.acquire())
        try:
            yield Records(_Connection(raw))
        finally:
            await asyncio.shield(_driver(pool.release(raw)))

    async def _writer_connection(self) -> asyncpg.Connection:
        if self._writer is None or self._writer.is_closed():
            self._writer = await _driver(asyncpg.connect(self.url))
        return self._writer

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Records]:
        self._require_pool()
        async with self._write_lock:
            raw = await self._writer_connection()
            transaction = raw.transaction()
            conn = _Connection(raw)
            try:
                await _driver(transaction.start())
                row = await conn.fetchrow("SELECT revision FROM revisions WHERE id = 1 FOR UPDATE")
                assert row is not None
                records = Records(conn, base_revision=int(row["revision"]))
                yield records
                await records.finish()
                if records.appended:
                    await conn.execute("SELECT pg_notify(?, ?)", CHANNEL, str(records.revision))
            except BaseException:
                await asyncio.shield(self._abandon(raw, transaction))
                raise
            # Shielded: a cancelled caller must neither leave the commit half-done
            # nor keep the listeners (the read cache) from hearing of it.
            await asyncio.shield(self._finish(transaction, records))

    async def _abandon(self, raw: asyncpg.Connection, transaction: Any) -> None:
        try:
            await _driver(transaction.rollback())
        except RegistryError:
            log.warning("rollback failed; reconnecting the writer", exc_info=True)
            await asyncio.gather(raw.close(), return_exceptions=True)

    async def _finish(self, transaction: Any, records: Records) -> None:
        await _driver(transaction.commit())
        records.committed()
        if records.appended:
            await self._deliver(records.revision, records.appended)

    async def _deliver(self, revision: int, own: Sequence[Event] = ()) -> None:
        """Hand every committed event up to `revision` to the listeners, once, in order."""
        async with self._delivery_lock:
            if revision <= self._delivered:
                return
            if own and own[0].revision == self._delivered + 1 and own[-1].revision == revision:
                self.commits.publish(own)  # nothing from other replicas came in between
                self._delivered = revision
                return
            while self._delivered < revision:
                async with self.read() as tx:
                    events = await tx.events_after(self._delivered, limit=1000)
                if not events:
                    break
                for group in _by_revision(events):
                    self.commits.publish(group)
                self._delivered = events[-1].revision

    async def _listen(self) -> None:
        listener = await _driver(asyncpg.connect(self.url))
        listener.add_termination_listener(lambda _: self._lost())
        await _driver(listener.add_listener(CHANNEL, self._notified))
        self._listener = listener

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        task = asyncio.ensure_future(self._deliver_logged(int(payload)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _deliver_logged(self, revision: int) -> None:
        try:
            await self._deliver(revision)
        except RegistryError:
            log.warning("could not read the event log after revision %d; caches reset", revision)
            self.commits.reset()

    def _lost(self) -> None:
        log.warning("lost the LISTEN connection; caches reset until it is back")
        self._listener = None
        self.commits.reset()

    async def _keep_listening(self) -> None:
        """Reconnect the listener when it drops; catch up from the log when it is back."""
        while True:
            await asyncio.sleep(RECONNECT_SECONDS)
            if self._listener is not None and not self._listener.is_closed():
                continue
            try:
                await self._listen()
                async with self.read() as tx:
                    current = await tx.current_revision()
                await self._deliver(current)
                self.commits.reset()  # anything cached while deaf may be stale
                log.info("LISTEN connection restored")
            except RegistryError:
                log.warning("LISTEN connection still down", exc_info=True)


def _by_revision(events: Sequence[Event]) -> list[list[Event]]:
    groups: list[list[Event]] = []
    for event in events:
        if groups and groups[-1][0].revision == event.revision:
            groups[-1].append(event)
        else:
            groups.append([event])
    return groups

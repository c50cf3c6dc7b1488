"""The scale-out backend: PostgreSQL through an asyncpg pool.

Every write transaction starts by locking the single `revisions` row
(`SELECT … FOR UPDATE`), so writes serialize across all replicas and
revisions commit in the order they are taken — a bare sequence could commit
out of order and a watcher reading "events after N" would miss one.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any

import asyncpg

from ..errors import Aborted, RegistryError, StoreError, StoreUnavailable
from .commits import CommitListeners
from .migrations import CREATE_LEDGER, MIGRATIONS, POSTGRES, render
from .records import Records, Row, now_us

# Any constant: serializes migrations when several replicas start at once.
_MIGRATION_LOCK = 0x64737079


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


class _Connection:
    """Adapts an asyncpg connection to records.Connection."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def fetch(self, sql: str, *args: Any) -> Sequence[Row]:
        try:
            rows: Sequence[Row] = await self.conn.fetch(_numbered(sql), *args)
            return rows
        except _DRIVER_ERRORS as exc:
            raise _translate(exc) from None

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        try:
            row: Row | None = await self.conn.fetchrow(_numbered(sql), *args)
            return row
        except _DRIVER_ERRORS as exc:
            raise _translate(exc) from None

    async def execute(self, sql: str, *args: Any) -> None:
        try:
            await self.conn.execute(_numbered(sql), *args)
        except _DRIVER_ERRORS as exc:
            raise _translate(exc) from None

    async def executemany(self, sql: str, args: list[tuple[Any, ...]]) -> None:
        if not args:
            return
        try:
            await self.conn.executemany(_numbered(sql), args)
        except _DRIVER_ERRORS as exc:
            raise _translate(exc) from None


class PostgresStore:
    def __init__(self, url: str, *, min_size: int = 2, max_size: int = 16) -> None:
        self.url = url
        self.commits = CommitListeners()
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(self.url, min_size=self._min_size, max_size=self._max_size)
        except _DRIVER_ERRORS as exc:
            raise _translate(exc) from None
        async with self._pool.acquire() as raw:
            await self._migrate(_Connection(raw), raw)

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
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Records]:
        assert self._pool is not None, "store is not open"
        try:
            raw = await self._pool.acquire()
        except _DRIVER_ERRORS as exc:
            raise _translate(exc) from None
        try:
            yield Records(_Connection(raw))
        finally:
            await self._pool.release(raw)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Records]:
        assert self._pool is not None, "store is not open"
        try:
            raw = await self._pool.acquire()
        except _DRIVER_ERRORS as exc:
            raise _translate(exc) from None
        try:
            conn = _Connection(raw)
            transaction = raw.transaction()
            await transaction.start()
            try:
                row = await conn.fetchrow("SELECT revision FROM revisions WHERE id = 1 FOR UPDATE")
                assert row is not None
                records = Records(conn, base_revision=int(row["revision"]))
                yield records
            except BaseException:
                await transaction.rollback()
                raise
            try:
                await transaction.commit()
            except _DRIVER_ERRORS as exc:
                raise _translate(exc) from None
        finally:
            await self._pool.release(raw)
        self.commits.publish(records.appended)

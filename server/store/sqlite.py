"""The embedded backend: SQLite through aiosqlite.

WAL journal, `synchronous=FULL` (an acknowledged write survives power loss),
foreign keys on, a busy timeout. Writes go through one connection under an
asyncio lock, so transactions are serialized and revisions commit in order;
reads use a small pool of their own connections, which WAL lets run beside
the writer.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from ..errors import Aborted, RegistryError, StoreError, StoreUnavailable
from .migrations import CREATE_LEDGER, MIGRATIONS, SQLITE, render
from .records import Records, Row, now_us

READERS = 4
BUSY_TIMEOUT_MS = 5000


def path_from_url(url: str) -> str:
    """sqlite:///relative/path or sqlite:////absolute/path (SQLAlchemy's convention)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(f"{url!r}: expected sqlite:///relative/path or sqlite:////absolute/path")
    return url[len(prefix) :]


def _translate(exc: sqlite3.Error) -> RegistryError:
    if isinstance(exc, sqlite3.IntegrityError):
        return Aborted(f"conflicting concurrent change: {exc}")
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return StoreUnavailable(f"database is busy: {exc}")
    return StoreError(f"sqlite: {exc}")


class _Connection:
    """Adapts an aiosqlite connection to records.Connection; one thread hop per call."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def fetch(self, sql: str, *args: Any) -> Sequence[Row]:
        try:
            return list(await self.db.execute_fetchall(sql, args))
        except sqlite3.Error as exc:
            raise _translate(exc) from None

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def execute(self, sql: str, *args: Any) -> None:
        await self.fetch(sql, *args)

    async def executemany(self, sql: str, args: list[tuple[Any, ...]]) -> None:
        if not args:
            return
        try:
            await self.db.executemany(sql, args)
        except sqlite3.Error as exc:
            raise _translate(exc) from None


class SqliteStore:
    def __init__(self, url: str, *, readers: int = READERS) -> None:
        self.url = url
        self.path = path_from_url(url)
        self._readers_wanted = readers
        self._writer: _Connection | None = None
        self._write_lock = asyncio.Lock()
        self._readers: asyncio.Queue[_Connection] = asyncio.Queue()
        self._all: list[aiosqlite.Connection] = []

    async def _connect(self) -> _Connection:
        try:
            db = await aiosqlite.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from None
        db.row_factory = sqlite3.Row
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("PRAGMA foreign_keys=ON")
        await db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self._all.append(db)
        return _Connection(db)

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._connect()
        await self._migrate(self._writer)
        for _ in range(self._readers_wanted):
            self._readers.put_nowait(await self._connect())

    async def _migrate(self, conn: _Connection) -> None:
        await conn.execute(CREATE_LEDGER)
        done = {int(r["number"]) for r in await conn.fetch("SELECT number FROM schema_migrations")}
        for migration in MIGRATIONS:
            if migration.number in done:
                continue
            await conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in migration.statements:
                    await conn.execute(render(statement, SQLITE))
                await conn.execute(
                    "INSERT INTO schema_migrations (number, name, applied_time) VALUES (?, ?, ?)",
                    migration.number,
                    migration.name,
                    now_us(),
                )
                await conn.execute("COMMIT")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        async with self._write_lock:
            for db in self._all:
                await db.close()
            self._all.clear()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Records]:
        conn = await self._readers.get()
        try:
            yield Records(conn)
        finally:
            self._readers.put_nowait(conn)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Records]:
        assert self._writer is not None, "store is not open"
        conn = self._writer
        async with self._write_lock:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                row = await conn.fetchrow("SELECT revision FROM revisions WHERE id = 1")
                assert row is not None
                yield Records(conn, base_revision=int(row["revision"]))
            except BaseException:
                await asyncio.shield(conn.execute("ROLLBACK"))
                raise
            await asyncio.shield(conn.execute("COMMIT"))

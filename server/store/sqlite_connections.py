"""The SQLite backend's connections, and what its errors mean to a caller.

`translate` turns each sqlite3 error into one of the store's own: a full disk
is ResourceExhausted, a file that cannot be used right now (busy, an I/O
error, read-only, cannot be opened) StoreUnavailable, a constraint Aborted;
the rest — a bad statement, a corrupt file — StoreError.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from ..errors import Aborted, RegistryError, ResourceExhausted, StoreError, StoreUnavailable
from .sql import Row

DISK_LIMIT = "database_disk"
# Below this much free space the store is read-only: writes are refused rather than
# tried on a disk where they would fail, and resume once this much is free again.
MIN_FREE_BYTES = 1 << 20
# Result codes that say the database file cannot be used right now, not that a statement was wrong.
_UNAVAILABLE = {
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_NOMEM,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_INTERRUPT,
    sqlite3.SQLITE_PROTOCOL,
}


def translate(exc: sqlite3.Error) -> RegistryError:
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None  # the extended code's low byte
    if isinstance(exc, sqlite3.IntegrityError):
        return Aborted(f"conflicting concurrent change: {exc}")
    if primary == sqlite3.SQLITE_FULL:
        return ResourceExhausted(DISK_LIMIT, f"the database's disk is full: {exc}")
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StoreUnavailable(f"database is busy: {exc}")
    if primary in _UNAVAILABLE:
        return StoreUnavailable(f"sqlite unavailable: {exc}")
    return StoreError(f"sqlite: {exc}")  # a bad statement, or a corrupt file: not a retry's business


def free_bytes(path: str) -> int:
    """Free space, for an unprivileged user, on the file system holding `path`."""
    stats = os.statvfs(Path(path).parent)
    return stats.f_bavail * stats.f_frsize


class Reader:
    """An aiosqlite connection as a records.Connection: one thread hop per call."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def fetch(self, sql: str, *args: Any) -> Sequence[Row]:
        try:
            return list(await self.db.execute_fetchall(sql, args))
        except sqlite3.Error as exc:
            raise translate(exc) from None

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def execute(self, sql: str, *args: Any) -> None:
        await self.fetch(sql, *args)

    async def executemany(self, sql: str, args: list[tuple[Any, ...]]) -> None:
        raise StoreError("the read pool does not write")


class Writer:
    """The writer's sqlite3 connection as a records.Connection, run inline on the loop."""

    def __init__(self, db: sqlite3.Connection, noticed: Callable[[RegistryError], None]) -> None:
        self.db = db
        self.noticed = noticed  # told of each failure (the store turns read-only on a full disk)

    def failed(self, exc: sqlite3.Error) -> RegistryError:
        error = translate(exc)
        self.noticed(error)
        return error

    # Each statement catches sqlite3's errors itself, rather than through a shared context manager:
    # a registration runs some thirty statements, and the context manager's generator cost more
    # than most of them.

    async def fetch(self, sql: str, *args: Any) -> Sequence[Row]:
        try:
            return self.db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise self.failed(exc) from None

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        try:
            row: Row | None = self.db.execute(sql, args).fetchone()
        except sqlite3.Error as exc:
            raise self.failed(exc) from None
        return row

    async def execute(self, sql: str, *args: Any) -> None:
        try:
            self.db.execute(sql, args)
        except sqlite3.Error as exc:
            raise self.failed(exc) from None

    async def executemany(self, sql: str, args: list[tuple[Any, ...]]) -> None:
        if not args:
            return
        try:
            self.db.executemany(sql, args)
        except sqlite3.Error as exc:
            raise self.failed(exc) from None

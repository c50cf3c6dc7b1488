"""A write transaction's connection, for both backends: one failed statement spoils the transaction.

A caller may catch a failed statement and go on (auto-deploy does, to skip an
environment that refuses). What it goes on with must not commit without the
part that failed: PostgreSQL refuses every later statement and turns the
COMMIT into a silent ROLLBACK, so the caller would be told of a success that
never happened; SQLite may roll the whole transaction back on SQLITE_FULL or
an I/O error, so later statements would commit one by one. Here, after a
failure, every statement raises that same failure again, and the store checks
`failure` before it commits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import RegistryError, StoreUnavailable
from .sql import Connection, Row


class WriteConnection:
    """Wraps a backend connection (a records.Connection) for one write transaction."""

    def __init__(self, conn: Connection, in_transaction: Callable[[], bool] | None = None) -> None:
        self.conn = conn
        self._in_transaction = in_transaction  # None: the backend says so itself
        self.failure: RegistryError | None = None

    def _check(self) -> None:
        if self.failure is None and self._in_transaction is not None and not self._in_transaction():
            self.failure = StoreUnavailable("the database rolled this write transaction back after an error")
        if self.failure is not None:
            raise self.failure

    def _failed(self, exc: RegistryError) -> RegistryError:
        self.failure = exc
        return exc

    async def fetch(self, sql: str, *args: Any) -> Sequence[Row]:
        self._check()
        try:
            return await self.conn.fetch(sql, *args)
        except RegistryError as exc:
            raise self._failed(exc) from None

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        self._check()
        try:
            return await self.conn.fetchrow(sql, *args)
        except RegistryError as exc:
            raise self._failed(exc) from None

    async def execute(self, sql: str, *args: Any) -> None:
        self._check()
        try:
            await self.conn.execute(sql, *args)
        except RegistryError as exc:
            raise self._failed(exc) from None

    async def executemany(self, sql: str, args: list[tuple[Any, ...]]) -> None:
        self._check()
        try:
            await self.conn.executemany(sql, args)
        except RegistryError as exc:
            raise self._failed(exc) from None

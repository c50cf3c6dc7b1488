"""The backend a database URL names: sqlite:///path or postgresql://…

Apart from base.py, which both backends import for the Store protocol: base.py picking them would
make each backend and base.py import one another. A backend's module (and its driver) is imported
only when a URL asks for it.
"""

from __future__ import annotations

import asyncio

from .base import Store


def backend(url: str) -> str:
    """`sqlite` or `postgres`, by the URL's scheme; ValueError naming any other URL."""
    if url.startswith("sqlite://"):
        return "sqlite"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgres"
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///path or postgresql://…")


def open_store(url: str) -> Store:
    """Pick the backend by URL scheme: sqlite:///path or postgresql://…"""
    if backend(url) == "sqlite":
        from .sqlite import SqliteStore

        return SqliteStore(url)
    from .postgres import PostgresStore

    return PostgresStore(url)


async def applied_migrations(url: str) -> set[int]:
    """The schema migrations the database at `url` has applied (its ledger), applying none."""
    if backend(url) == "sqlite":
        from .sqlite import applied_migrations as applied_sqlite

        return await asyncio.to_thread(applied_sqlite, url)
    from .postgres import applied_migrations as applied_postgres

    return await applied_postgres(url)

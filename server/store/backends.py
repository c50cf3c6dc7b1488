"""The backend a database URL names: sqlite:///path or postgresql://…

Apart from base.py, which both backends import for the Store protocol: base.py picking them would
make each backend and base.py import one another. A backend's module (and its driver) is imported
only when a URL asks for it.
"""

from __future__ import annotations

from .base import Store


def open_store(url: str) -> Store:
    """Pick the backend by URL scheme: sqlite:///path or postgresql://…"""
    if url.startswith("sqlite://"):
        from .sqlite import SqliteStore

        return SqliteStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///path or postgresql://…")

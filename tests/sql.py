"""Statements run on a test's database behind the server's back, on a connection of the test's own."""

from __future__ import annotations

import sqlite3

import asyncpg

from dspy_registry.server.store.sqlite import path_from_url


async def execute(url: str, *statements: str) -> None:
    """Run `statements` in order on the SQLite file or PostgreSQL database `url` names."""
    if url.startswith("sqlite"):
        db = sqlite3.connect(path_from_url(url))
        try:
            with db:
                for statement in statements:
                    db.execute(statement)
        finally:
            db.close()
        return
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()

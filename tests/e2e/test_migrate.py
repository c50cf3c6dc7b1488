"""`dspy-registry migrate` on both backends, and a server that refuses a schema newer than it knows."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from pathlib import Path

import asyncpg
import pytest

from dspy_registry.server.store import migrations
from dspy_registry.server.store.backends import open_store
from dspy_registry.server.store.migrations import MIGRATIONS
from dspy_registry.server.store.sqlite import path_from_url
from tests.e2e.conftest import SERVE, free_port
from tests.sql import execute

LATEST = MIGRATIONS[-1]


async def _dspy_registry(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [str(SERVE), *args], capture_output=True, text=True, timeout=60
    )


async def test_migrate_check_then_apply_then_nothing_pending(database_url: str) -> None:
    check = await _dspy_registry("migrate", "--database", database_url, "--check")
    assert check.returncode == 3, check.stderr
    assert f"pending 1: {MIGRATIONS[0].name}" in check.stdout
    assert f"{len(MIGRATIONS)} pending; this release's schema is version {LATEST.number}" in check.stdout

    applied = await _dspy_registry("migrate", "--database", database_url)
    assert applied.returncode == 0, applied.stderr
    assert f"applying {LATEST.number}: {LATEST.name}" in applied.stdout
    assert applied.stdout.rstrip().endswith(f"the schema is at version {LATEST.number}")

    again = await _dspy_registry("migrate", "--database", database_url, "--check")
    assert (again.returncode, again.stdout.splitlines()[0]) == (
        0,
        f"0 pending; this release's schema is version {LATEST.number}",
    )


async def _previous_release(url: str, monkeypatch: pytest.MonkeyPatch, before: int = LATEST.number) -> None:
    """The database as a release before this one left it: the migrations numbered below `before` applied."""
    with monkeypatch.context() as patch:
        patch.setattr(migrations, "MIGRATIONS", tuple(m for m in MIGRATIONS if m.number < before))
        store = open_store(url)
        await store.open()
        await store.close()


async def test_migrate_applies_only_what_is_pending(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _previous_release(database_url, monkeypatch)
    check = await _dspy_registry("migrate", "--database", database_url, "--check")
    assert check.returncode == 3 and check.stdout.splitlines()[0] == f"pending {LATEST.number}: {LATEST.name}"
    applied = await _dspy_registry("migrate", "--database", database_url)
    assert applied.returncode == 0, applied.stderr
    assert [line for line in applied.stdout.splitlines() if line.startswith("applying")] == [
        f"applying {LATEST.number}: {LATEST.name}"
    ]
    assert (await _dspy_registry("migrate", "--database", database_url, "--check")).returncode == 0


async def _fetch(url: str, query: str) -> list[tuple[object, ...]]:
    if url.startswith("sqlite"):
        db = sqlite3.connect(path_from_url(url))
        try:
            return [tuple(row) for row in db.execute(query)]
        finally:
            db.close()
    conn = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await conn.fetch(query)]
    finally:
        await conn.close()


async def test_migration_12_keeps_each_webhooks_secret_as_its_first(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _previous_release(database_url, monkeypatch, before=12)
    # One secret per webhook, in the webhook's row, as the release before kept it.
    await execute(
        database_url,
        "INSERT INTO webhooks (name, url, event_kinds, selectors, secret, description, creator, create_time, "
        "revision) VALUES ('oncall', 'https://8.8.8.8/', '[]', '[]', 'kept-secret', '', 'admin', 7, 1)",
    )
    assert (await _dspy_registry("migrate", "--database", database_url)).returncode == 0
    assert await _fetch(database_url, "SELECT webhook, id, secret, create_time FROM webhook_secrets") == [
        ("oncall", "initial", "kept-secret", 7)
    ]
    assert await _fetch(database_url, "SELECT secret FROM webhooks") == [("",)]


async def test_a_schema_newer_than_the_release_is_refused_naming_both_versions(
    database_url: str, tmp_path: Path
) -> None:
    assert (await _dspy_registry("migrate", "--database", database_url)).returncode == 0
    newer = LATEST.number + 1
    await execute(
        database_url,
        f"INSERT INTO schema_migrations (number, name, applied_time) VALUES ({newer}, 'from a later release', 0)",
    )
    said = f"the database's schema is at version {newer}, newer than this release knows (version {LATEST.number})"
    for args in (("--check",), ()):
        refused = await _dspy_registry("migrate", "--database", database_url, *args)
        assert refused.returncode == 1 and said in refused.stderr, refused.stderr

    listen = f"127.0.0.1:{free_port()}"
    token = str(tmp_path / "admin.token")
    serve = await _dspy_registry(
        "serve", "--database", database_url, "--listen", listen, "--admin-token-file", token
    )
    assert serve.returncode == 1
    assert "cannot start" in serve.stderr and said in serve.stderr, serve.stderr

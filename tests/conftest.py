"""Shared fixtures: a fresh store per test on SQLite and on Postgres.

Postgres tests never skip silently: when the server at 127.0.0.1:5432 cannot
be reached they fail, unless DSPY_REGISTRY_SKIP_POSTGRES=1 says, out loud,
to leave them out (CI never sets it).
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from _pytest.nodeid import NodeId

from dspy_registry.server.store.backends import open_store
from dspy_registry.server.store.base import Store
from dspy_registry.server.store.postgres import PostgresStore
from dspy_registry.server.store.sqlite import SqliteStore

PG_ADMIN_URL = os.environ.get("DSPY_REGISTRY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
SKIP_POSTGRES = os.environ.get("DSPY_REGISTRY_SKIP_POSTGRES") == "1"
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _with_database(url: str, database: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + database


class PostgresDatabases:
    """Creates throwaway databases and drops every one of them at the end."""

    def __init__(self) -> None:
        self.created: list[str] = []

    async def create(self) -> str:
        name = f"dspy_registry_test_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        self.created.append(name)
        return _with_database(PG_ADMIN_URL, name)

    async def drop_all(self) -> None:
        if not self.created:
            return
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            for name in self.created:
                try:
                    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                except asyncpg.PostgresError as exc:  # e.g. "checkpoint request failed" on a busy server
                    print(f"\nleft behind: database {name} ({exc})")
        finally:
            await conn.close()


DATABASES = PostgresDatabases()


@pytest.fixture(scope="session")
def pg_databases() -> PostgresDatabases:
    return DATABASES


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The throwaway databases go after the last test, not in its teardown: dropping a few hundred
    takes 20 s on a busy machine, which pytest-timeout charged to whichever test ran last. An xdist
    worker drops those it made, and hands its rows of the reliability summary to the controller."""
    if DATABASES.created:
        asyncio.run(DATABASES.drop_all())
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        from tests.reliability import conftest as reliability

        workeroutput["reliability_rows"] = reliability.rows()


@pytest.hookimpl(optionalhook=True)  # an xdist hook: the controller hears each worker finish
def pytest_testnodedown(node: Any, error: object) -> None:
    from tests.reliability import conftest as reliability

    reliability.add_rows(getattr(node, "workeroutput", {}).get("reliability_rows", {}))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The reliability summary (tests/reliability/conftest.py), printed by whichever process reports."""
    if hasattr(terminalreporter.config, "workeroutput"):
        return  # an xdist worker: its rows go to the controller (pytest_sessionfinish)
    from tests.reliability import conftest as reliability

    reliability.write_summary(terminalreporter)


# A teardown that failed can leave a store open, and an open SQLite connection's thread keeps the
# interpreter from exiting: one such hang made a CI run wait out its 90 minutes after the last test.
EXIT_SECONDS = 120.0


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """If the process has not exited `EXIT_SECONDS` after the run, print every thread's stack and
    exit with status 1: a hang at exit is a defect to see, not a wait."""
    faulthandler.dump_traceback_later(EXIT_SECONDS, exit=True, file=sys.__stderr__ or sys.stderr)


@pytest.fixture
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, pg_databases: PostgresDatabases
) -> str:
    """A URL of an empty database for the backend the test is parametrized with."""
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    if SKIP_POSTGRES:
        pytest.skip("DSPY_REGISTRY_SKIP_POSTGRES=1")
    return await pg_databases.create()


@pytest.fixture(autouse=True)
async def _stores_closed(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Every store a test opens (itself, or through a server it starts) is closed when the test ends,
    passed or failed. A test that failed before its own close() left a SQLite store's reader threads
    running (aiosqlite's threads are not daemons, and the failure's traceback kept the store alive):
    pytest reported the failure, then hung at exit. Closing twice is harmless."""
    opened: list[Store] = []
    for backend in (SqliteStore, PostgresStore):
        monkeypatch.setattr(backend, "open", _tracked(backend.open, opened))
    yield
    for store in opened:
        await store.close()


def _tracked(open: Callable[[Any], Awaitable[None]], opened: list[Store]) -> Callable[[Any], Awaitable[None]]:
    async def open_and_track(store: Store) -> None:
        opened.append(store)
        await open(store)

    return open_and_track


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    s = open_store(database_url)
    await s.open()
    yield s
    await s.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each item its own node id. Schemathesis makes an item per API operation of a test
    (`test_x[GET /api/...]`) but gives them all the test's id; pytest-xdist schedules by id, and ran
    one operation of six. The operation, which the item's name already has, goes into its id."""
    ids = Counter(item.nodeid for item in items)
    for item in items:
        if ids[item.nodeid] > 1 and item.name.endswith("]") and "[" in item.name:
            operation = item.name[item.name.index("[") + 1 : -1]
            item._id = NodeId.parse(f"{item.nodeid}[{operation}]")  # no public way to set it
    twice = [nodeid for nodeid, n in Counter(item.nodeid for item in items).items() if n > 1]
    assert not twice, f"items that share a node id (pytest-xdist would run one of each): {twice}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that takes a database runs once per backend."""
    if "database_url" in metafunc.fixturenames:
        metafunc.parametrize("database_url", BACKENDS, indirect=True)

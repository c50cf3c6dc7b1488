"""PostgreSQL faults: what a lost, stalled, restarting, read-only or full database turns into.

Every fault leaves the store as StoreUnavailable (UNAVAILABLE: retry) or,
for a full disk, ResourceExhausted — never a driver exception, and never a
StoreError, which is INTERNAL and reserved for our own bugs. The faults are
real: backends terminated with pg_terminate_backend, a TCP proxy that stalls
or cuts the connections or answers like a PostgreSQL starting up
(tests/tcp_proxy.py), a database set read-only like a standby, a tablespace
on a tmpfs filled to the last byte.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from dspy_registry.server.domain.model import Event
from dspy_registry.server.errors import ResourceExhausted, StoreError, StoreUnavailable
from dspy_registry.server.store import postgres as pg
from dspy_registry.server.store import postgres_leader as pg_leader
from dspy_registry.server.store.base import Claim
from dspy_registry.server.store.postgres import PostgresStore
from dspy_registry.server.store.postgres_leader import PostgresLeaderLock
from tests.conftest import PG_ADMIN_URL, SKIP_POSTGRES, PostgresDatabases
from tests.eventually import until
from tests.small_disk import small_disk
from tests.sql import execute
from tests.store.event_log import append, resources, revision
from tests.tcp_proxy import STALL, TcpProxy

pytestmark = pytest.mark.postgres


async def _terminate_backends(url: str) -> None:
    """What a database restart or a failover does to every session of this test's database."""
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()


@pytest.fixture
async def pg_url(pg_databases: PostgresDatabases) -> str:
    if SKIP_POSTGRES:
        pytest.skip("DSPY_REGISTRY_SKIP_POSTGRES=1")
    return await pg_databases.create()


@pytest.fixture
def proxy(pg_url: str) -> Iterator[TcpProxy]:
    p = TcpProxy.in_front_of(pg_url)
    yield p
    p.close()


@pytest.fixture
async def proxied(pg_url: str, proxy: TcpProxy) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(proxy.url(pg_url))
    await store.open()
    yield store
    proxy.resume()
    await store.close()


async def test_a_write_whose_backend_is_terminated_fails_unavailable(
    pg_url: str, pg_store: PostgresStore
) -> None:
    # The rollback of a transaction on a closed connection raised asyncpg's InterfaceError
    # as it was called, outside the translation: INTERNAL.
    with pytest.raises(StoreUnavailable):
        async with pg_store.write() as tx:
            await _terminate_backends(pg_url)
            await tx.current_revision()
    assert await append(pg_store) == 1  # a new writer connection, the revision not consumed


async def test_a_telemetry_transaction_whose_backend_is_terminated_fails_unavailable(
    pg_store: PostgresStore,
) -> None:
    # A pooled connection lost mid-statement goes back to the pool at once (asyncpg releases it as
    # it closes), and every call on the handle the transaction held raised InterfaceError, is_closed()
    # too: the rollback's check of it made the fault INTERNAL, and a sidecar did not retry its report.
    with pytest.raises(StoreUnavailable):
        async with pg_store.telemetry() as tx:
            await tx.conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")  # mid-statement
    async with pg_store.telemetry() as tx:  # the pool has another connection
        assert await tx.current_revision() == 0


COMMIT_GATE = 7001  # an advisory lock's key: the test holds it, held COMMITs wait for it


async def _hold_commits(url: str, table: str, watcher: asyncpg.Connection) -> None:
    """Every COMMIT of a transaction that wrote to `table` waits (a deferred trigger) until the test
    lets it go (`_let_commits_go`). Held, not made slow: with a COMMIT of a fixed second, a test stalled
    that long on a busy machine never saw the COMMIT run, or cancelled its caller after it ended."""
    await execute(
        url,
        "CREATE FUNCTION held_commit() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN PERFORM pg_advisory_xact_lock_shared({COMMIT_GATE}); RETURN NULL; END $$",
        f"CREATE CONSTRAINT TRIGGER held_commit AFTER INSERT OR UPDATE ON {table} "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION held_commit()",
    )
    await watcher.execute(f"SELECT pg_advisory_lock({COMMIT_GATE})")


async def _let_commits_go(watcher: asyncpg.Connection) -> None:
    await watcher.execute(f"SELECT pg_advisory_unlock({COMMIT_GATE})")


@pytest.fixture
async def pg_store(pg_url: str) -> AsyncIterator[PostgresStore]:
    """conftest's `store`, on PostgreSQL alone: these faults are PostgreSQL's."""
    opened = PostgresStore(pg_url)
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def watcher(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A session of the test's own on the store's database, to see what the store's sessions do."""
    conn = await asyncpg.connect(pg_url)
    yield conn
    await conn.close()


async def _committing(watcher: asyncpg.Connection) -> bool:
    """Whether a session of the store (any but `watcher`) is in the middle of a COMMIT."""
    found = await watcher.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND state = 'active' AND query ILIKE 'COMMIT%'"
    )
    return bool(found)


async def test_a_write_whose_caller_is_cancelled_during_commit_keeps_the_writer_for_the_next(
    pg_url: str, pg_store: PostgresStore, watcher: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    # Seen under a fleet: "rollback failed", asyncpg's "Resetting connection with an active
    # transaction" and "Task exception was never retrieved". A caller cancelled (its deadline) while
    # its COMMIT ran left the shielded COMMIT running and let the writer's turn go at once: the next
    # write began on a connection still committing ("another operation is in progress"), its rollback
    # failed, and the writer connection was terminated under the COMMIT.
    await _hold_commits(pg_url, "events", watcher)
    first = asyncio.create_task(append(pg_store, "r/1"))
    await until(lambda: _committing(watcher), "the first write's COMMIT runs")
    first.cancel()
    second = asyncio.create_task(append(pg_store, "r/2"))  # it asks for the writer's turn mid-COMMIT
    await _let_commits_go(watcher)
    assert await second == 2  # its turn came once the first had committed
    assert await resources(pg_store) == ["r/1", "r/2"]  # the first committed: it was under way
    with pytest.raises(asyncio.CancelledError):
        await first
    assert "rollback failed" not in caplog.text


async def test_a_telemetry_transaction_whose_caller_is_cancelled_during_commit_returns_its_connection_clean(
    pg_url: str, pg_store: PostgresStore, watcher: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    await execute(pg_url, "CREATE TABLE probe (n integer)")
    await _hold_commits(pg_url, "probe", watcher)

    async def insert(n: int) -> None:
        async with pg_store.telemetry() as tx:
            await tx.conn.execute("INSERT INTO probe (n) VALUES (?)", n)

    first = asyncio.create_task(insert(1))
    await until(lambda: _committing(watcher), "the first transaction's COMMIT runs")
    first.cancel()
    # Its COMMIT held, the cancelled caller stays: it gives its connection back to the pool once
    # committed, not under its COMMIT. (Time bounds only how soon a caller that leaves is caught.)
    done, _ = await asyncio.wait({first}, timeout=0.5)
    assert not done, "the cancelled caller returned while its COMMIT ran"
    await _let_commits_go(watcher)
    with pytest.raises(asyncio.CancelledError):
        await first
    assert not await _committing(watcher)
    await insert(2)
    async with pg_store.read() as tx:
        rows = await tx.conn.fetch("SELECT n FROM probe ORDER BY n")
    assert [r["n"] for r in rows] == [1, 2]
    assert "Resetting connection with an active transaction" not in caplog.text


async def test_terminated_backends_under_load_are_unavailable_never_a_store_error(pg_url: str) -> None:
    # Seen before: "connection was closed" and 57P01 (admin shutdown) as StoreError, "another
    # operation is in progress" (InternalClientError) and InterfaceError untranslated.
    store = PostgresStore(pg_url)
    await store.open()
    seen: dict[str, int] = {}
    acknowledged: list[str] = []
    stop = asyncio.Event()

    async def work(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                if n % 2:
                    await revision(store)
                else:
                    await append(store, f"r/{n}/{i}")
                    acknowledged.append(f"r/{n}/{i}")
                seen["ok"] = seen.get("ok", 0) + 1
            except StoreUnavailable:
                seen["unavailable"] = seen.get("unavailable", 0) + 1
            except Exception as exc:  # anything else is the defect
                seen[f"{type(exc).__module__}.{type(exc).__name__}: {exc}"] = 1

    workers = [asyncio.create_task(work(n)) for n in range(6)]
    try:
        for _ in range(6):
            await asyncio.sleep(0.2)
            await _terminate_backends(pg_url)
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    try:
        assert set(seen) <= {"ok", "unavailable"}, seen
        assert set(acknowledged) <= set(await resources(store))  # every acknowledged write is there
    finally:
        await store.close()


async def test_a_database_that_turned_read_only_like_a_standby_is_unavailable(pg_url: str) -> None:
    # After a failover the old primary, now a standby, refuses writes with 25006: StoreError before.
    store = PostgresStore(pg_url)
    await store.open()
    try:
        await _sql(pg_url, "ALTER DATABASE {database} SET default_transaction_read_only = on")
        await _terminate_backends(pg_url)  # new sessions are read-only
        for _ in range(3):  # the first may find its connection gone; the next ones a standby
            with pytest.raises(StoreUnavailable) as refused:
                await append(store)
        assert "read-only" in refused.value.message
        await _sql(pg_url, "ALTER DATABASE {database} RESET default_transaction_read_only")
        await _terminate_backends(pg_url)

        async def written() -> bool:
            try:
                await append(store)
            except StoreUnavailable:
                return False
            return True

        assert any([await written() for _ in range(3)])
    finally:
        await store.close()


async def _sql(url: str, statement: str) -> None:
    """One statement from the maintenance database; `{database}` is the test's (from `url`)."""
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(statement.format(database=f'"{url.rsplit("/", 1)[1]}"'))
    finally:
        await admin.close()


async def test_a_database_starting_up_is_unavailable_and_ping_says_so(
    proxied: PostgresStore, proxy: TcpProxy
) -> None:
    # FATAL 57P03 "the database system is starting up", as during a restart: StoreError before.
    assert await append(proxied) == 1
    proxy.starting()
    for _ in range(3):  # the first may find its connection gone; a new one is refused
        with pytest.raises(StoreUnavailable) as refused:
            await append(proxied)
    assert "starting up" in refused.value.message
    found = await proxied.ping(timeout=5)
    assert not found.readable and "starting up" in found.detail
    with pytest.raises(StoreUnavailable, match="unreachable"):
        await revision(proxied)  # refused at once while the database is known to be away
    proxy.resume()
    assert (await proxied.ping(timeout=5)).readable
    assert await append(proxied) == 2


async def test_a_stalled_database_fails_the_calls_waiting_on_it_then_comes_back(
    proxied: PostgresStore, proxy: TcpProxy
) -> None:
    assert await append(proxied) == 1
    proxy.stall()  # sockets stay open, nothing flows: calls would wait for ever
    reading = asyncio.create_task(revision(proxied))
    writing = asyncio.create_task(append(proxied, "r/in-flight"))
    found = await proxied.ping(timeout=0.5)
    assert not found.readable and "no answer" in found.detail
    # Cut off by the ping: they fail now (the stall is not lifted until they did).
    for call in (reading, writing):
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(call, 20)
    with pytest.raises(StoreUnavailable, match="unreachable"):
        await append(proxied)
    proxy.resume()

    async def back() -> bool:
        return (await proxied.ping(timeout=5)).readable

    assert await back()
    assert await append(proxied, "r/after") == 2  # the write in flight was not applied
    assert await resources(proxied) == ["r/1", "r/after"]


async def test_a_timeout_says_what_happened_and_how_long_it_waited(
    pg_url: str, proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # asyncpg's timeouts are a TimeoutError with no text: the client's UNAVAILABLE and the log said
    # "postgres unreachable: " and nothing after the colon. The connect's limit is cut from 5 s to
    # 0.5 s here to keep the test short; the timeout itself is asyncpg's, on a real connection.
    monkeypatch.setitem(pg._CONNECT, "timeout", 0.5)
    store = PostgresStore(proxy.url(pg_url))
    await store.open()  # the pool connects now; the writer's connection only for the first write
    try:
        proxy.stall()  # a new connection is accepted and held: the writer's connect hears nothing
        with pytest.raises(StoreUnavailable) as refused:
            await append(store)
        found = re.fullmatch(
            r"postgres unreachable: no answer from the database after ([0-9.]+) s \(TimeoutError\)",
            refused.value.message,
        )
        assert found, refused.value.message
        assert float(found[1]) >= 0.5
    finally:
        proxy.resume()
        await store.close()


async def test_a_replica_too_busy_to_read_the_answer_in_time_does_not_find_the_database_away(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A replica whose event loop was held past the probe's timeout (hundreds of sidecars resuming on
    # it at once, on a machine loaded past its cores) found the database "unreachable" although it
    # had answered: it cut every connection — LISTEN's too, so every watcher it held was reset and
    # resumed at once — and refused calls until the next probe (issue 13: a leader's death broke
    # 560 streams on the survivors).
    store = PostgresStore(pg_url)
    await store.open()
    resets: list[str] = []
    heard: list[int] = []
    store.commits.subscribe(lambda events: heard.append(events[-1].revision), lambda: resets.append("reset"))
    try:
        assert (await store.ping(timeout=2)).readable  # its connection is made
        probing = asyncio.create_task(store.ping(timeout=2))
        await asyncio.sleep(0)  # the probe has begun
        time.sleep(2.5)  # the fault: the loop is held (not awaited) past the probe's timeout
        found = await probing
        assert found.readable, found.detail
        assert "answered the health probe after" in caplog.text  # the operator hears of the held loop
        assert resets == []
        assert await append(store) == 1  # no call refused
        assert heard == [1]  # and the commit listeners kept hearing every revision
    finally:
        await store.close()


async def test_a_leader_too_busy_to_read_its_lock_poll_in_time_keeps_the_lead(pg_url: str) -> None:
    # The leader lock's poll waited 2 s by the clock, as the health probe did: a leader whose loop was
    # held past that (its own work, a machine short of CPU) found its own answer "late", dropped the
    # lock's connection and gave up the lead, and another replica took it (issue 13).
    lost: list[str] = []
    lock = PostgresLeaderLock(pg_url, "r1", lambda: lost.append("lost"))
    other = PostgresLeaderLock(pg_url, "r2", lambda: None)
    try:
        assert (await lock.poll()).held
        polling = asyncio.create_task(lock.poll())
        await asyncio.sleep(0)  # the poll has begun
        time.sleep(pg_leader.POLL_TIMEOUT + 0.5)  # the fault: the loop is held past the poll's timeout
        assert await polling == Claim(True, "r1")
        assert lost == []
        assert await other.poll() == Claim(False, "r1")  # the lock stayed with r1 all along
    finally:
        await lock.release()
        await other.release()


async def test_a_leader_cut_off_and_always_busy_still_stops_leading_before_the_server_frees_its_lock(
    pg_url: str, proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Counted by its attention alone, a poll on a loop whose every turn comes late (a machine loaded
    # past its cores) never ran out, and waited for asyncpg's 30 s: a leader cut off without a word
    # kept leading long after the server freed its lock (about 8 s) and another replica took it.
    monkeypatch.setattr(pg_leader, "POLL_CLOCK_LIMIT", 1.0)
    lock = PostgresLeaderLock(proxy.url(pg_url), "r1", lambda: None)
    busy = True

    async def hold_the_loop() -> None:
        while busy:
            time.sleep(0.25)  # every turn of the loop late by more than a slice
            await asyncio.sleep(0)

    try:
        assert (await lock.poll()).held
        proxy.stall()  # cut off without a word
        holder = asyncio.create_task(hold_the_loop())
        async with asyncio.timeout(15):  # the clock's limit is 1 s here; asyncpg's own is 30 s
            claim = await lock.poll()
        busy = False
        await holder
        assert claim == Claim(False, "")
    finally:
        busy = False
        proxy.resume()
        await lock.release()


async def test_a_replica_cut_off_mid_transaction_does_not_hold_the_others_writes(
    pg_url: str, proxy: TcpProxy
) -> None:
    # Its backend kept the revision row locked, idle in transaction, as long as the partition
    # lasted (or TCP took to give up, hours): every other replica's writes timed out meanwhile.
    cut_off = PostgresStore(proxy.url(pg_url), idle_in_transaction_timeout=1.0)
    other = PostgresStore(pg_url)
    await cut_off.open()
    await other.open()
    try:

        async def partitioned() -> None:
            async with cut_off.write() as tx:
                await tx.append([Event(kind="e", resource="r/partitioned")])  # the revision row is locked now
                proxy.stall()  # the network goes; the database hears nothing more
                await tx.current_revision()

        writing = asyncio.create_task(partitioned())
        await until(lambda: proxy.mode == STALL, "the partition")
        assert not (await cut_off.ping(timeout=0.5)).readable
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(writing, 20)
        # The other replica's write waits (at most its 30 s command timeout) for the row.
        assert await asyncio.wait_for(append(other, "r/other"), 20) == 1
        assert await resources(other) == ["r/other"]
    finally:
        proxy.resume()
        await cut_off.close()
        await other.close()


async def test_a_store_closes_on_a_stalled_database(pg_url: str, proxy: TcpProxy) -> None:
    # Closing waited for goodbyes the database never answered: a server could not shut down.
    store = PostgresStore(proxy.url(pg_url))
    await store.open()
    await append(store)
    proxy.stall()
    assert not (await store.ping(timeout=0.5)).readable
    await asyncio.wait_for(store.close(), 20)  # the stall lasts until it has closed


async def test_a_cut_connection_fails_fast_and_ping_finds_the_database_back(
    proxied: PostgresStore, proxy: TcpProxy
) -> None:
    proxy.cut()
    with pytest.raises(StoreUnavailable):
        await revision(proxied)
    assert not (await proxied.ping(timeout=5)).readable
    proxy.resume()
    assert (await proxied.ping(timeout=5)).readable
    assert await append(proxied) == 1


async def test_a_ping_whose_own_backend_was_terminated_tries_a_new_connection(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    await store.open()
    try:
        assert (await store.ping(timeout=5)).readable
        await _terminate_backends(pg_url)  # the database itself is fine
        assert (await store.ping(timeout=5)).readable
    finally:
        await store.close()


async def test_a_postgres_disk_that_fills_up_is_resource_exhausted(pg_databases: PostgresDatabases) -> None:
    # 53100 was a StoreError: INTERNAL. The database's tablespace is a tmpfs of the test's own,
    # owned by the PostgreSQL server's user; its WAL stays on the server's own disk.
    if SKIP_POSTGRES:
        pytest.skip("DSPY_REGISTRY_SKIP_POSTGRES=1")
    try:
        server_user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user here: the PostgreSQL server is not on this machine")
    name = f"dspy_registry_test_{uuid.uuid4().hex[:12]}"
    where = Path(tempfile.gettempdir()) / name  # a path the server's user can reach
    with small_disk(where, "16m", owner=(server_user.pw_uid, server_user.pw_gid)) as disk:
        admin = await asyncpg.connect(PG_ADMIN_URL)
        try:
            try:
                await admin.execute(f"CREATE TABLESPACE {name} LOCATION '{disk}'")
            except asyncpg.PostgresError as exc:
                pytest.skip(f"the PostgreSQL server cannot use a tablespace on this machine: {exc}")
            try:
                await admin.execute(f'CREATE DATABASE "{name}" TABLESPACE {name}')
                store = PostgresStore(PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name)
                await store.open()
                try:
                    with pytest.raises(ResourceExhausted) as refused:
                        for i in range(1000):  # incompressible rows until the tablespace is full
                            async with store.write() as tx:
                                await tx.append(
                                    [
                                        Event(
                                            kind="e",
                                            resource=f"r/{i}",
                                            data={"pad": os.urandom(48_000).hex()},
                                        )
                                    ]
                                )
                    assert refused.value.limit == "database_disk" and "disk is full" in refused.value.message
                    assert await revision(store) == i  # reads go on; the failed write left nothing
                finally:
                    await store.close()
            finally:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                await admin.execute(f"DROP TABLESPACE IF EXISTS {name}")
        finally:
            await admin.close()
    where.rmdir()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (asyncpg.AdminShutdownError("terminating connection due to administrator command"), StoreUnavailable),
        (asyncpg.CrashShutdownError("terminating connection because of crash"), StoreUnavailable),
        (asyncpg.CannotConnectNowError("the database system is starting up"), StoreUnavailable),
        (
            asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
            StoreUnavailable,
        ),
        (asyncpg.ConnectionFailureError("connection failure"), StoreUnavailable),
        (asyncpg.TooManyConnectionsError("too many clients already"), StoreUnavailable),
        (
            asyncpg.ReadOnlySQLTransactionError("cannot execute UPDATE in a read-only transaction"),
            StoreUnavailable,
        ),
        (asyncpg.QueryCanceledError("canceling statement due to statement timeout"), StoreUnavailable),
        (
            asyncpg.InternalClientError("cannot switch to state 12; another operation is in progress"),
            StoreUnavailable,
        ),
        (
            asyncpg.InterfaceError("cannot call Transaction.rollback(): the underlying connection is closed"),
            StoreUnavailable,
        ),
        (TimeoutError(), StoreUnavailable),  # a pool acquire or a connect that timed out
        (ConnectionRefusedError(111, "Connection refused"), StoreUnavailable),
        (asyncpg.DiskFullError("could not extend file: No space left on device"), ResourceExhausted),
        (asyncpg.UndefinedColumnError('column "x" does not exist'), StoreError),  # our bug
        (asyncpg.exceptions._base.DataError("invalid input for query argument $1"), StoreError),  # our bug
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.__name__,
)
def test_each_postgres_error_is_translated(error: BaseException, expected: type[Exception]) -> None:
    translated = pg._translate(error)
    assert type(translated) is expected
    assert not translated.message.endswith(": "), translated.message  # a reason follows the colon
    if isinstance(translated, ResourceExhausted):
        assert translated.limit == "database_disk"


async def test_a_store_that_fails_to_open_leaves_no_session_behind(pg_url: str) -> None:
    # A role allowed two sessions: the pool takes both and migrates, then the LISTEN connection is
    # refused "too many connections". The pool's two sessions stayed open before, each one of the
    # database's slots, until the process ended (a replica retrying its start used them all up).
    role = f"open_test_{uuid.uuid4().hex[:8]}"
    await _sql(pg_url, f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 2")
    await _sql(pg_url, f"ALTER DATABASE {{database}} OWNER TO {role}")
    try:
        store = PostgresStore(re.sub(r"://[^@/]*@", f"://{role}@", pg_url, count=1), min_size=2)
        with pytest.raises(StoreUnavailable, match="too many connections"):
            await store.open()
        admin = await asyncpg.connect(pg_url)
        try:
            left = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", role)
            await admin.execute(f"DROP OWNED BY {role}")  # the tables its migrations made
        finally:
            await admin.close()
        assert left == 0
    finally:
        await _sql(pg_url, "ALTER DATABASE {database} OWNER TO CURRENT_USER")
        await _sql(pg_url, f"DROP ROLE {role}")

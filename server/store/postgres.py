"""The scale-out backend: PostgreSQL through an asyncpg pool.

Every write transaction starts by locking the single `revisions` row
(`SELECT … FOR UPDATE`), so writes serialize across all replicas and
revisions commit in the order they are taken — a bare sequence could commit
out of order and a watcher reading "events after N" would miss one. Inside
one process, writers queue on an asyncio lock for the one connection kept for
writes, so that waiting writers never hold pooled connections reads need.

Replicas learn of each other's commits through LISTEN/NOTIFY: a write sends
`NOTIFY` with its revision inside its transaction (delivered only if it
commits), and every replica then reads the events after the last revision it
delivered from the event log and hands them, in order, to its commit
listeners. If the listening connection drops, listeners are told to forget
everything (`reset`) until it is back.

Faults. Every driver error leaves as one of the store's own (`_translate`):
a lost or refused connection, an administrator's or a crash shutdown, a
standby that cannot write, a timeout → StoreUnavailable (the client retries);
a full disk → ResourceExhausted; a conflict → Aborted; anything else (a bad
statement: our bug) → StoreError. `ping()`, which the server calls every
second, runs `SELECT 1` on a connection of its own; when the database does
not answer (in 2 s of the replica's attention, not of the clock:
store/attention.py), the store cuts the connections calls are waiting on (so
that they fail now rather than at their deadline) and refuses new calls at
once, until a ping finds the database back. A write whose connection is lost during
COMMIT may or may not have committed: its caller gets UNAVAILABLE, never
success, and a retry with the same request_id gets the first answer if it
did commit.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any, TypeVar

import asyncpg

from ..calls import Call
from ..domain.model import Event, by_revision
from ..errors import Aborted, RegistryError, ResourceExhausted, StoreError, StoreUnavailable
from .attention import attended
from .base import AVAILABLE, Availability, WriteCounts
from .commits import CommitListeners
from .migrations import APPLIED, POSTGRES, migrate
from .postgres_leader import PostgresLeaderLock
from .records import Records
from .sql import Row
from .timing import TimedTransactions, TransactionTimer
from .transactions import WriteConnection

log = logging.getLogger("dspy_registry.store")

T = TypeVar("T")

# Any constant: serializes migrations when several replicas start at once.
_MIGRATION_LOCK = 0x64737079
CHANNEL = "dspy_registry_commits"
RECONNECT_SECONDS = 1.0
# asyncpg waits 60 s for a connection and forever for an answer by default: a
# database that stopped answering would hold every call to its client's deadline.
CONNECT_TIMEOUT = 5.0
# The longest statement here writes a 64 MiB artifact's chunks; past this, the connection is taken as lost.
COMMAND_TIMEOUT = 30.0
ACQUIRE_TIMEOUT = 10.0  # waiting for a pooled connection (all busy, or connecting)
CLOSE_TIMEOUT = 5.0  # a goodbye the database does not answer: the connection is dropped instead
# A write transaction waits on nothing but this process between its statements.
IDLE_IN_TRANSACTION_TIMEOUT = 30.0
DISK_LIMIT = "database_disk"
_CONNECT: dict[str, Any] = {"timeout": CONNECT_TIMEOUT, "command_timeout": COMMAND_TIMEOUT}


@lru_cache(maxsize=512)
def _numbered(sql: str) -> str:
    """Rewrite `?` placeholders as `$1, $2, …` (the SQL here has no `?` in literals)."""
    counter = iter(range(1, 1000))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


# Errors that say the database (or the way to it) is away for now, not that the call was wrong.
_UNAVAILABLE = (
    asyncpg.PostgresConnectionError,  # 08…: the connection failed, was lost, or its outcome is unknown
    asyncpg.OperatorInterventionError,  # 57…: cancelled or timed out, admin or crash shutdown, starting up
    asyncpg.InsufficientResourcesError,  # 53…: out of memory or connections (a full disk is handled first)
    asyncpg.PostgresSystemError,  # 58…: the database's own I/O failed
    asyncpg.ReadOnlySQLTransactionError,  # 25006: a standby, e.g. the old primary after a failover
    asyncpg.IdleInTransactionSessionTimeoutError,  # 25P03: the server ended a session it found idle
    asyncpg.LockNotAvailableError,  # 55P03: lock_timeout
    asyncpg.TransactionRollbackError,  # 40…: the server rolled the transaction back (conflicts are above)
)


def _translate(exc: BaseException, elapsed: float | None = None) -> RegistryError:
    """The store's own error for a driver's; `elapsed`, how long the call had waited when it failed."""
    reason = _reason(exc, elapsed)
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        return Aborted(f"conflicting concurrent change: {reason}")
    if isinstance(exc, asyncpg.SerializationError | asyncpg.DeadlockDetectedError):
        return Aborted(f"transaction conflict, retry: {reason}")
    if isinstance(exc, asyncpg.DiskFullError):
        return ResourceExhausted(DISK_LIMIT, f"the database's disk is full: {reason}")
    if isinstance(exc, _UNAVAILABLE):
        return StoreUnavailable(f"postgres unavailable: {reason}")
    if isinstance(exc, asyncpg.PostgresError):
        return StoreError(f"postgres: {reason}")
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(
        exc, ValueError | asyncpg.ClientConfigurationError | asyncpg.UnsupportedClientFeatureError
    ):
        return StoreError(f"postgres client: {reason}")  # an argument it cannot encode: our bug
    # The rest is the connection's state after a loss: closed, "another operation is in
    # progress" (InternalClientError), released to the pool; or a socket error or timeout.
    return StoreUnavailable(f"postgres unreachable: {reason}")


def _reason(exc: BaseException, elapsed: float | None) -> str:
    """What went wrong, in words. asyncpg's timeouts (connect, a pooled connection, a statement) are
    a bare TimeoutError whose text is empty: the operator's log and the client's UNAVAILABLE said
    "postgres unreachable: " and nothing more. Which of its limits ran out the error does not say
    (a pool's acquire fails at the connect's limit when it had to connect), so the time waited is
    measured rather than guessed from the limits."""
    text = str(exc)
    if isinstance(exc, TimeoutError):
        waited = f" after {elapsed:.1f} s" if elapsed is not None else ""
        return f"no answer from the database{waited} (TimeoutError{': ' + text if text else ''})"
    return text or type(exc).__name__


_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)


async def _driver(call: Callable[[], Awaitable[T]]) -> T:
    """Make a driver call and await it; its exceptions leave as the store's own.

    A callable rather than an awaitable: some asyncpg methods (a transaction's
    `rollback()` once its connection closed) raise as they are called.
    """
    started = time.monotonic()
    try:
        return await call()
    except _DRIVER_ERRORS as exc:
        raise _translate(exc, time.monotonic() - started) from None


async def applied_migrations(url: str) -> set[int]:
    """The migrations the database's ledger lists (none before the first start), read without writing."""
    started = time.monotonic()
    try:
        conn = await asyncpg.connect(url, **_CONNECT)
        try:
            if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
                return set()
            return {int(row["number"]) for row in await conn.fetch(APPLIED)}
        finally:
            await conn.close(timeout=CLOSE_TIMEOUT)
    except _DRIVER_ERRORS as exc:
        raise _translate(exc, time.monotonic() - started) from None


class _Connection:
    """Adapts an asyncpg connection to records.Connection."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def fetch(self, sql: str, *args: Any) -> Sequence[Row]:
        rows: Sequence[Row] = await _driver(lambda: self.conn.fetch(_numbered(sql), *args))
        return rows

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        row: Row | None = await _driver(lambda: self.conn.fetchrow(_numbered(sql), *args))
        return row

    async def execute(self, sql: str, *args: Any) -> None:
        await _driver(lambda: self.conn.execute(_numbered(sql), *args))

    async def executemany(self, sql: str, args: list[tuple[Any, ...]]) -> None:
        if args:
            await _driver(lambda: self.conn.executemany(_numbered(sql), args))


class PostgresStore(TimedTransactions):
    def __init__(
        self,
        url: str,
        *,
        min_size: int = 2,
        max_size: int = 16,
        idle_in_transaction_timeout: float = IDLE_IN_TRANSACTION_TIMEOUT,
    ) -> None:
        self.url = url
        self._idle_in_transaction = {
            "idle_in_transaction_session_timeout": str(int(idle_in_transaction_timeout * 1000))
        }
        self.commits = CommitListeners()
        self.timer = TransactionTimer()
        self.writes = WriteCounts()
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._write_lock = asyncio.Lock()
        self._writer: asyncpg.Connection | None = None
        self._delivered = 0  # the last revision handed to the commit listeners
        self._delivery_lock = asyncio.Lock()
        self._listener: asyncpg.Connection | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._lent: set[Any] = set()  # pooled connections reads hold now
        self._prober: asyncpg.Connection | None = None  # ping()'s own connection
        self._down = ""  # why the last ping found the database unreachable; "" while it answers

    async def open(self) -> None:
        """Connect, migrate, listen. A store that fails to open closes what it had opened: a replica
        that retries its start (or a test that opens many) must not leave sessions behind, each one of
        the database's few connection slots."""
        try:
            await self._open()
        except BaseException:
            await self.close()
            raise

    async def _open(self) -> None:
        started = time.monotonic()
        try:
            # Pooled sessions end an idle transaction as the writer's do: a replica cut off
            # mid-batch must not hold its telemetry rows for hours. Set once per session, not per
            # transaction.
            pool = await asyncpg.create_pool(
                self.url,
                min_size=self._min_size,
                max_size=self._max_size,
                server_settings=self._idle_in_transaction,
                reset=_keep_session,
                **_CONNECT,
            )
            self._pool = pool
            async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as raw:
                await self._migrate(_Connection(raw), raw)
                row = await _Connection(raw).fetchrow("SELECT revision FROM revisions WHERE id = 1")
                assert row is not None
                self._delivered = int(row["revision"])
        except _DRIVER_ERRORS as exc:
            raise _translate(exc, time.monotonic() - started) from None
        await self._listen()
        self._listen_task = asyncio.create_task(self._keep_listening(), name="postgres-listen")

    async def _migrate(self, conn: _Connection, raw: asyncpg.Connection) -> None:
        async with raw.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(?)", _MIGRATION_LOCK)
            await migrate(conn, POSTGRES)

    async def close(self) -> None:
        if self._listen_task is not None:
            self._listen_task.cancel()
            await asyncio.gather(self._listen_task, return_exceptions=True)
            self._listen_task = None
        await asyncio.gather(*(self._close(c) for c in (self._listener, self._prober) if c is not None))
        self._listener = self._prober = None
        async with self._write_lock:  # let the write in progress finish
            if self._pending:
                await asyncio.gather(*self._pending, return_exceptions=True)
            if self._writer is not None:
                await self._close(self._writer)
                self._writer = None
            if self._pool is not None:
                await self._close_pool(self._pool)
                self._pool = None

    async def _close_pool(self, pool: asyncpg.Pool) -> None:
        if self._down:
            pool.terminate()  # no goodbyes to a database that does not answer
            return
        try:
            # Waits for the connections reads hold, then says goodbye on each.
            async with asyncio.timeout(CLOSE_TIMEOUT):  # not wait_for: see background.Loop._sleep
                await pool.close()
        except (TimeoutError, *_DRIVER_ERRORS):
            pool.terminate()  # a database that stopped answering must not hold the shutdown

    async def _close(self, conn: asyncpg.Connection) -> None:
        if self._down:
            conn.terminate()
            return
        try:
            await conn.close(timeout=CLOSE_TIMEOUT)  # it terminates the connection itself if this fails
        except (TimeoutError, *_DRIVER_ERRORS):
            log.debug("closing a connection failed", exc_info=True)

    def _available(self) -> asyncpg.Pool:
        """The pool, unless the store is closed or known to be unreachable: then refuse at once."""
        if self._pool is None:
            raise StoreUnavailable("the store is closed")
        if self._down:
            raise StoreUnavailable(f"the database is unreachable ({self._down}); retry later")
        return self._pool

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[Records]:
        pool = self._available()
        raw = await _driver(lambda: pool.acquire(timeout=ACQUIRE_TIMEOUT))
        self._lent.add(raw)
        try:
            yield Records(_Connection(raw))
        finally:
            self._lent.discard(raw)
            await asyncio.shield(_release(pool, raw))

    def leader_lock(self, replica: str, lost: Callable[[], None]) -> PostgresLeaderLock:
        return PostgresLeaderLock(self.url, replica, lost)

    async def _writer_connection(self) -> asyncpg.Connection:
        if self._writer is None or self._writer.is_closed():
            # A replica cut off mid-transaction (a partition: its connection is gone, the server
            # does not know) would hold the revision row, so every replica's writes, until TCP
            # gave up on it, hours later. The server ends such a session itself.
            self._writer = await _driver(
                lambda: asyncpg.connect(self.url, server_settings=self._idle_in_transaction, **_CONNECT)
            )
        return self._writer

    @asynccontextmanager
    async def _write(self, call: Call | None = None) -> AsyncIterator[Records]:
        self._available()
        async with self._write_lock:
            self._available()  # the database may have gone away while this write waited its turn
            raw = await self._writer_connection()
            transaction = raw.transaction()
            conn = WriteConnection(_Connection(raw))
            try:
                await _driver(transaction.start)
                row = await conn.fetchrow("SELECT revision FROM revisions WHERE id = 1 FOR UPDATE")
                assert row is not None
                records = Records(conn, base_revision=int(row["revision"]), call=call)
                yield records
                await records.finish()
                if records.appended:
                    await conn.execute("SELECT pg_notify(?, ?)", CHANNEL, str(records.revision))
                if conn.failure is not None:  # a caller went on after a failed statement
                    raise conn.failure
            except BaseException:
                await _to_the_end(self._abandon(raw, transaction))
                raise
            # To the end: a cancelled caller must neither leave the commit half-done, nor keep the
            # listeners (the read cache) from hearing of it, nor give the writer's turn to the next
            # write while the connection is still committing.
            await _to_the_end(self._finish(transaction, records))

    @asynccontextmanager
    async def _telemetry(self) -> AsyncIterator[Records]:
        # A pooled connection, not the writer's, and no lock on the revision row: telemetry neither
        # queues behind the revisioned writes nor holds them up.
        pool = self._available()
        raw = await _driver(lambda: pool.acquire(timeout=ACQUIRE_TIMEOUT))
        self._lent.add(raw)
        try:
            transaction = raw.transaction()
            conn = WriteConnection(_Connection(raw))
            try:
                await _driver(transaction.start)
                yield Records(conn)
                if conn.failure is not None:
                    raise conn.failure
            except BaseException:
                await _to_the_end(self._abandon(raw, transaction))
                raise
            # To the end, as a write's: the connection goes back to the pool once it has committed.
            await _to_the_end(_driver(transaction.commit))
            self.writes.telemetry += 1
        finally:
            self._lent.discard(raw)
            await asyncio.shield(_release(pool, raw))

    async def _abandon(self, raw: asyncpg.Connection, transaction: Any) -> None:
        if _closed(raw):
            return  # the server rolls back what a lost connection left open
        try:
            await _driver(transaction.rollback)
        except RegistryError:
            log.warning("rollback failed; reconnecting the writer", exc_info=True)
            raw.terminate()  # not close(): a connection that failed may not answer a goodbye either

    async def _finish(self, transaction: Any, records: Records) -> None:
        # A connection lost during COMMIT raises here, whether or not the server
        # committed: the caller hears UNAVAILABLE, never success, and its retry
        # with the same request_id gets the first answer if the commit happened.
        await _driver(transaction.commit)
        self.writes.revisioned += 1
        records.committed()
        if records.appended:
            try:
                await self._deliver(records.revision, records.appended)
            except RegistryError:
                # The write is durable and answered as such; what could not be
                # read is other replicas' events, so the listeners start over.
                log.warning("could not read the event log after revision %d; caches reset", records.revision)
                self.commits.reset()

    async def _deliver(self, revision: int, own: Sequence[Event] = ()) -> None:
        """Hand every committed event up to `revision` to the listeners, once, in order."""
        async with self._delivery_lock:
            if revision <= self._delivered:
                return
            if own and own[0].revision == self._delivered + 1 and own[-1].revision == revision:
                self.commits.publish(own)  # nothing from other replicas came in between
                self._delivered = revision
                return
            while self._delivered < revision:
                async with self.read() as tx:
                    events = await tx.events_after(self._delivered, limit=1000)
                if not events:
                    break
                for _, group in by_revision(events):
                    self.commits.publish(group)
                self._delivered = events[-1].revision

    async def _listen(self) -> None:
        listener = await _driver(lambda: asyncpg.connect(self.url, timeout=CONNECT_TIMEOUT))
        listener.add_termination_listener(lambda _: self._lost())
        await _driver(lambda: listener.add_listener(CHANNEL, self._notified))
        self._listener = listener

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        task = asyncio.ensure_future(self._deliver_logged(int(payload)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _deliver_logged(self, revision: int) -> None:
        try:
            await self._deliver(revision)
        except RegistryError:
            log.warning("could not read the event log after revision %d; caches reset", revision)
            self.commits.reset()

    def _lost(self) -> None:
        log.warning("lost the LISTEN connection; caches reset until it is back")
        self._listener = None
        self.commits.reset()

    async def _keep_listening(self) -> None:
        """Reconnect the listener when it drops; catch up from the log when it is back."""
        while True:
            await asyncio.sleep(RECONNECT_SECONDS)
            if self._down or (self._listener is not None and not self._listener.is_closed()):
                continue  # connected; or the database is away, and ping() says when it is back
            try:
                await self._listen()
                async with self.read() as tx:
                    current = await tx.current_revision()
                await self._deliver(current)
                self.commits.reset()  # anything cached while deaf may be stale
                log.info("LISTEN connection restored")
            except RegistryError:
                log.warning("LISTEN connection still down", exc_info=True)
                if self._listener is not None:
                    # Not caught up: drop it, so that the next turn reconnects and catches up.
                    self._listener.terminate()

    async def ping(self, timeout: float) -> Availability:
        """`SELECT 1` on a connection of ping's own, answered within `timeout`.

        A connection that fails at once (its backend terminated) is replaced and
        tried again at once: the database may be fine. No answer in time, or no
        connection at all, and the database is down until a later ping says otherwise.
        """
        problem, retry = await self._probe(timeout)
        if problem and retry:
            problem, _ = await self._probe(timeout)
        if not problem:
            self._down = ""
            return AVAILABLE
        first, self._down = not self._down, problem
        if first:
            await self._cut_off()
        return Availability(readable=False, writable=False, detail=f"the database is unreachable: {problem}")

    async def _probe(self, timeout: float) -> tuple[str, bool]:
        """("", _) if the database answered; else what went wrong and whether to try a new connection.

        "No answer" means none within `timeout` of this replica's attention (store/attention.py),
        not of the clock: a replica too busy to read the answer must not find the database away,
        cut every watcher it holds and refuse calls — that is when it can least afford it.
        """
        fresh = self._prober is None or self._prober.is_closed()
        loop = asyncio.get_running_loop()
        began = loop.time()
        asked = asyncio.ensure_future(self._select_one())
        try:
            answered = await attended(asked, timeout)
        finally:
            if not asked.done():  # unanswered in time, or the ping itself cancelled (the server stops)
                asked.cancel()
        if answered and (took := loop.time() - began) > timeout:
            # What the probe would have taken for a database away: say so, since it means this
            # replica is held up (its own work, or too little CPU for it), which it cannot see elsewhere.
            log.warning(
                "the database answered the health probe after %.1fs, within %gs of this replica's "
                "attention: its event loop was held meanwhile (its own work, or too little CPU)",
                took,
                timeout,
            )
        if not answered:
            await asyncio.gather(asked, return_exceptions=True)
            self._drop_prober()
            return f"no answer within {timeout:g}s", False
        try:
            asked.result()
            return "", False
        except (TimeoutError, *_DRIVER_ERRORS) as exc:
            self._drop_prober()
            return f"{type(exc).__name__}: {exc}", not fresh

    async def _select_one(self) -> None:
        if self._prober is None or self._prober.is_closed():
            # The clock's timeout, and a long one: attended() judges whether an answer is overdue.
            self._prober = await asyncpg.connect(self.url, timeout=COMMAND_TIMEOUT)
        await self._prober.fetchval("SELECT 1")

    def _drop_prober(self) -> None:
        if self._prober is not None:
            self._prober.terminate()
            self._prober = None

    async def _cut_off(self) -> None:
        """The database stopped answering: end the calls waiting on it now, not at their deadlines."""
        log.warning("the database is unreachable (%s): failing calls until it answers again", self._down)
        for raw in list(self._lent):
            raw.terminate()
        for conn in (self._writer, self._listener):
            if conn is not None:
                conn.terminate()  # the write in progress fails; the listener's loss resets the caches
        if self._pool is not None:
            await self._pool.expire_connections()  # idle ones too: replaced before their next use


async def _keep_session(raw: asyncpg.Connection) -> None:
    """The pool's reset between two uses of a connection: nothing to undo. asyncpg's default sends
    `RESET ALL`, `UNLISTEN *`, `CLOSE ALL` and `pg_advisory_unlock_all()` each time a connection
    is given back — a round trip and a commit for every read, half the database's commits under a
    fleet — but no session here sets anything on a pooled connection (the settings come from
    `server_settings`, the leader lock and LISTEN have connections of their own), and asyncpg
    rolls back a transaction left open before it calls this."""


async def _to_the_end(work: Awaitable[T]) -> T:
    """Await `work` until it is done even if the caller is cancelled meanwhile; then the cancellation
    goes on. asyncio.shield alone lets the caller leave at once while `work` runs on: a COMMIT, still
    running on a connection that the caller then gives back (to the pool, or the writer's turn to the
    next write), which meets it mid-operation ("another operation is in progress", a failed rollback,
    asyncpg's "Resetting connection with an active transaction"), and whose failure no one retrieves."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait({task})  # which, cancelled, leaves `task` running
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not task.cancelled():
            task.exception()  # retrieved: the caller hears of its cancellation, not of this
        raise asyncio.CancelledError
    return task.result()


def _closed(raw: Any) -> bool:
    """Whether the connection is lost. A pooled one that is lost goes back to its pool as it closes
    (asyncpg releases it itself), and the handle we hold then raises on every call, is_closed too."""
    try:
        return bool(raw.is_closed())
    except asyncpg.InterfaceError:
        return True


async def _release(pool: asyncpg.Pool, raw: Any) -> None:
    """Give a connection back to the pool; one that fails to reset is discarded by the pool itself."""
    try:
        await pool.release(raw)
    except _DRIVER_ERRORS:
        log.debug("a connection failed as it was released; the pool replaces it", exc_info=True)

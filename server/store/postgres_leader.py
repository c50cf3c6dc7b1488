"""The leader lock on PostgreSQL: a session advisory lock held on a connection of its own.

`pg_try_advisory_lock` on a dedicated connection, never a pooled one: a
session lock lives as long as its session, and a pooled connection is shared
and replaced. The server ends the session, and so frees the lock, when the
replica dies, closes it, or an administrator terminates it; the replica
learns of a lost connection from asyncpg at once (and calls `lost`), or from
the next poll when the network went silent instead.

Who holds the lock is read from `pg_locks` joined to `pg_stat_activity`: the
connection says which replica it belongs to in its `application_name`, so
that the answer is never stale (it dies with the session) and an operator
sees it in `pg_stat_activity` too. Reading other sessions' application_name
needs the same role or `pg_read_all_stats`.

A replica cut off without a word (a partition) stops leading at its next
poll, whose answer does not come within POLL_TIMEOUT of its attention (a
loop held meanwhile does not count: store/attention.py), nor in any case
within POLL_CLOCK_LIMIT by the clock; the server side frees the lock only
when TCP keepalives find the session dead (KEEPALIVE_*: about 8 s), so the
old leader has stopped before another can start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg

from .attention import attended
from .base import Claim, check_replica_name

log = logging.getLogger("dspy_registry.store")

# Any constant other than the migrations' (postgres._MIGRATION_LOCK); the lock is per database.
LEADER_LOCK = 0x6473706C
APPLICATION_PREFIX = (
    "dspy-registry leader "  # + the replica's name (base.MAX_REPLICA_NAME), in application_name
)
POLL_TIMEOUT = 2.0  # of the replica's attention (store.attention), not of the clock
# By the clock, whatever the loop did: a leader cut off without a word must have stopped leading
# before the server frees its lock (KEEPALIVE: about 8 s after the last word), and another takes it.
# A poll starts POLL_SECONDS (1 s) after the last; it gives up within this long.
POLL_CLOCK_LIMIT = 6.0
CLOCK_TIMEOUT = 30.0  # asyncpg's own, by the clock: a backstop for an answer attended() gave up on
KEEPALIVE = {"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "1", "tcp_keepalives_count": "3"}
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)

HOLDER = """
SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objsubid = 1
  AND l.objid::bigint = $1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
# The attempt and the holder in one round trip. Of the holder, only a failed attempt's answer is
# read: one that took the lock knows it holds it, whichever way pg_locks was read in between.
TRY_AND_HOLDER = f"SELECT pg_try_advisory_lock($1) AS took, ({HOLDER.strip()}) AS holder"


class PostgresLeaderLock:
    def __init__(self, url: str, replica: str, lost: Callable[[], None]) -> None:
        self.url = url
        self.replica = check_replica_name(replica)
        self.lost = lost
        self._conn: asyncpg.Connection | None = None
        self._held = False  # guarded by the event loop: only poll() and the termination callback set it

    async def poll(self) -> Claim:
        # POLL_TIMEOUT of this replica's attention, not of the clock (store.attention): a leader whose
        # loop was held, or that waited for a CPU, past it while the database answered would give up
        # the lead to another replica for nothing, and its duties would stop and start again.
        asked = asyncio.ensure_future(self._ask())
        asked.add_done_callback(_retrieved)  # a poll cancelled meanwhile never reads its failure
        try:
            async with asyncio.timeout(POLL_CLOCK_LIMIT):  # not wait_for: see background.Loop._sleep
                answered = await attended(asked, POLL_TIMEOUT)
        except TimeoutError:
            answered = asked.done()
        finally:
            if not asked.done():  # unanswered in time, or the poll itself cancelled (the server stops)
                asked.cancel()
        try:
            if not answered:
                await asyncio.gather(asked, return_exceptions=True)
                raise TimeoutError(
                    f"no answer within {POLL_TIMEOUT:g}s of this replica's attention "
                    f"or {POLL_CLOCK_LIMIT:g}s of the clock"
                )
            row = asked.result()
        except (TimeoutError, *_DRIVER_ERRORS) as exc:
            if self._held:
                log.warning("the leader lock's connection failed: %s", exc or type(exc).__name__)
            self._drop()
            return Claim(False, "")
        if row is None or self._held:  # whatever pg_locks showed in the same statement, the lock is ours
            return Claim(True, self.replica)
        name = str(row["holder"] or "")
        return Claim(
            False, name.removeprefix(APPLICATION_PREFIX) if name.startswith(APPLICATION_PREFIX) else ""
        )

    async def _ask(self) -> asyncpg.Record | None:
        """One statement. Held: the session answering proves the lock is still ours (None). Not held:
        the attempt and who holds the lock, together (`_held` says whether it took it)."""
        conn = await self._connection()
        if self._held:
            await conn.fetchval("SELECT 1")
            return None
        row: asyncpg.Record | None = await conn.fetchrow(TRY_AND_HOLDER, LEADER_LOCK)
        assert row is not None
        self._held = bool(row["took"])
        return row

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        self._held = False
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=POLL_TIMEOUT)  # the session ends: the server frees the lock
            except (TimeoutError, *_DRIVER_ERRORS):
                conn.terminate()

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._held = False
            # The clock's timeouts, and long ones: attended() judges whether an answer is overdue.
            conn = await asyncpg.connect(
                self.url,
                timeout=CLOCK_TIMEOUT,
                command_timeout=CLOCK_TIMEOUT,
                server_settings={"application_name": APPLICATION_PREFIX + self.replica, **KEEPALIVE},
            )
            conn.add_termination_listener(self._terminated)
            self._conn = conn
        return self._conn

    def _terminated(self, conn: object) -> None:
        """asyncpg's word that the session ended (the server terminated it, or the socket closed)."""
        if conn is self._conn:
            self._conn = None
            if self._held:
                self._held = False
                self.lost()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        was_held, self._held = self._held, False
        if conn is not None:
            conn.terminate()  # not close(): a connection that failed may not answer a goodbye
        if was_held:
            self.lost()


def _retrieved(task: asyncio.Future[object]) -> None:
    if not task.cancelled():
        task.exception()

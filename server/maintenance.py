"""Housekeeping the server does by itself, on a timer: the idempotency window, the event log, sidecars.

The event log keeps `--event-retention` (default 24 h) of revisions; older
ones are compacted away, and a watcher resuming from before the compacted
revision gets a fresh snapshot flagged `reset` (etcd's compaction).

A mutation's request_id is remembered with its first answer so that a retry
gets that answer back; remembering forever would grow the store without
bound. Records older than the retention (`--request-retention`, default 24 h)
are pruned every `interval`; a retry after that is treated as a new request.

A sidecar no replica vouches for any more (see usecases.live_sidecars) is
already left out of every answer; its rows are deleted here, as are metric windows older than
`--metrics-retention` (default 1 h), and webhook deliveries completed more
than 7 days ago.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from .background import Loop
from .domain import webhooks
from .domain.clock import SYSTEM_CLOCK, Clock
from .store.base import Store
from .store.records import Records
from .store.sql import to_us

log = logging.getLogger("dspy_registry.maintenance")

# What one transaction deletes, at most: SQLite keeps every page a transaction changes in memory
# until it ends, to roll back to (store/sqlite.py), so that a backlog (a retention shortened, a
# server stopped for days) is forgotten in steps rather than held whole.
REQUESTS_PER_STEP = 10_000
REVISIONS_PER_STEP = 5_000  # of ~5 events each: 20 000 held 28 MiB, 2 000 held 2.9 MiB
WINDOWS_PER_STEP = 10_000  # metric rollups: one per source, target and bucket
DELIVERIES_PER_STEP = 10_000  # webhook deliveries, each with its rendered body: as many as events


class Maintenance:
    def __init__(
        self,
        store: Store,
        *,
        request_retention: float,
        event_retention: float = 24 * 3600.0,
        metrics_retention: float = 3600.0,
        interval: float = 600.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        self.clock = clock
        self.request_retention = request_retention
        self.event_retention = event_retention
        self.metrics_retention = metrics_retention
        self.interval = interval
        self._loop = Loop("maintenance", self.run_once, idle=interval, wait_first=True, log=log)

    async def run_once(self) -> None:
        now = self.clock.now()
        requests_before = to_us(now - timedelta(seconds=self.request_retention))
        events_before = to_us(now - timedelta(seconds=self.event_retention))
        await self._in_steps(
            lambda tx: tx.prune_requests(requests_before, REQUESTS_PER_STEP), REQUESTS_PER_STEP
        )
        await self._in_steps(lambda tx: _compact(tx, events_before), REVISIONS_PER_STEP)
        windows_before = now - timedelta(seconds=self.metrics_retention)
        await self._in_steps(
            lambda tx: tx.forget_metric_windows(windows_before, WINDOWS_PER_STEP), WINDOWS_PER_STEP
        )
        deliveries_before = now - webhooks.DELIVERY_RETENTION
        await self._in_steps(
            lambda tx: tx.forget_deliveries(deliveries_before, DELIVERIES_PER_STEP), DELIVERIES_PER_STEP
        )
        async with self.store.write() as tx:  # as many rows as sidecars went silent: one transaction
            await tx.forget_silent_sidecars(now)

    async def _in_steps(self, step: Callable[[Records], Awaitable[int]], most: int) -> None:
        """`step` in a transaction of its own, again while it did all it may (`most`): more may be left."""
        while True:
            async with self.store.write() as tx:
                done = await step(tx)
            if done < most:
                return

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()


async def _compact(tx: Records, before_us: int) -> int:
    """One step of compaction: how many revisions it dropped."""
    start = await tx.compacted_revision()
    return await tx.compact_events(before_us, REVISIONS_PER_STEP) - start

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
from datetime import timedelta

from .background import Loop
from .domain import webhooks
from .domain.clock import SYSTEM_CLOCK, Clock
from .store.base import Store
from .store.sql import to_us

log = logging.getLogger("dspy_registry.maintenance")


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
        async with self.store.write() as tx:
            await tx.prune_requests(to_us(now - timedelta(seconds=self.request_retention)))
            await tx.compact_events(to_us(now - timedelta(seconds=self.event_retention)))
            await tx.forget_silent_sidecars(now)
            await tx.forget_metric_windows(now - timedelta(seconds=self.metrics_retention))
            await tx.forget_deliveries(now - webhooks.DELIVERY_RETENTION)

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

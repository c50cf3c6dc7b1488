"""Metric windows merged in this replica's memory, and written in one batch per flush interval.

A ReportMetrics answer means its windows are in this replica's memory and
will be written with the next flush (or at a graceful stop); a replica that
dies loses what it held since its last flush: at most one interval of data,
which analysis sees as fewer requests (INCONCLUSIVE below min_requests),
never as another verdict. A flush that fails keeps what it held for the next.

A retried report (the same principal, sidecar, version and window start) counts once if
it reaches this replica within RETRY_SECONDS; a retry that reaches another
replica after this one answered may count twice — one window of one pod.
"""

from __future__ import annotations

import logging
from collections import deque
from datetime import datetime, timedelta

from ..domain.clock import SYSTEM_CLOCK, Clock
from ..domain.health import Window
from ..domain.rollups import Rollup, bucket_second
from ..store.base import Store
from ..store.records import Records

RETRY_SECONDS = 60.0  # how long a window's key is remembered, to count a retried report once
# Rollups held at most (about 1 KiB each). Only a store away for long reaches it (one per version
# and second); then the oldest are let go, and the log says how many windows went with them.
MAX_HELD = 100_000

log = logging.getLogger("dspy_registry.rollups")

_Key = tuple[str, str, str]  # program, environment, version


class MetricRollups:
    def __init__(self, store: Store, replica: str, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.store = store
        self.replica = replica
        self.clock = clock
        # What is held: the rollup each version is filling (by the second it opened in), and the
        # rollups closed since the last flush. Guarded by the event loop.
        self._open: dict[_Key, tuple[int, Rollup]] = {}
        self._closed: list[Rollup] = []
        self._flushing: list[Rollup] = []  # handed to a flush not committed yet: still read here
        self._next_bucket = 0
        # Hashes of the windows received lately -> the second each first arrived in; and the keys by
        # that second (oldest first), to let them go. One lookup per window, not one
        # per second remembered: a fleet sends thousands of windows a second.
        self._seen: dict[int, int] = {}
        self._recent: deque[tuple[int, list[int]]] = deque()

    def add(self, principal: str, sidecar_id: str, windows: list[Window], received: datetime) -> None:
        """Merge `windows` (checked, kept) into what is held; one received lately again is skipped.
        A retry is the same principal's: another's window under the same sidecar id is not one."""
        second = bucket_second(received)
        self._forget_keys_before(second - int(RETRY_SECONDS))
        if not self._recent or self._recent[-1][0] != second:
            self._recent.append((second, []))
        keys = self._recent[-1][1]
        for w in windows:
            key = hash((principal, sidecar_id, w.program, w.environment, w.version, w.start_time))
            if key in self._seen:
                continue
            self._seen[key] = second
            keys.append(key)
            self._rollup((w.program, w.environment, w.version), second, received).add(w)

    def _rollup(self, key: _Key, second: int, received: datetime) -> Rollup:
        opened = self._open.get(key)
        if opened is not None and opened[0] == second:
            return opened[1]
        if opened is not None:
            self._closed.append(opened[1])
        self._next_bucket += 1
        r = Rollup(
            program=key[0],
            environment=key[1],
            version=key[2],
            source=self.replica,
            bucket=self._next_bucket,
            first_receive=received,
        )
        self._open[key] = (second, r)
        return r

    def _forget_keys_before(self, second: int) -> None:
        while self._recent and self._recent[0][0] < second:
            for key in self._recent.popleft()[1]:
                del self._seen[key]

    def held(self) -> list[Rollup]:
        return [*self._flushing, *self._closed, *(r for _, r in self._open.values())]

    async def merged(
        self, tx: Records, program: str, environment: str, versions: list[str], since: datetime
    ) -> list[Window]:
        """Every replica's rollups of these versions since `since`, as windows; each rollup once."""
        # Memory first: a rollup that a flush commits meanwhile is then found in the store as well
        # (and counted once, by name), never in neither.
        mine = [
            r
            for r in self.held()
            if r.program == program
            and r.environment == environment
            and r.version in versions
            and r.first_receive >= since
        ]
        stored = await tx.metric_rollups(program, environment, versions, since)
        names = {r.name for r in stored}
        return [r.as_window() for r in (*stored, *(r for r in mine if r.name not in names))]

    async def flush(self, retention_seconds: float) -> int:
        """Write every rollup held, in one transaction; how many. Those past the retention are dropped."""
        oldest = self.clock.now() - timedelta(seconds=retention_seconds)
        batch = self.held()
        self._flushing, self._closed, self._open = [], [], {}
        batch = [r for r in batch if r.first_receive >= oldest]
        if not batch:
            return 0
        self._flushing = batch
        try:
            async with self.store.telemetry() as tx:
                await tx.add_metric_rollups(batch)
        except BaseException:
            # Kept for the next flush (a rollup written already is not written twice: see the store).
            kept = batch + self._closed
            if len(kept) > MAX_HELD:
                gone, kept = kept[: len(kept) - MAX_HELD], kept[len(kept) - MAX_HELD :]
                log.warning(
                    "the store is away and %d rollups are held: the %d oldest (%d windows) are let go",
                    len(gone) + len(kept),
                    len(gone),
                    sum(r.window_count for r in gone),
                )
            self._closed = kept
            self._flushing = []
            raise
        self._flushing = []
        return len(batch)

"""The store-wide numbers telemetry's gauges show: deployments by state, paused ones, live sidecars.

A gauge's callback is synchronous and may run on another thread (a Prometheus
scrape's, a periodic exporter's); the store is async. So the callbacks read
`snapshot`, which a task here replaces: soon after a commit that changed
deployments or environments (at most once a second), and every
`SIDECARS_SECONDS` anyway. The live sidecars are read only then (and at once
on a replica that takes the lead): a sidecar stops being live by the clock,
with no commit to say so, and its reports append no event.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .domain.clock import SYSTEM_CLOCK, Clock
from .domain.deployments import State
from .domain.sidecars import serving_counts
from .store.base import Store

log = logging.getLogger("dspy_registry.telemetry")

MIN_SECONDS = 1.0  # the store is re-read at most this often
SIDECARS_SECONDS = 5.0  # ... and at least this often


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    environments: tuple[str, ...] = ()
    deployments: dict[tuple[str, State], int] = field(default_factory=dict)  # (environment, state)
    paused: dict[str, int] = field(default_factory=dict)  # environment -> paused in progress
    # (program, environment, version) -> live sidecars serving it; every key ever seen stays, at 0
    # once none is, so that a scraper sees a version leave the fleet rather than keep its last number.
    sidecars: dict[tuple[str, str, str], int] = field(default_factory=dict)


class StoreCounts:
    def __init__(
        self,
        store: Store,
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_read: Callable[[Snapshot], None] | None = None,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        """`on_read` is told each new snapshot, on the event loop. `leading`: whether this replica
        exports the store-wide numbers; on the others only the environments are read (each counter
        starts at 0 for each), not the deployment counts nor every live sidecar's report."""
        self.store = store
        self.clock = clock
        self.on_read = on_read
        self.leading = leading
        # Replaced whole, never changed in place: a reader on another thread sees the old
        # snapshot or the new one, never half of each.
        self.snapshot = Snapshot()
        self._stale = asyncio.Event()
        self._sidecars_read = -math.inf  # when (monotonic) the live sidecars were last read
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._read()
        self._task = asyncio.create_task(self._run(), name="store-counts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def changed(self) -> None:
        self._stale.set()

    async def _run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(SIDECARS_SECONDS - MIN_SECONDS):
                    await self._stale.wait()
            except TimeoutError:
                pass
            self._stale.clear()
            try:
                await self._read()
            except Exception:  # the store is away: keep the last numbers, try again
                log.warning("cannot read the store's counts for telemetry", exc_info=True)
                self._stale.set()
            await asyncio.sleep(MIN_SECONDS)

    async def _read(self) -> None:
        if not self.leading():
            self._sidecars_read = -math.inf  # a replica that takes the lead reads them at once
            async with self.store.read() as tx:
                names = await tx.environment_names()
            self.snapshot = Snapshot(environments=tuple(sorted(names)))
            if self.on_read is not None:
                self.on_read(self.snapshot)
            return
        # The live sidecars every SIDECARS_SECONDS, not at each commit: a deployment commits no
        # report, and under a fleet reading every live sidecar is the largest read the leader makes.
        read_sidecars = time.monotonic() - self._sidecars_read >= SIDECARS_SECONDS - MIN_SECONDS
        sidecars = self.snapshot.sidecars
        async with self.store.read() as tx:
            names = await tx.environment_names()
            deployments = await tx.deployment_counts()
            paused = await tx.paused_counts()
            if read_sidecars:
                self._sidecars_read = time.monotonic()
                # Each sidecar once, by its newest word, however many replicas heard it.
                counts = serving_counts(await tx.live_contents(self.clock.now()))
                sidecars = {key: 0 for key in self.snapshot.sidecars} | counts
        environments = names | {environment for environment, _ in deployments}
        self.snapshot = Snapshot(
            environments=tuple(sorted(environments)),
            deployments=deployments,
            paused=paused,
            sidecars=sidecars,
        )
        if self.on_read is not None:
            self.on_read(self.snapshot)

"""The replica's flush: what this replica holds in memory of the fleet, written in one batch per interval.

Runs on every replica, leader or not: each holds the heartbeats of the
sidecars that report to it and the metric windows they sent it
(usecases.live_sidecars, usecases.rollups), and only it can write them.
Each pass is at most two telemetry transactions (no revision, no revision
lock): the metric rollups, then the last reports of the sidecars heard since
they were last written (none, when there is nothing new). `stop()` — a graceful
stop, after the server has stopped taking reports — runs one last pass, so
that nothing acknowledged is lost; a replica that dies loses what it held
since its last pass.
"""

from __future__ import annotations

import logging

from .background import Loop
from .errors import RegistryError
from .usecases.live_sidecars import LiveSidecars
from .usecases.rollups import MetricRollups

log = logging.getLogger("dspy_registry.replica_flush")


class ReplicaFlush:
    def __init__(
        self,
        live: LiveSidecars,
        rollups: MetricRollups,
        *,
        interval: float,
        metrics_retention: float,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"--telemetry-flush must be positive, not {interval}")
        self.live = live
        self.rollups = rollups
        self.interval = interval
        self.metrics_retention = metrics_retention
        self._loop = Loop("replica-flush", self.run_once, idle=interval, wait_first=True, log=log)

    async def run_once(self) -> None:
        try:
            await self.rollups.flush(self.metrics_retention)
        finally:
            await self.live.flush()  # the sidecars too, whether or not the rollups could be written

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        """Stop the loop, then write what is held one last time."""
        await self._loop.stop()
        try:
            await self.run_once()
        except RegistryError as exc:
            log.warning("the last flush failed: what this replica held since its last one is lost: %s", exc)

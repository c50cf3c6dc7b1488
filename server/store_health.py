"""The store's health, as grpc.health.v1 tells it: a probe of the database every second.

    ""  and each API service     SERVING while the store answers reads; NOT_SERVING while
                                 the database cannot be reached (calls get UNAVAILABLE)
    "dspy_registry.writes"       SERVING while writes can commit as well; NOT_SERVING while
                                 the store is unreachable or read-only (a SQLite disk that is
                                 full: reads are served, writes get RESOURCE_EXHAUSTED)

A load balancer checks "" (or a service) and so keeps sending reads to a
replica whose disk is full, which can still serve them; whoever must know
that writes will work checks "dspy_registry.writes". Each change is one log
line saying why. The probe is the store's `ping()`: a trivial query with a
short timeout, run on a connection of its own on PostgreSQL, so that it
notices the database's return while the store refuses every other call.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from grpc_health.v1 import health, health_pb2

from .background import Loop
from .store.base import AVAILABLE, Availability, Store

log = logging.getLogger("dspy_registry.server")

WRITES = "dspy_registry.writes"
INTERVAL_SECONDS = 1.0
TIMEOUT_SECONDS = 2.0  # a probe unanswered for this long finds the database down
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class StoreHealth:
    """Probes the store on a timer and keeps the health statuses in step with what it finds."""

    def __init__(
        self,
        store: Store,
        servicer: health.aio.HealthServicer,  # type: ignore[name-defined]
        services: Sequence[str],
        *,
        interval: float = INTERVAL_SECONDS,
        timeout: float = TIMEOUT_SECONDS,
    ) -> None:
        self.store = store
        self.servicer = servicer
        self.services = list(services)
        self.interval = interval
        self.timeout = timeout
        self.current: Availability | None = None
        self._loop = Loop("store health", self._probe, idle=interval, wait_first=True, log=log)

    async def start(self) -> None:
        """Probe once now, so that the first statuses say what the store can do, then every interval."""
        await self.check()
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def _probe(self) -> None:
        await self.check()

    async def check(self) -> Availability:
        """One probe; the statuses change (and a line is logged) only when what the store can do did."""
        try:
            found = await self.store.ping(self.timeout)
        except Exception as exc:  # a probe's own bug must not stop the probing, nor say SERVING
            log.exception("the store's health probe failed")
            found = Availability(readable=False, writable=False, detail=f"the probe failed: {exc!r}")
        before = self.current
        self.current = found
        if before is not None and (before.readable, before.writable) == (found.readable, found.writable):
            return found
        for name in self.services:
            await self.servicer.set(name, SERVING if found.readable else NOT_SERVING)
        await self.servicer.set(WRITES, SERVING if found.writable else NOT_SERVING)
        _log_change(before, found)
        return found


def _log_change(before: Availability | None, found: Availability) -> None:
    if found == AVAILABLE:
        if before is not None:
            log.info("store available again: health SERVING, writes SERVING")
    elif not found.readable:
        log.error("store unavailable: health NOT_SERVING, calls get UNAVAILABLE (%s)", found.detail)
    else:
        log.warning(
            "store read-only: health SERVING, %s NOT_SERVING, writes get RESOURCE_EXHAUSTED (%s)",
            WRITES,
            found.detail,
        )

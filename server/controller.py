"""The controller: a level-based loop that takes every step the store says is due.

Canary steps and blue-green switches are due at their deployment's
`next_step_time`. The loop never remembers what it saw: each pass asks the
store what is due and takes each step in a transaction that re-reads the
deployment first, so a restart (even after SIGKILL) carries on from what was
committed, and two replicas cannot apply a step twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from .domain.model import Event
from .usecases.deployments import Deployments

log = logging.getLogger("dspy_registry.controller")

IDLE_SECONDS = 1.0  # how long to sleep when nothing is due, at most
MIN_SECONDS = 0.05


class Controller:
    def __init__(self, deployments: Deployments) -> None:
        self.deployments = deployments
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def poke(self) -> None:
        """Something changed (a deployment started): look again now."""
        self._wake.set()

    def on_commit(self, events: Sequence[Event]) -> None:
        """Subscribed to the store: a deployment event may have brought a step closer."""
        if any(e.kind.startswith("deployment.") for e in events):
            self.poke()

    async def run_once(self) -> int:
        return await self.deployments.reconcile()

    async def _loop(self) -> None:
        while True:
            try:
                taken = await self.run_once()
                if taken:
                    log.info("controller took %d step(s)", taken)
                next_due = await self.deployments.next_due()
            except Exception:  # the loop outlives any one failure
                log.warning("controller pass failed; retrying", exc_info=True)
                next_due = None
            delay = IDLE_SECONDS
            if next_due is not None:
                delay = min(IDLE_SECONDS, max(MIN_SECONDS, (next_due - datetime.now(UTC)).total_seconds()))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="controller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

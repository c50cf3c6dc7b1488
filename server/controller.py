"""The controller: a level-based loop that takes every step the store says is due.

Canary steps and blue-green switches are due at their deployment's
`next_step_time`. The loop never remembers what it saw: each pass asks the
store what is due and takes each step in a transaction that re-reads the
deployment first, so a restart (even after SIGKILL) carries on from what was
committed, and two replicas cannot apply a step twice.

Beside it runs analysis: every deployment in progress, and every one that
succeeded within its environment's monitoring window, is assessed each
analysis interval (domain.health), and rolled back automatically when its
version is UNHEALTHY and the policy allows it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

from .background import Loop
from .domain.clock import SYSTEM_CLOCK, Clock
from .domain.deployments import State
from .domain.events import is_deployment_kind
from .domain.model import Event
from .usecases.deployments import Deployments

log = logging.getLogger("dspy_registry.controller")
_IN_PROGRESS = State.IN_PROGRESS.name  # a deployment event's `state` (events.DeploymentChanged)

IDLE_SECONDS = 1.0  # how long to sleep when nothing is due, at most
MIN_SECONDS = 0.05
ANALYSIS_TICK_MIN_SECONDS = 0.05  # bounds on how often analysis looks for deployments whose interval passed
ANALYSIS_TICK_MAX_SECONDS = 1.0


class Controller:
    def __init__(self, deployments: Deployments, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.deployments = deployments
        self.clock = clock
        self._analysed: dict[str, float] = {}  # deployment id -> when (monotonic) it was last analysed
        self.tick = ANALYSIS_TICK_MAX_SECONDS
        self._steps = Loop("controller", self._step, idle=IDLE_SECONDS, floor=MIN_SECONDS, log=log)
        self._analysis = Loop("analysis", self._analyse, idle=ANALYSIS_TICK_MAX_SECONDS, log=log)

    def poke(self) -> None:
        """Something changed (a deployment started): look again now."""
        self._steps.poke()

    def on_commit(self, events: Sequence[Event]) -> None:
        """Subscribed to the store: a deployment left in progress may have a step due sooner.

        Only one in progress has steps (`due_deployments`); its every change commits an event that
        says so. A REPLACE deployment that succeeded at once, as every auto-deploy on registration
        does, brings none closer: a pass for it was two reads, each a thread hop, per commit.
        """
        if any(is_deployment_kind(e.kind) and e.data.get("state") == _IN_PROGRESS for e in events):
            self.poke()

    async def run_once(self) -> int:
        return await self.deployments.reconcile(self.clock.now())

    async def _step(self) -> float | None:
        """One pass of the controller: the steps due now; the seconds until the next one is due."""
        taken = await self.run_once()
        if taken:
            log.info("controller took %d step(s)", taken)
        next_due = await self.deployments.next_due()
        return None if next_due is None else (next_due - self.clock.now()).total_seconds()

    async def analyse_once(self) -> int:
        """Analyse each watched deployment whose interval has passed; how many were rolled back."""
        now = time.monotonic()
        watched = await self.deployments.watched_deployments()
        shortest = min((interval for _, interval in watched), default=ANALYSIS_TICK_MAX_SECONDS * 4)
        # A quarter of the shortest interval: an analysis comes at most that late, and an idle
        # server (nothing watched) looks once a second.
        self.tick = min(ANALYSIS_TICK_MAX_SECONDS, max(ANALYSIS_TICK_MIN_SECONDS, shortest / 4))
        self._analysed = {i: t for i, t in self._analysed.items() if i in {w for w, _ in watched}}
        rolled_back = 0
        for deployment_id, interval in watched:
            if now - self._analysed.get(deployment_id, -math.inf) < interval:
                continue
            self._analysed[deployment_id] = now
            try:
                rolled_back += await self.deployments.analyse(deployment_id)
            except Exception:  # one deployment's failure must not stop the others' analysis
                log.warning("analysis of deployments/%s failed", deployment_id, exc_info=True)
        return rolled_back

    async def _analyse(self) -> float:
        await self.analyse_once()
        return self.tick

    def start(self) -> None:
        self._steps.start()
        self._analysis.start()

    async def stop(self) -> None:
        await self._steps.stop()
        await self._analysis.stop()

"""One leader for the background work: the replica holding the store's leader lock runs it.

The background work — the controller's steps, analysis, the webhook notifier
and maintenance — is store-wide: one replica doing it is enough, N replicas
doing it multiply its reads and lock attempts by N and count store-wide
numbers N times. Every replica still serves every RPC; only these duties
follow the lock.

    poll            every POLL_SECONDS: take the lock if it is free, or check
                    it is still held (store/postgres_leader.py); the first
                    poll is made in `start()`, so a lone server leads at once
    lock lost       the lock's connection dropped: stop leading at once, not
                    at the next poll (another replica may be leading already)
    each change     one log line; `leading` and `leader` for the telemetry
                    gauge and GetDeploymentStatus

Each duty re-reads the store for what to do and takes each step in a
transaction that checks it is still due, so a step begun by a leader that
dies is finished or undone by its commit, and a new leader carries on from
what is committed; a webhook delivery leased by the old leader is retried
when its lease runs out (at least once, recorded once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from .background import Loop
from .store.base import LeaderLock, Store

log = logging.getLogger("dspy_registry.leader")

POLL_SECONDS = 1.0


class Duty(Protocol):
    """Background work that runs on the leader only: started on taking the lead, stopped on losing it."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...


class Leadership:
    def __init__(self, store: Store, duties: Sequence[Duty], *, poll_seconds: float = POLL_SECONDS) -> None:
        self.store = store
        self.duties = list(duties)
        self.replica = ""  # this replica's name, once started
        self.leading = False  # whether this replica leads, as telemetry and the log tell it
        self._running = False  # whether the duties run here; follows `leading` under `_switch`
        self.leader = ""  # the replica that held the lock at the last poll; "" if none, or unknown
        self._lock: LeaderLock | None = None
        self._switch = asyncio.Lock()  # one change at a time: the duties start and stop in order
        self._changes: set[asyncio.Task[None]] = set()
        self._loop = Loop("leader", self._poll, idle=poll_seconds, wait_first=True, log=log)
        # Told when this replica takes or gives up the lead (telemetry reads the store-wide numbers anew).
        self.on_change: Callable[[], None] | None = None

    async def start(self, replica: str) -> None:
        """Claim the lead as `replica` now (and every POLL_SECONDS from now on)."""
        self.replica = replica
        self._lock = self.store.leader_lock(replica, self._lost)
        await self._poll()
        self._loop.start()

    async def stop(self) -> None:
        """Stop polling, stop the duties if they run here, and let another replica lead."""
        await self._loop.stop()
        if self._changes:
            await asyncio.gather(*self._changes, return_exceptions=True)
        try:
            await self._become(False, "the server is stopping")
        finally:  # a duty that fails to stop must not keep the lock (and its connection) open
            if self._lock is not None:
                await self._lock.release()

    async def _poll(self) -> None:
        assert self._lock is not None
        claim = await self._lock.poll()
        if claim.leader != self.leader and not claim.held and claim.leader:
            log.info("the leader is %s", claim.leader, extra={"leader": claim.leader})
        self.leader = claim.leader
        await self._become(claim.held, "took the leader lock" if claim.held else "lost the leader lock")

    def _lost(self) -> None:
        """The lock's connection dropped: the lock is gone already, so the duties stop now."""
        self.leader = ""
        self.leading = False  # at once: the gauge must not say 1 while the duties are being stopped
        task = asyncio.get_running_loop().create_task(self._step_down())
        self._changes.add(task)
        task.add_done_callback(self._changes.discard)

    async def _step_down(self) -> None:
        try:
            await self._become(False, "the leader lock's connection dropped")
        except Exception:  # a task no one awaits: its failure is logged here or nowhere
            log.exception("stopping the background work failed")

    async def _become(self, leading: bool, why: str) -> None:
        async with self._switch:
            self.leading = leading
            if leading == self._running:
                return
            self._running = leading
            if self.on_change is not None:
                self.on_change()
            extra = {"replica": self.replica, "leading": leading}
            if leading:
                for duty in self.duties:
                    duty.start()
                log.info(
                    "%s leads (%s): it runs the controller, analysis, webhooks and maintenance",
                    self.replica,
                    why,
                    extra=extra,
                )
            else:
                for duty in self.duties:
                    await duty.stop()
                log.warning("%s no longer leads: %s", self.replica, why, extra=extra)

"""The server's background loops, written once: the controller, analysis, the notifier, maintenance
and the store's health probe each give a `Loop` one pass to run again and again.

    pass            awaited; returns the seconds until it wants to run again (None: `idle`)
    poke()          run the next pass now (something it waits for has just committed)
    a failure       logged, and the pass is tried again after `idle`; the loop never ends by itself
    stop()          cancels the pass in progress and waits for it

A poke is never lost: the wake-up is cleared before a pass starts, so a poke
that arrives while a pass runs makes the next one start at once (a
deployment committed during the controller's pass is stepped without waiting
out the idle delay). A store fault (the database away, a full disk) is one
log line without a traceback, since it repeats every pass of an outage;
anything else keeps its traceback.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable

from .errors import ResourceExhausted, StoreUnavailable

Pass = Callable[[], Awaitable[float | None]]


class Loop:
    def __init__(
        self,
        name: str,
        run: Pass,
        *,
        idle: float,
        floor: float = 0.0,
        wait_first: bool = False,
        log: logging.Logger,
    ) -> None:
        """`run` is one pass; `idle` the delay when it names none, or after a failure; `floor` the
        shortest delay it may ask for; `wait_first` waits a delay before the first pass."""
        self.name = name
        self.run = run
        self.idle = idle
        self.floor = floor
        self.wait_first = wait_first
        self.log = log
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def poke(self) -> None:
        self._wake.set()

    def start(self) -> None:
        # A context of its own: background work never runs as the call that happened to start it
        # (the request logs and the api layer read the call from the context).
        self._task = asyncio.get_running_loop().create_task(
            self._forever(), name=self.name, context=contextvars.Context()
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _forever(self) -> None:
        if self.wait_first:
            await self._sleep(self.idle)
        while True:
            self._wake.clear()  # before the pass: a poke during it starts the next one at once
            try:
                delay = await self.run()
            except (StoreUnavailable, ResourceExhausted) as fault:
                self.log.warning("%s pass failed; retrying: %s", self.name, fault.message)
                delay = None
            except Exception:  # the loop outlives any one failure
                self.log.warning("%s pass failed; retrying", self.name, exc_info=True)
                delay = None
            await self._sleep(self.idle if delay is None else max(self.floor, min(self.idle, delay)))

    async def _sleep(self, seconds: float) -> None:
        """`seconds`, or less if poked.

        Not `asyncio.wait_for`: on Python 3.11 it swallows a cancellation that arrives in the same
        turn as the poke it waits for (CPython gh-86296), so a commit that pokes the loop as the
        server stops left `stop()` waiting forever on a loop that went on."""
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass

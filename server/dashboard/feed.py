"""The dashboard's live feed: one watch of the server's own, shared by every open tab.

The server-sent event streams of the dashboard (routes.py) do not each open a
watch or poll: the feed holds one subscriber on the WatchEvents hub (watch.py),
for every program, and hands each decoded event to the tabs that follow its
program. What commits no event — metric windows and sidecar reports, which are
many and small — reaches it as a pulse (`touched`), coalesced to one per
program and environment every `PULSE_SECONDS`: a tab told of one fetches the
status again, with its own token, through the same routes and checks as any
other read.

A tab that reads too slowly is cut off (its queue is bounded) and the browser
opens its stream again; when the hub cuts the feed off (it fell behind, or the
hub lost commits), the feed subscribes again and tells every tab to read
everything again (`reset`). When the hub closes (the server stops), every
stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from dspy_registry.v1 import deployment_pb2 as dpb

from ..watch import Hub, Selector, Subscriber

log = logging.getLogger("dspy_registry.dashboard")

PULSE_SECONDS = 0.5  # metric and sidecar reports of one target, told at most this often
TAB_QUEUE = 256  # items a tab may fall behind by before it is cut off
_WAIT = 3600.0  # the feed's wait for the hub; the hub wakes it for anything, and so does close()
WAKE = (-1, b"")  # a wake-up with no message, as the hub's own


@dataclass(eq=False)
class Tab:
    """One open stream: the program it follows and what waits to be sent to it."""

    program: str
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=lambda: asyncio.Queue(TAB_QUEUE))
    recheck: bool = False  # a grant, token or principal changed: authorize again before sending
    ended: bool = False  # cut off or closed: the stream ends at the next read

    def put(self, item: dict[str, Any] | None) -> None:
        if self.ended:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.ended = True  # the browser opens its stream again and reads everything anew
            self.queue = asyncio.Queue(1)
            self.queue.put_nowait(None)

    async def next(self, timeout: float) -> dict[str, Any] | None:
        """The next item; {} when none came within `timeout` (a keep-alive); None at the end."""
        if self.ended and self.queue.empty():
            return None
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return {}


class LiveFeed:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._tabs: set[Tab] = set()
        self._task: asyncio.Task[None] | None = None  # the one reader of the hub, while tabs are open
        self._sub: Subscriber | None = None  # what it reads
        self._pulses: set[tuple[str, str]] = set()  # (program, environment) touched since the last pulse
        self._pulse_timer: asyncio.TimerHandle | None = None

    def open(self, program: str) -> Tab:
        tab = Tab(program)
        if self.hub.closed:
            tab.ended = True
            return tab
        self._tabs.add(tab)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._follow())
        return tab

    def close(self, tab: Tab) -> None:
        self._tabs.discard(tab)
        tab.ended = True
        if not self._tabs and self._sub is not None:
            self._sub.queue.put_nowait(WAKE)  # the last tab went: the reader lets the hub go

    def __len__(self) -> int:
        return len(self._tabs)

    def touched(self, program: str, environment: str) -> None:
        """Metric windows or a sidecar report of `program` in `environment` were committed."""
        if not self._tabs:
            return
        self._pulses.add((program, environment))
        if self._pulse_timer is None:
            self._pulse_timer = asyncio.get_running_loop().call_later(PULSE_SECONDS, self._pulse)

    def _pulse(self) -> None:
        self._pulse_timer = None
        pulses, self._pulses = self._pulses, set()
        for program, environment in sorted(pulses):
            self._send(program, {"type": "pulse", "program": program, "environment": environment})

    def _end_all(self) -> None:
        """Every open stream ends once it has sent what it holds."""
        for tab in list(self._tabs):
            tab.put(None)
            self.close(tab)

    def _send(self, program: str, item: dict[str, Any]) -> None:
        for tab in list(self._tabs):
            if tab.program == program:
                tab.put(item)

    async def stop(self) -> None:
        """End every stream (the server stops)."""
        self._end_all()
        if self._pulse_timer is not None:
            self._pulse_timer.cancel()
            self._pulse_timer = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self) -> None:
        sub = self._sub = self.hub.subscribe((Selector("*", ""),))
        try:
            while self._tabs:
                got = await sub.queue.get(_WAIT)
                if sub.closed:
                    self._end_all()
                    return
                if sub.overflowed or sub.lost:
                    # Missed commits: a new subscriber, and every tab reads the state anew.
                    self.hub.unsubscribe(sub)
                    sub = self._sub = self.hub.subscribe((Selector("*", ""),))
                    for tab in list(self._tabs):
                        tab.put({"type": "reset"})
                    continue
                if sub.recheck:
                    sub.recheck = False
                    for tab in self._tabs:
                        tab.recheck = True
                if got is not None and got[0] >= 0:  # -1: a wake-up, no message
                    self._hand_out(got[1])
        except Exception:
            # A defect of ours: the streams end (the browsers open them again, and a new reader with
            # them) rather than stay open and hear nothing.
            log.exception("the dashboard's live feed failed")
            self._end_all()
        finally:
            self.hub.unsubscribe(sub)
            self._sub = None

    def _hand_out(self, message: bytes) -> None:
        response = dpb.WatchEventsResponse.FromString(message)
        for event in response.events.events:
            self._send(event.program, _event(event, response.revision))


def _event(event: Any, revision: int) -> dict[str, Any]:
    return {
        "type": "event",
        "revision": revision,
        "kind": dpb.DeploymentEventKind.Name(event.kind).removeprefix("DEPLOYMENT_EVENT_KIND_").lower(),
        "deployment": event.deployment,
        "program": event.program,
        "environment": event.environment,
        "version": event.version,
        "state": dpb.DeploymentState.Name(event.state).removeprefix("DEPLOYMENT_STATE_").lower(),
        "step": event.step,
        "weight_percent": event.weight_percent,
        "actor": event.actor,
        "reason": event.reason,
    }

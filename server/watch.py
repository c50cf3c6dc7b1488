"""The watch hubs: every committed revision, read once, handed to every matching watcher.

The store tells a hub of each commit, in revision order (this replica's at
once; other replicas' through LISTEN/NOTIFY and the event log). For each
revision the hub picks its items — target changes for WatchTargets
(`target.updated` events carry the whole target), deployment events for
WatchEvents — and puts them on the bounded queue of every subscriber whose
selectors match. A message is encoded once per distinct set of targets, so
sidecars watching the same program share the bytes. A subscriber whose queue
is full is cut off (RESOURCE_EXHAUSTED) and resumes from its last revision:
it never blocks the others and never grows memory without bound. The cut
reaches a watcher at once even while its stream waits for a client that
reads nothing (`Subscriber.on_cut`). When the server stops, `close()` ends
every watcher (UNAVAILABLE), so that its sidecar resumes on another replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .domain.access import glob_matches
from .domain.deployments import Deployment, Target
from .domain.deployments import Kind as DeploymentKind
from .domain.events import (
    DeploymentChanged,
    changes_access,
    deployment_kind,
    is_deployment_kind,
    target_update,
)
from .domain.model import Event

log = logging.getLogger("dspy_registry.watch")

QUEUE_SIZE = 1024  # revisions a watcher may fall behind by before it is cut off


@dataclass(frozen=True)
class Selector:
    program: str  # a name or a glob
    environment: str  # "" for every environment

    def matches(self, t: Target | DeploymentEvent | Deployment) -> bool:
        return glob_matches(self.program, t.program) and self.environment in ("", t.environment)


@dataclass(frozen=True, kw_only=True)
class DeploymentEvent:
    """A deployment lifecycle event, as WatchEvents carries it."""

    id: str  # {revision}-{index}
    kind: DeploymentKind
    revision: int
    time: datetime | None
    deployment: str
    program: str
    environment: str
    version: str
    state: str
    step: int  # Deployment.current_step after it
    weight_percent: int
    actor: str
    reason: str
    related: str


def deployment_events(events: Sequence[Event]) -> list[DeploymentEvent]:
    out = []
    for index, e in enumerate(events):
        if not is_deployment_kind(e.kind):
            continue
        kind = deployment_kind(e.kind)
        if kind is None:
            # A newer release wrote a lifecycle event this one has no DeploymentEventKind for.
            # Sent as UNSPECIFIED it would tell a dashboard that something happened without
            # saying what; raising would end every watch at this revision, and again at each
            # resume. So this release's watchers do without it, and the log says so.
            log.warning("revision %d: skipped event %s of unknown kind %r", e.revision, e.resource, e.kind)
            continue
        c = DeploymentChanged.from_json(e.data)
        out.append(
            DeploymentEvent(
                id=f"{e.revision}-{index}",
                kind=kind,
                revision=e.revision,
                time=e.create_time,
                deployment=e.resource,
                program=c.program,
                environment=c.environment,
                version=c.version,
                state=c.state,
                step=c.current_step,
                weight_percent=c.weight_percent,
                actor=c.actor,
                reason=c.reason,
                related=c.related,
            )
        )
    return out


def target_changes(events: Sequence[Event]) -> list[Target]:
    return [t for e in events if (t := target_update(e)) is not None]


Message = tuple[int, bytes]  # (revision, encoded response)


class Mailbox:
    """A bounded FIFO with one reader: what asyncio.Queue does, for a fraction of its cost.

    At 10 000 streams asyncio.Queue and asyncio.timeout were a seventh of the
    server's CPU per published change; this keeps one deque, one waiter and
    one timer. The timer is not made and cancelled per wait (a watch waits once
    per message it sends, so that was a timer per delivery): a wait only moves
    the deadline, and a timer that fires before the deadline sets itself again
    for it, so a stream that receives a change every second has one timer per
    progress interval. The loop is looked up once, at the first wait: on Python
    3.11 `asyncio.get_running_loop()` is a `getpid` system call, one per delivery
    at 10 000 streams (py-spy: 3 % of the loop thread's samples during fan-outs).
    """

    __slots__ = ("maxsize", "_items", "_waiter", "_deadline", "_timer", "_loop")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque[Message] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._deadline = 0.0  # loop.time() when the wait in progress (or the last one) times out
        self._timer: asyncio.TimerHandle | None = None  # at or before the deadline; None: none set
        self._loop: asyncio.AbstractEventLoop | None = None  # its reader's, from its first wait

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Message) -> bool:
        """False, and nothing added, when full."""
        if len(self._items) >= self.maxsize:
            return False
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    def get_nowait(self) -> Message:
        return self._items.popleft()

    def wait(self, timeout: float) -> asyncio.Future[None]:
        """A future done when a message comes or `timeout` seconds pass (`empty()` then says which).

        For an empty mailbox. A future, not a coroutine: the watch awaits it directly, without a
        coroutine made, run and collected per delivery (`get` is the same wait as one).
        """
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()  # a done one left here is never set again
        self._deadline = deadline = loop.time() + timeout
        timer = self._timer
        if timer is None or timer.when() > deadline:  # none set, or set for a longer wait
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline, self._expire)
        return waiter

    async def get(self, timeout: float) -> Message | None:
        """The next message; None when none came within `timeout` seconds."""
        if not self._items:
            await self.wait(timeout)
            if not self._items:
                return None
        return self._items.popleft()

    def _expire(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # not waiting: the next wait sets a timer of its own
        loop = waiter.get_loop()
        # The wait began after this timer was set: wait on. (A millisecond's slack: a loop may run
        # a timer that early, and setting it again for the rest would spin.)
        if loop.time() < self._deadline - 0.001:
            self._timer = loop.call_at(self._deadline, self._expire)
        else:
            waiter.set_result(None)

    def close(self) -> None:
        """Its reader is gone: drop the timer (it would hold the mailbox until it fires)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


@dataclass(eq=False, kw_only=True)
class Subscriber:
    selectors: tuple[Selector, ...]
    # WatchEvents: only these kinds, as deployments.Kind names in lower case (empty: all).
    kinds: frozenset[str] = frozenset()
    queue: Mailbox = field(default_factory=lambda: Mailbox(QUEUE_SIZE))
    overflowed: bool = False
    recheck: bool = False  # a grant, token or principal changed: authorize again
    lost: bool = False  # the hub may have missed commits: resume from the log
    closed: bool = False  # the server is stopping: resume on another replica
    gone: bool = False  # unsubscribed: deliveries still in the backlog skip it
    last: int = 0  # the last revision its stream took to send (set by the stream)
    # Called when the hub cuts it off (overflowed, lost, closed): ends its stream even in the middle
    # of a send that waits for a client that reads nothing. Set by the stream that reads it.
    on_cut: Callable[[], None] | None = None

    def matches(self, item: Target | DeploymentEvent) -> bool:
        if isinstance(item, DeploymentEvent) and self.kinds and item.kind.name.lower() not in self.kinds:
            return False
        return any(s.matches(item) for s in self.selectors)


Item = Target | DeploymentEvent
Extract = Callable[[Sequence[Event]], Sequence[Any]]
Encode = Callable[[int, Sequence[Any]], bytes]


Interest = tuple[tuple[Selector, ...], frozenset[str]]

# Queue puts per turn of the event loop. A change for 10 000 watchers is handed
# out over many turns, so the write that caused it (and any other call) is
# answered between them instead of after the whole fan-out: at 10 000 streams,
# handing out all at once made that CreateDeployment take 537 ms instead of a
# few (`make bench ARGS="--only fanout"`).
DELIVERIES_PER_TURN = 256
# Deliveries waiting in the backlog, at most. Commits arriving faster than the
# loop hands them out would otherwise grow it without bound (each watcher's
# mailbox bound never triggers while its deliveries wait here): past this,
# every watcher is cut off as if it had fallen behind, and resumes.
MAX_BACKLOG = 1_000_000


class Hub:
    def __init__(self, encode: Encode, extract: Extract = target_changes) -> None:
        self.encode = encode
        self.extract = extract
        self.revision = 0  # the last revision the hub has taken to hand out
        self.handed_out = 0  # the last revision every matching watcher's queue has
        # Subscribers grouped by what they select: sidecars of one program all
        # select the same, so a commit is matched and encoded once per group,
        # not once per stream (at 10 000 streams matching alone was 13 % of the
        # server's CPU per published change).
        self._groups: dict[Interest, set[Subscriber]] = {}
        # Deliveries not yet made, in revision order, so that no watcher gets R+1 before R.
        self._backlog: deque[tuple[int, tuple[int, bytes], list[Subscriber]]] = deque()
        self._scheduled = False
        self._backlogged = 0  # deliveries in the backlog
        # Told (revision, seconds) when a revision is in every matching watcher's queue, the
        # seconds counted from on_commit: the fan-out delay (telemetry.py records it).
        self.on_handed_out: Callable[[int, float], None] | None = None
        self._taken: deque[tuple[int, float]] = deque()  # (revision, perf_counter) being handed out
        self.closed = False  # the server is stopping: no watcher is kept, none is taken
        self._awaited: list[tuple[int, asyncio.Future[None]]] = []  # reached(): (revision, its future)

    def start(self, revision: int) -> None:
        self.revision = self.handed_out = revision

    def subscribe(self, selectors: tuple[Selector, ...], kinds: frozenset[str] = frozenset()) -> Subscriber:
        sub = Subscriber(selectors=selectors, kinds=kinds)
        if self.closed:
            sub.closed = True
            _wake(sub)  # its stream ends as it reads the flag
            return sub
        self._groups.setdefault((selectors, kinds), set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        sub.gone = True
        sub.queue.close()
        interest = (sub.selectors, sub.kinds)
        group = self._groups.get(interest)
        if group is not None:
            group.discard(sub)
            if not group:
                del self._groups[interest]

    def subscribers(self) -> list[Subscriber]:
        return [sub for group in self._groups.values() for sub in group]

    def __len__(self) -> int:
        # list() copies the groups in one step: a metrics scrape calls this from its own thread.
        return sum(map(len, list(self._groups.values())))

    def on_commit(self, events: Sequence[Event]) -> None:
        """One committed revision's events (the store calls this in revision order)."""
        taken = time.perf_counter() if self.on_handed_out is not None else 0.0
        revision = events[-1].revision
        # Nobody to match them against, nothing to decode: the commits of a registry nobody watches.
        targets = self.extract(events) if self._groups else []
        if any(changes_access(e.kind) for e in events):
            for sub in self.subscribers():
                sub.recheck = True
                _wake(sub)
        encoded: dict[tuple[int, ...], bytes] = {}
        queued = len(self._backlog)
        for group in self._groups.values() if targets else ():
            first = next(iter(group))
            matching = [t for t in targets if first.matches(t)]
            if not matching:
                continue
            key = tuple(id(t) for t in matching)  # the same items: the same bytes
            message = encoded.get(key)
            if message is None:
                message = encoded[key] = self.encode(revision, matching)
            # The members as of this commit: one who subscribes later reads it from the log.
            self._backlog.append((revision, (revision, message), list(group)))
            self._backlogged += len(group)
        self.revision = max(self.revision, revision)
        if self._awaited:
            self._wake_awaiting()
        if self.on_handed_out is not None and len(self._backlog) > queued:
            self._taken.append((revision, taken))
        if self._backlogged > MAX_BACKLOG:
            self._cut_off_everyone()
        if not self._backlog:
            self.handed_out = self.revision
        elif not self._scheduled:
            self._deliver()

    async def reached(self, revision: int, timeout: float) -> bool:
        """Whether the hub takes `revision` within `timeout` seconds.

        Another replica's commit reaches this one through NOTIFY a moment after it
        commits: a watcher resuming here from it waits for that, rather than being
        told its revision is unknown.
        """
        if self.revision >= revision:
            return True
        awaited = asyncio.get_running_loop().create_future()
        entry = (revision, awaited)
        self._awaited.append(entry)
        try:
            await asyncio.wait({awaited}, timeout=timeout)
        finally:
            if entry in self._awaited:
                self._awaited.remove(entry)
        return awaited.done()

    def _wake_awaiting(self) -> None:
        waiting = []
        for revision, awaited in self._awaited:
            if revision <= self.revision:
                if not awaited.done():
                    awaited.set_result(None)
            else:
                waiting.append((revision, awaited))
        self._awaited = waiting

    def _cut_off_everyone(self) -> None:
        log.warning(
            "watch backlog over %d deliveries: every watcher resumes from its last revision", MAX_BACKLOG
        )
        for sub in self.subscribers():
            sub.overflowed = True
            _cut(sub)
        self._groups.clear()
        self._backlog.clear()
        self._backlogged = 0
        self._taken.clear()

    def _deliver(self) -> None:
        self._scheduled = False
        budget = DELIVERIES_PER_TURN
        backlog = self._backlog
        while backlog and budget > 0:
            revision, item, subs = backlog[0]
            while subs and budget > 0:
                sub = subs.pop()
                budget -= 1
                self._backlogged -= 1
                if sub.gone:
                    continue
                if not sub.queue.put_nowait(item):
                    sub.overflowed = True
                    self.unsubscribe(sub)
                    if sub.on_cut is not None:  # its stream may be stuck sending to a client that stopped
                        sub.on_cut()
            if not subs:
                backlog.popleft()
                if not backlog or backlog[0][0] != revision:
                    self.handed_out = max(self.handed_out, revision)
                    if self._taken:
                        self._report(revision)
        if backlog:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._deliver)
        else:
            self.handed_out = self.revision

    def _report(self, revision: int) -> None:
        now = time.perf_counter()
        while self._taken and self._taken[0][0] <= revision:
            taken, since = self._taken.popleft()
            if self.on_handed_out is not None:
                try:
                    self.on_handed_out(taken, now - since)
                except Exception:  # telemetry must never stall the fan-out
                    log.exception("fan-out observer failed")

    def on_reset(self) -> None:
        """The store may have missed commits: every watcher resumes from the log."""
        self._backlog.clear()
        self._backlogged = 0
        self._taken.clear()
        for sub in self.subscribers():
            sub.lost = True
            _cut(sub)
        self._groups.clear()

    def close(self) -> None:
        """The server is stopping: every watcher ends now (UNAVAILABLE) and resumes elsewhere."""
        self.closed = True
        self._backlog.clear()
        self._backlogged = 0
        self._taken.clear()
        for sub in self.subscribers():
            sub.closed = True
            _cut(sub)
        self._groups.clear()


_NOTHING = (-1, b"")


def _cut(sub: Subscriber) -> None:
    """Tell a watcher the hub let it go: wake its reader, and end a send its stream is stuck in."""
    _wake(sub)
    if sub.on_cut is not None:
        sub.on_cut()


def _wake(sub: Subscriber) -> None:
    """Wake a waiting watcher so that it sees its flags (a no-op message it will skip).

    A full mailbox needs no wake-up: its reader has messages to read first.
    """
    sub.queue.put_nowait(_NOTHING)

"""The watch hubs: every committed revision, read once, handed to every matching watcher.

The store tells a hub of each commit, in revision order (this replica's at
once; other replicas' through LISTEN/NOTIFY and the event log). For each
revision the hub picks its items — target changes for WatchTargets
(`target.updated` events carry the whole target), deployment events for
WatchEvents — and puts them on the bounded queue of every subscriber whose
selectors match. A message is encoded once per distinct set of targets, so
sidecars watching the same program share the bytes. A subscriber whose queue
is full is cut off (RESOURCE_EXHAUSTED) and resumes from its last revision:
it never blocks the others and never grows memory without bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .domain.access import glob_matches
from .domain.deployments import Deployment, Pinned, Target
from .domain.model import Event

log = logging.getLogger("dspy_registry.watch")

QUEUE_SIZE = 1024  # revisions a watcher may fall behind by before it is cut off


def target_from_event(e: Event) -> Target:
    d = e.data
    stable = Pinned(d["stable"], d.get("stable_digest") or "") if d.get("stable") else None
    candidate = Pinned(d["candidate"], d.get("candidate_digest") or "") if d.get("candidate") else None
    return Target(
        program=d["program"],
        environment=d["environment"],
        stable=stable,
        candidate=candidate,
        candidate_weight=int(d.get("weight_percent") or 0),
        deployment=d.get("deployment") or "",
        revision=e.revision,
        update_time=e.create_time,
    )


@dataclass(frozen=True)
class Selector:
    program: str  # a name or a glob
    environment: str  # "" for every environment

    def matches(self, t: Target | DeploymentEvent | Deployment) -> bool:
        return glob_matches(self.program, t.program) and self.environment in ("", t.environment)


@dataclass(frozen=True)
class DeploymentEvent:
    """A deployment lifecycle event, as WatchEvents carries it."""

    id: str  # {revision}-{index}
    kind: str  # created, approved, step_advanced, promoted, succeeded, ...
    revision: int
    time: datetime | None
    deployment: str
    program: str
    environment: str
    version: str
    state: str
    step: int
    weight_percent: int
    actor: str
    reason: str
    related: str


def deployment_events(events: Sequence[Event]) -> list[DeploymentEvent]:
    out = []
    for index, e in enumerate(events):
        if not e.kind.startswith("deployment."):
            continue
        d = e.data
        out.append(
            DeploymentEvent(
                f"{e.revision}-{index}",
                e.kind.removeprefix("deployment."),
                e.revision,
                e.create_time,
                e.resource,
                d["program"],
                d["environment"],
                d["version"],
                d["state"],
                int(d["step"]),
                int(d["weight_percent"]),
                d.get("actor", ""),
                d.get("reason", ""),
                d.get("related", ""),
            )  # fmt: skip
        )
    return out


def target_changes(events: Sequence[Event]) -> list[Target]:
    return [target_from_event(e) for e in events if e.kind == "target.updated"]


@dataclass(eq=False)
class Subscriber:
    selectors: tuple[Selector, ...]
    kinds: frozenset[str] = frozenset()  # WatchEvents: only these kinds (empty: all)
    queue: asyncio.Queue[tuple[int, bytes]] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    overflowed: bool = False
    recheck: bool = False  # a grant, token or principal changed: authorize again
    lost: bool = False  # the hub may have missed commits: resume from the log

    def matches(self, item: Target | DeploymentEvent) -> bool:
        if isinstance(item, DeploymentEvent) and self.kinds and item.kind not in self.kinds:
            return False
        return any(s.matches(item) for s in self.selectors)


Item = Target | DeploymentEvent
Extract = Callable[[Sequence[Event]], Sequence[Any]]
Encode = Callable[[int, Sequence[Any]], bytes]


class Hub:
    def __init__(self, encode: Encode, extract: Extract = target_changes) -> None:
        self.encode = encode
        self.extract = extract
        self.revision = 0  # the last revision the hub has handed out
        self._subscribers: set[Subscriber] = set()

    def start(self, revision: int) -> None:
        self.revision = revision

    def subscribe(self, selectors: tuple[Selector, ...], kinds: frozenset[str] = frozenset()) -> Subscriber:
        sub = Subscriber(selectors, kinds)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    def __len__(self) -> int:
        return len(self._subscribers)

    def on_commit(self, events: Sequence[Event]) -> None:
        """One committed revision's events (the store calls this in revision order)."""
        revision = events[-1].revision
        targets = self.extract(events)
        access = any(e.kind.startswith(("permission.", "token.", "principal.")) for e in events)
        encoded: dict[tuple[int, ...], bytes] = {}
        for sub in list(self._subscribers):
            if access:
                sub.recheck = True
            matching = [t for t in targets if sub.matches(t)]
            if not matching:
                continue
            key = tuple(id(t) for t in matching)  # the same items: the same bytes
            message = encoded.get(key)
            if message is None:
                message = encoded[key] = self.encode(revision, matching)
            try:
                sub.queue.put_nowait((revision, message))
            except asyncio.QueueFull:
                sub.overflowed = True
                self._subscribers.discard(sub)
        self.revision = max(self.revision, revision)
        for sub in self._subscribers:
            if sub.recheck or sub.overflowed:
                _wake(sub)

    def on_reset(self) -> None:
        """The store may have missed commits: every watcher resumes from the log."""
        for sub in list(self._subscribers):
            sub.lost = True
            _wake(sub)
        self._subscribers.clear()


_NOTHING = (-1, b"")


def _wake(sub: Subscriber) -> None:
    """Wake a waiting watcher so that it sees its flags (a no-op message it will skip)."""
    try:
        sub.queue.put_nowait(_NOTHING)
    except asyncio.QueueFull:
        pass

"""In-process commit notifications: who wants to know what a write just committed.

The store publishes the events of each committed transaction, in revision
order, after the commit is durable. Read caches use it to drop what a write
changed. (Replicas on one Postgres will learn of other replicas' commits
from the event log through LISTEN/NOTIFY, fed into the same listeners.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from ..domain.model import Event

log = logging.getLogger("dspy_registry.store")

Listener = Callable[[Sequence[Event]], None]


class CommitListeners:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def publish(self, events: Sequence[Event]) -> None:
        if not events:
            return
        for listener in self._listeners:
            try:
                listener(events)
            except Exception:  # a listener's bug must not fail a committed write
                log.exception("commit listener failed")

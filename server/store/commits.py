"""In-process commit notifications: who wants to know what a write just committed.

The store publishes the events of each committed transaction, in revision
order, after the commit is durable. Read caches use it to drop what a write
changed. On Postgres, other replicas' commits arrive the same way (LISTEN/
NOTIFY, then a read of the event log); when that feed is interrupted the
store calls `reset`, and listeners must forget whatever they derived.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from ..domain.model import Event

log = logging.getLogger("dspy_registry.store")

Listener = Callable[[Sequence[Event]], None]
Reset = Callable[[], None]


class CommitListeners:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._resets: list[Reset] = []

    def subscribe(self, listener: Listener, reset: Reset | None = None) -> None:
        self._listeners.append(listener)
        if reset is not None:
            self._resets.append(reset)

    def reset(self) -> None:
        """Commits may have been missed: every listener drops what it derived."""
        for reset in self._resets:
            try:
                reset()
            except Exception:
                log.exception("commit listener reset failed")

    def publish(self, events: Sequence[Event]) -> None:
        if not events:
            return
        for listener in self._listeners:
            try:
                listener(events)
            except Exception:  # a listener's bug must not fail a committed write
                log.exception("commit listener failed")

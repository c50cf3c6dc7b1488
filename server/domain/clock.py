"""Where the server's time comes from: one clock, handed to whatever reads the time of day.

Every use case, the controller and maintenance read "now" from the `Clock` they
were built with, never from `datetime.now()` themselves: the server runs on
`SYSTEM_CLOCK`, and a test that needs a canary's pause to pass moves a clock of
its own instead of sleeping through it. Delays measured by the event loop
(timeouts, the background loops' sleeps) stay on the loop's own clock.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The time of day, timezone-aware, in UTC."""
        ...


class SystemClock:
    """The machine's clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


SYSTEM_CLOCK: Clock = SystemClock()

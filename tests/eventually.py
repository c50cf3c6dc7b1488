"""Waiting for something the system does by itself (a controller step, a replica catching up, a file).

Tests poll what is observable rather than sleeping a guessed time: they pass
as soon as the thing happens and fail, naming it, when it never does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


def eventually(check: Callable[[], bool], what: str = "it happened", seconds: float = 30.0) -> None:
    """Poll `check` every 50 ms until it holds; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


async def until(
    check: Callable[[], bool | Awaitable[bool]], what: str = "it happened", seconds: float = 20.0
) -> None:
    """`eventually` for async tests: `check` may be a plain or an async predicate."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        assert asyncio.get_running_loop().time() < deadline, f"never: {what}"
        await asyncio.sleep(0.02)

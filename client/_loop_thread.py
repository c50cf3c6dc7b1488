"""An event loop of its own in a background thread: what the blocking twins (SyncRegistry,
SyncProgramWatcher) run their async client on, so that synchronous code calls it from any thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    @classmethod
    def building(cls, name: str, make: Callable[[], T]) -> tuple[LoopThread, T]:
        """A new loop thread and what `make()` returns when called on it (grpc.aio binds a channel to
        the loop it is created on: create it on ours). If `make` raises (a bad setting, a missing
        token file), the thread is stopped before the error goes on: it must not be left behind."""
        thread = cls(name)

        async def build() -> T:
            return make()

        try:
            return thread, thread.run(build())
        except BaseException:
            thread.stop()
            raise

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Runs `coroutine` on the loop; its result, once done (from any thread but the loop's)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    @property
    def closed(self) -> bool:
        return self.loop.is_closed()

    def stop(self) -> None:
        """Stops the loop and joins its thread; the loop is closed."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()

"""How long each store transaction takes, for whoever wants to know (telemetry's histogram).

Both backends pass every `read()` and `write()` through `TransactionTimer.timed`: from the moment
a transaction is asked for to its end, so that the time spent waiting for a pooled connection or
for the writer's turn counts too (that wait is what a caller feels when the store is the
bottleneck). With nobody listening it costs one attribute check.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from ..calls import Call
from .records import Records

# (kind: "read" | "write" | "telemetry", seconds). Whether it ended in an exception is not told: most are the
# caller's (a NOT_FOUND, a refused transition), and a store fault shows as UNAVAILABLE calls.
Observe = Callable[[str, float], None]


class TransactionTimer:
    def __init__(self) -> None:
        self.observe: Observe | None = None

    @asynccontextmanager
    async def timed(self, kind: str) -> AsyncIterator[None]:
        observe = self.observe
        if observe is None:
            yield
            return
        started = time.perf_counter()
        try:
            yield
        finally:
            observe(kind, time.perf_counter() - started)


class TimedTransactions:
    """`read()`, `write()` and `telemetry()` of a backend, each passed through its `timer`: the
    backend's own transactions are its `_read()`, `_write()` and `_telemetry()`."""

    timer: TransactionTimer

    def _read(self) -> AbstractAsyncContextManager[Records]:
        raise NotImplementedError

    def _write(self, call: Call | None = None) -> AbstractAsyncContextManager[Records]:
        raise NotImplementedError

    def _telemetry(self) -> AbstractAsyncContextManager[Records]:
        raise NotImplementedError

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Records]:
        async with self.timer.timed("read"), self._read() as records:
            yield records

    @asynccontextmanager
    async def write(self, call: Call | None = None) -> AsyncIterator[Records]:
        async with self.timer.timed("write"), self._write(call) as records:
            yield records

    @asynccontextmanager
    async def telemetry(self) -> AsyncIterator[Records]:
        async with self.timer.timed("telemetry"), self._telemetry() as records:
            yield records

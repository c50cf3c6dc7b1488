"""How long each store transaction takes, for whoever wants to know (telemetry's histogram).

Both backends pass every `read()` and `write()` through `TransactionTimer.timed`: from the moment
a transaction is asked for to its end, so that the time spent waiting for a pooled connection or
for the writer's turn counts too (that wait is what a caller feels when the store is the
bottleneck). With nobody listening it costs one attribute check.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType

from ..calls import Call
from .records import Records

# (kind: "read" | "write" | "telemetry", seconds). Whether it ended in an exception is not told: most are the
# caller's (a NOT_FOUND, a refused transition), and a store fault shows as UNAVAILABLE calls.
Observe = Callable[[str, float], None]


class TransactionTimer:
    def __init__(self) -> None:
        self.observe: Observe | None = None

    def timed(
        self, kind: str, transaction: AbstractAsyncContextManager[Records]
    ) -> AbstractAsyncContextManager[Records]:
        """`transaction`, timed from now to its end when somebody listens; else itself."""
        observe = self.observe
        if observe is None:
            return transaction
        return _Timed(kind, transaction, observe)


class _Timed:
    """A transaction timed from its asking to its end (a class, not @asynccontextmanager: every
    call's transaction passes through here, and a generator's enter and exit cost more)."""

    def __init__(
        self, kind: str, transaction: AbstractAsyncContextManager[Records], observe: Observe
    ) -> None:
        self.kind = kind
        self.transaction = transaction
        self.observe = observe
        self.started = time.perf_counter()

    async def __aenter__(self) -> Records:
        try:
            return await self.transaction.__aenter__()
        except BaseException:
            self.observe(self.kind, time.perf_counter() - self.started)
            raise

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        try:
            return await self.transaction.__aexit__(kind, value, tb)
        finally:
            self.observe(self.kind, time.perf_counter() - self.started)


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

    # Plain methods that hand the backend's transaction on (timed when somebody listens), rather than
    # context managers of their own wrapping it: one generator less to enter and leave per transaction.

    def read(self) -> AbstractAsyncContextManager[Records]:
        return self.timer.timed("read", self._read())

    def write(self, call: Call | None = None) -> AbstractAsyncContextManager[Records]:
        return self.timer.timed("write", self._write(call))

    def telemetry(self) -> AbstractAsyncContextManager[Records]:
        return self.timer.timed("telemetry", self._telemetry())

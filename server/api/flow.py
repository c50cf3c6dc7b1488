"""The calls in flight: which ones are let in, and how a server stream waits for its client.

Every call passes the `Gate` before anything is done for it (no
authentication, no store read). Beyond the configured number of calls in
progress or watch streams open it is refused RESOURCE_EXHAUSTED with a
retry hint, instead of joining a queue that only grows; once the server is
stopping it is refused UNAVAILABLE, with nothing of it done, so that any
client may send it again, to another replica. The gate counts the calls it
let in, and shutdown waits for exactly those (`drained`).

A server stream sends through its `Stream`, the one place where it waits
for a client. grpc.aio answers a send only when HTTP/2 flow control lets the
message out, so a client that stops reading (while its connection still
answers keepalive pings) would hold the send, and the stream, forever: a
check placed after the send never runs. `Streams` sweeps the open streams
and ends any whose send has waited longer than the send timeout; the watch
hub ends a stream at once, in the middle of its send, when its watcher fell
too far behind or the server stops (`Stream.end`).

A stream ended while its client reads nothing still has its last message
and its status queued in the transport, which hands them over if the client
reads again, and drops them with the connection; what the server held for
it (the watcher, its queue, the task) is gone at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from typing import Any

from ..errors import RegistryError, ResourceExhausted, ShuttingDown
from .context import Context

log = logging.getLogger("dspy_registry.rpc")

# The long-lived streams: counted against the watch limit, not the call limit, and ended at once on stop.
WATCH_METHODS = frozenset(
    {
        "/dspy_registry.v1.DeploymentService/WatchTargets",
        "/dspy_registry.v1.DeploymentService/WatchEvents",
    }
)

DEFAULT_MAX_CALLS = 2000
DEFAULT_MAX_WATCHES = 20_000
# How long a server stream's send may wait for a client that takes nothing before the stream is cut
# (RESOURCE_EXHAUSTED); `--send-timeout` overrides it.
SEND_TIMEOUT_SECONDS = 30.0
# The retry hints (google.rpc.RetryInfo) of the refusals. A call in progress ends within milliseconds;
# a watch slot frees when a sidecar leaves; a stopping server has closed its connections within a
# second, so a retry then finds another replica (or this one restarted).
CALLS_RETRY_SECONDS = 1.0
WATCHES_RETRY_SECONDS = 5.0
SHUTDOWN_RETRY_SECONDS = 1.0
QUIET_STEPS = 10  # Gate.quiet's while, in turns of the event loop


class Gate:
    """Admits calls while the server serves and within its limits; counts those in progress."""

    def __init__(self, max_calls: int = DEFAULT_MAX_CALLS, max_watches: int = DEFAULT_MAX_WATCHES) -> None:
        self.max_calls = max_calls
        self.max_watches = max_watches
        self.calls = 0  # unary and client-streaming calls, and finite server streams, in progress
        self.watches = 0  # WatchTargets and WatchEvents streams open
        self.closed = False
        self._drained = asyncio.Event()
        self.refused_since_close = 0
        # time.monotonic() when, after close(), a call last came or ended (its client may send the next)
        self._last_knock = 0.0

    def refusal(self, watch: bool) -> RegistryError | None:
        """Let one call in (None), or what its client is told (nothing of the call is done then): a
        value, not raised, so that the handler answers it outside any `except` (see handlers._end)."""
        if self.closed:
            self.refused_since_close += 1
            self._last_knock = time.monotonic()
            return ShuttingDown(
                "the server is shutting down: the call was not started; retry (another replica takes it)",
                retry_after=SHUTDOWN_RETRY_SECONDS,
            )
        if watch:
            if self.watches >= self.max_watches:
                return ResourceExhausted(
                    "watch_streams",
                    f"this server holds {self.watches} watch streams, its limit (--max-watch-streams); "
                    "retry later, or on another replica",
                    retry_after=WATCHES_RETRY_SECONDS,
                )
            self.watches += 1
        else:
            if self.calls >= self.max_calls:
                return ResourceExhausted(
                    "concurrent_calls",
                    f"this server has {self.calls} calls in progress, its limit (--max-concurrent-calls); "
                    "retry later",
                    retry_after=CALLS_RETRY_SECONDS,
                )
            self.calls += 1
        return None

    def release(self, watch: bool) -> None:
        """A call let in has ended."""
        if watch:
            self.watches -= 1
        else:
            self.calls -= 1
        if self.closed:
            self._last_knock = time.monotonic()
            if not self.calls and not self.watches:
                self._drained.set()

    def close(self) -> None:
        """Refuse every call from now on (UNAVAILABLE); `drained` then says when those in progress ended."""
        self.closed = True
        self._last_knock = time.monotonic()
        if not self.calls and not self.watches:
            self._drained.set()

    async def quiet(self, seconds: float, timeout: float) -> bool:
        """Wait, at most `timeout` seconds, until no call has come or ended for `seconds`; whether so.

        grpc takes the calls a client sends one by one: those it received but has not handed
        over yet wait in its queue, and stopping grpc cancels them (CANCELLED, which clients do
        not retry). Every call that comes is answered at once here, so a queue that had calls
        in it is empty once none has come for a while (nor ended: its client may send another).
        The while is counted in turns of the event loop, not on the clock alone: a server that
        stalled (the machine busy) has not looked at its queue meanwhile.
        """
        step = seconds / QUIET_STEPS
        deadline = time.monotonic() + max(timeout, 0.0)
        calm = 0
        while calm < QUIET_STEPS:
            began = time.monotonic()
            if began + step > deadline:
                return False
            await asyncio.sleep(step)
            calm = 0 if self._last_knock >= began else calm + 1
        return True

    async def drained(self, timeout: float) -> bool:
        """Wait, at most `timeout` seconds, until no call the gate let in is in progress; whether none is."""
        try:
            async with asyncio.timeout(max(timeout, 0.0)):  # not wait_for: see background.Loop._sleep
                await self._drained.wait()
        except TimeoutError:
            return False
        return True


class Stream:
    """One server stream's sends: the one place where it waits for its client."""

    __slots__ = ("task", "sending_since", "ending")

    def __init__(self) -> None:
        self.task = asyncio.current_task()
        self.sending_since = 0.0  # time.monotonic() when the send in progress began; 0.0 between sends
        self.ending: RegistryError | None = None  # why the stream ends, once something ended it

    async def pump(
        self, context: Context, messages: AsyncIterator[Any], before_first: Callable[[], None] | None = None
    ) -> None:
        """Send every message of `messages` (`before_first()` before the first); raise why the stream
        was ended, if something ended it."""
        # One coroutine for the whole stream, not one per message, and nothing looked up twice:
        # this is the fan-out's hot path.
        write = context.write
        clock = time.monotonic
        try:
            async for message in messages:
                if before_first is not None:
                    before_first()
                    before_first = None
                if self.ending is not None:
                    raise self.ending
                self.sending_since = clock()
                await write(message)
                self.sending_since = 0.0
        except asyncio.CancelledError:
            if self.ending is None or self.task is None:
                raise  # the client went away, or the server cancels every call
            # end() interrupted a send (or, had the send just returned, the wait for the next
            # message): the stream ends with its error, not as cancelled.
            self.task.uncancel()
            raise self.ending from None
        finally:
            self.sending_since = 0.0

    def end(self, error: RegistryError) -> None:
        """End the stream with `error`: at once if it waits in a send, else at its next send.

        A stream waiting for something else (a watch for its next change) is woken by whoever
        calls this (the hub puts a wake-up in its queue).
        """
        if self.ending is not None:
            return
        self.ending = error
        if self.sending_since and self.task is not None:
            self.task.cancel()


current_stream: ContextVar[Stream | None] = ContextVar("current_stream", default=None)
"""The server stream being served (set by handlers.py for each stream's task)."""


class Streams:
    """The server streams open, and the watchdog that ends those whose client takes nothing."""

    def __init__(self, send_timeout: float = SEND_TIMEOUT_SECONDS) -> None:
        self.send_timeout = send_timeout
        self._open: set[Stream] = set()
        self._task: asyncio.Task[None] | None = None
        self.stalled = 0  # streams ended by the watchdog since the start

    def __len__(self) -> int:
        return len(self._open)

    def open(self) -> Stream:
        """A stream for the calling task (the call's own)."""
        stream = Stream()
        self._open.add(stream)
        return stream

    def close(self, stream: Stream) -> None:
        self._open.discard(stream)

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="stream-send-watchdog")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _watch(self) -> None:
        # A stalled send is found within a quarter of the timeout (at most a second) after it passes.
        interval = min(self.send_timeout / 4, 1.0)
        while True:
            await asyncio.sleep(interval)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> int:
        """End every stream whose send began more than the send timeout before `now`; how many."""
        since = now - self.send_timeout
        stalled = [s for s in self._open if 0.0 < s.sending_since < since and s.ending is None]
        for stream in stalled:
            stream.end(
                ResourceExhausted(
                    "stream_send",
                    f"the client took no message for {self.send_timeout:g} s: the stream is cut "
                    "(a watch resumes from the last revision it received)",
                )
            )
        if stalled:
            self.stalled += len(stalled)
            log.warning(
                "cut %d streams whose client took no message for %gs", len(stalled), self.send_timeout
            )
        return len(stalled)

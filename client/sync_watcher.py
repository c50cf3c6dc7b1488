"""SyncProgramWatcher: `ProgramWatcher` for synchronous serving code (Flask, Ray Serve, plain threads).

    with SyncProgramWatcher.connect([("sentiment", "production")], sidecar_id=pod_name) as watcher:
        ...                                    # in any request thread:
        with watcher.route("sentiment", routing_key=user_id) as program:
            answer = run(program.value, request)

The watcher runs on an event loop of its own in a background thread; it watches, fetches, swaps
and reports there. `get`, `route`, `feedback` and `serving` read the one reference each target's
swap replaces, so any number of request threads call them without waiting on the loop: a request
that took a version keeps it to its end, as with the async watcher.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

from ._loop_thread import LoopThread
from .config import TlsArgument
from .watcher import Loaded, ProgramWatcher, Serving


class SyncProgramWatcher:
    """A blocking `ProgramWatcher`. Use `SyncProgramWatcher.connect(...)` in a `with` block."""

    def __init__(self, make: Callable[[], ProgramWatcher]) -> None:
        """A watcher that `make()` builds, on the loop thread (grpc.aio binds a channel to its loop)."""
        self._loop, self.watcher = LoopThread.building("dspy-registry-watcher", make)

    @classmethod
    def connect(
        cls,
        targets: Sequence[tuple[str, str]],
        *,
        sidecar_id: str,
        target: str | None = None,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        tls: TlsArgument = None,
        config_file: str | os.PathLike[str] | None = None,
        timeout: float | None = 30.0,
        retries: int = 3,
        options: Sequence[tuple[str, Any]] = (),
        **watcher_options: Any,
    ) -> SyncProgramWatcher:
        """As `ProgramWatcher.connect`; not started (`start()`, or a `with` block)."""
        return cls(
            lambda: ProgramWatcher.connect(
                targets,
                sidecar_id=sidecar_id,
                target=target,
                token=token,
                token_file=token_file,
                tls=tls,
                config_file=config_file,
                timeout=timeout,
                retries=retries,
                options=options,
                **watcher_options,
            )
        )

    def start(self) -> None:
        """Serve what the disk cache holds, then watch (on the loop thread)."""
        self._loop.run(self.watcher.start())

    def stop(self) -> None:
        """Stop watching, tell the server this process is leaving, and end the loop thread."""
        if self._loop.closed:
            return
        self._loop.run(self.watcher.stop())
        self._loop.stop()

    def wait_for(self, check: Callable[[SyncProgramWatcher], bool], timeout: float = 30.0) -> None:
        """Block until `check(self)` holds (re-checked after each swap; LookupError counts as not yet).

        Raises:
            TimeoutError: It did not hold within `timeout` seconds.
        """
        self._loop.run(self.watcher.wait_for(lambda _: check(self), timeout))

    def get(self, program: str, routing_key: str | None = None, environment: str | None = None) -> Loaded:
        """As `ProgramWatcher.get`: the version to run this request on."""
        return self.watcher.get(program, routing_key, environment)

    @contextlib.contextmanager
    def route(
        self, program: str, routing_key: str | None = None, environment: str | None = None
    ) -> Iterator[Loaded]:
        """As `ProgramWatcher.route`: `get()`, with the block's latency and failure measured."""
        with self.watcher.route(program, routing_key, environment) as loaded:
            yield loaded

    def feedback(
        self,
        program: str,
        correct: bool,
        routing_key: str | None = None,
        version: str | None = None,
        environment: str | None = None,
    ) -> None:
        """As `ProgramWatcher.feedback`: labelled feedback on an answer."""
        self.watcher.feedback(program, correct, routing_key, version, environment)

    def serving(self, program: str, environment: str | None = None) -> Serving:
        """What a target serves now (stable, candidate, weight, revision)."""
        return self.watcher.serving(program, environment)

    def __enter__(self) -> SyncProgramWatcher:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

"""What a serving process measures of each version it routes to, in short windows for ReportMetrics.

Per program × environment × version: requests, errors, a latency histogram
with the server's standard bucket bounds (so windows from every pod merge
exactly), and labelled feedback (correct / total) for accuracy. A window is
closed when drained; its start time identifies it, so a report that is sent
again after a failure is stored once.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from dspy_registry.v1 import deployment_pb2 as dpb

# The server's standard bounds (LatencyHistogram.bounds_ms empty means these), in ms.
BOUNDS_MS: tuple[float, ...] = (
    5, 10, 25, 50, 100, 250, 500, 1000, 1500, 2000, 2500, 3000, 5000, 10000, 30000, 60000,
)  # fmt: skip
MAX_PENDING_WINDOWS = 1000  # held for resending while the server is unreachable; older ones go


@dataclass(kw_only=True)
class _Open:
    start: datetime
    requests: int = 0
    errors: int = 0
    counts: list[int] = field(default_factory=lambda: [0] * (len(BOUNDS_MS) + 1))
    sum_ms: float = 0.0
    correct: int = 0
    labelled: int = 0


Key = tuple[str, str, str]  # program, environment, version


class Measurements:
    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.clock = clock
        # Requests are measured on the serving threads (SyncProgramWatcher, a threaded HTTP server)
        # while the watcher's loop closes the windows: the lock guards _open and _pending.
        self._lock = threading.Lock()
        self._open: dict[Key, _Open] = {}
        self._pending: list[dpb.MetricWindow] = []  # closed, not yet acknowledged by the server

    def _window(self, key: Key) -> _Open:
        window = self._open.get(key)
        if window is None:
            window = self._open[key] = _Open(start=self.clock())
        return window

    def request(self, program: str, environment: str, version: str, latency_ms: float, error: bool) -> None:
        if not math.isfinite(latency_ms) or latency_ms < 0:  # the server would refuse the whole report
            raise ValueError(f"latency must be a non-negative number of ms, not {latency_ms!r}")
        with self._lock:
            w = self._window((program, environment, version))
            w.requests += 1
            w.errors += error
            w.counts[bisect.bisect_left(BOUNDS_MS, latency_ms)] += 1
            w.sum_ms += latency_ms

    def feedback(self, program: str, environment: str, version: str, correct: bool) -> None:
        with self._lock:
            w = self._window((program, environment, version))
            w.labelled += 1
            w.correct += correct

    def close(self) -> list[dpb.MetricWindow]:
        """Close the open windows; everything not yet acknowledged (oldest first), to send."""
        with self._lock:
            return self._close()

    def _close(self) -> list[dpb.MetricWindow]:
        end = self.clock()
        for (program, environment, version), w in sorted(self._open.items()):
            out = dpb.MetricWindow(
                program=program,
                environment=environment,
                version=version,
                request_count=w.requests,
                error_count=w.errors,
                feedback_correct=w.correct,
                feedback_total=w.labelled,
            )
            out.start_time.FromDatetime(w.start)
            out.end_time.FromDatetime(max(end, w.start))
            out.latency.counts.extend(w.counts)
            out.latency.sum_ms = w.sum_ms
            self._pending.append(out)
        self._open.clear()
        del self._pending[:-MAX_PENDING_WINDOWS]
        return list(self._pending)

    def sent(self, windows: list[dpb.MetricWindow]) -> None:
        """The server has these: forget them."""
        done = {id(w) for w in windows}
        with self._lock:
            self._pending = [w for w in self._pending if id(w) not in done]

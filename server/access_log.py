"""The per-RPC access log: one JSON line per call, written in batches.

Going through `logging` for every call (a LogRecord, a formatter, a flushed
write) cost a quarter of GetProgramVersion's throughput (measured with
`bench.loadgen --workload get`: 2 730/s with it, 3 580/s without). Lines
are written together at most every 100 ms, as Envoy's access log does;
`flush()` runs at shutdown. The fields match the other structured logs
(`logs.JsonFormatter`).

A call only notes its fields (a tuple); the lines are formatted at the flush,
hundreds in one loop. Formatted call by call, a line cost 4-6 µs of the serving
path's ~25 µs in the server (measured in place, under load): between two calls
grpc and the kernel evict what the formatting needs, and a batch finds it warm.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import TextIO

FLUSH_SECONDS = 0.1
FLUSH_CALLS = 512  # lines held before a write; a line is ~200 bytes


_second = -1
_second_text = ""
_milli = -1
_milli_text = ""


def _when(milli: int) -> str:
    """The time of a line, from its epoch milliseconds."""
    global _second, _second_text, _milli, _milli_text
    if milli == _milli:  # a busy server logs several calls a millisecond: the same text
        return _milli_text
    whole, part = divmod(milli, 1000)
    if whole != _second:  # strftime once a second, not once a line
        _second, _second_text = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    _milli, _milli_text = milli, f"{_second_text}.{part:03d}Z"
    return _milli_text


# One finished call as `record` notes it: (epoch ms, method, code, duration ms, request id, trace ids).
_Noted = tuple[int, str, str, float, str, tuple[str, str] | None]


class AccessLog:
    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True, as_json: bool = True) -> None:
        self.enabled = enabled
        self.json = as_json
        self._stream = stream
        self._calls: list[_Noted] = []
        self._timer: asyncio.TimerHandle | None = None
        # (trace_id, span_id) of the call's span, when telemetry traces (telemetry.py sets it).
        self.trace_ids: Callable[[], tuple[str, str] | None] | None = None

    def record(self, method: str, code: str, duration_ms: float, request_id: str = "") -> None:
        if not self.enabled:
            return
        ids = self.trace_ids() if self.trace_ids is not None else None  # the span is the caller's now
        calls = self._calls
        calls.append((time.time_ns() // 1_000_000, method, code, duration_ms, request_id, ids))
        if len(calls) >= FLUSH_CALLS:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no loop: write at once
                self.flush()

    def _line(self, noted: _Noted) -> str:
        milli, method, code, duration_ms, request_id, ids = noted
        if not self.json:
            line = f"{_when(milli)} INFO dspy_registry.rpc {method} {code} {duration_ms:.3f}ms {request_id}"
            return line.rstrip() + "\n"
        line = (
            f'{{"time": "{_when(milli)}", "level": "info", "logger": "dspy_registry.rpc", "msg": "rpc", '
            f'"method": "{method}", "code": "{code}", "duration_ms": {duration_ms:.3f}'
        )
        if request_id:
            line += f', "request_id": {json.dumps(request_id)}'
        if ids is not None:
            line += f', "trace_id": "{ids[0]}", "span_id": "{ids[1]}"'
        return line + "}\n"

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._calls:
            return
        calls, self._calls = self._calls, []
        stream = self._stream or sys.stderr
        stream.write("".join(map(self._line, calls)))
        stream.flush()


# The process's access log; `logs.configure` enables it at level info or below.
ACCESS_LOG = AccessLog(enabled=False)

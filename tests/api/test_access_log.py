"""The access log: a call notes its fields, the flush formats the lines, each as of its call."""

from __future__ import annotations

import io
import json
import time

import pytest

from dspy_registry.server import access_log
from dspy_registry.server.access_log import AccessLog

METHOD = "/dspy_registry.v1.RegistryService/GetProgramVersion"


async def test_each_line_says_when_its_call_ended_not_when_it_was_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    log = AccessLog(stream)
    log.trace_ids = lambda: None
    now = [1_700_000_000_123_456_789]
    monkeypatch.setattr(time, "time_ns", lambda: now[0])
    log.record(METHOD, "OK", 1.23456)
    now[0] += 1_500_000_000  # the second call ends 1.5 s later
    log.trace_ids = lambda: ("0xabc", "0xdef")
    log.record(METHOD, "NOT_FOUND", 0.5, 'id "quoted"')
    assert stream.getvalue() == ""  # nothing written before the flush
    log.flush()
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first == {
        "time": "2023-11-14T22:13:20.123Z",
        "level": "info",
        "logger": "dspy_registry.rpc",
        "msg": "rpc",
        "method": METHOD,
        "code": "OK",
        "duration_ms": 1.235,
    }
    assert second["time"] == "2023-11-14T22:13:21.623Z" and second["code"] == "NOT_FOUND"
    assert (second["request_id"], second["trace_id"], second["span_id"]) == ('id "quoted"', "0xabc", "0xdef")


async def test_the_text_format_and_a_full_batch_written_without_waiting_for_the_timer() -> None:
    stream = io.StringIO()
    log = AccessLog(stream, as_json=False)
    for _ in range(access_log.FLUSH_CALLS - 1):
        log.record(METHOD, "OK", 2.0)
    assert stream.getvalue() == ""  # held for the timer
    log.record(METHOD, "OK", 2.0, "r-1")
    lines = stream.getvalue().splitlines()
    assert len(lines) == access_log.FLUSH_CALLS
    assert lines[0].endswith(f" INFO dspy_registry.rpc {METHOD} OK 2.000ms")
    assert lines[-1].endswith(f" INFO dspy_registry.rpc {METHOD} OK 2.000ms r-1")

"""Log lines that name their trace: the current span's ids on every JSON log line written within one.

Installed by telemetry when it traces; the only other module, beside telemetry.py, that reads
OpenTelemetry (its API's current span, never the SDK).
"""

from __future__ import annotations

import logging

from opentelemetry import trace

from .access_log import ACCESS_LOG


class TraceIds(logging.Filter):
    """Adds the current span's `trace_id` and `span_id` to each log line written within one (the
    access log's included), as the W3C traceparent spells them (32 and 16 hex digits), so that a
    log search finds a trace's lines. A filter on the root logger's handlers, so that every
    logger's records pass it."""

    def __init__(self) -> None:
        super().__init__()
        self._handlers: list[logging.Handler] = []

    def filter(self, record: logging.LogRecord) -> bool:
        ids = current_trace_ids()
        if ids is not None:
            record.trace_id, record.span_id = ids
        return True

    def install(self) -> None:
        self._handlers = list(logging.getLogger().handlers)
        for handler in self._handlers:
            handler.addFilter(self)
        ACCESS_LOG.trace_ids = current_trace_ids

    def remove(self) -> None:
        for handler in self._handlers:
            handler.removeFilter(self)
        self._handlers = []
        if ACCESS_LOG.trace_ids is current_trace_ids:
            ACCESS_LOG.trace_ids = None


def current_trace_ids() -> tuple[str, str] | None:
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return trace.format_trace_id(context.trace_id), trace.format_span_id(context.span_id)

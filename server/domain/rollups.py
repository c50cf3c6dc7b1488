"""Metric rollups: the windows one replica received for one version in one bucket, merged.

A replica does not keep each sidecar's window: it adds it to the rollup of
its (program, environment, version) for the second it arrived in, and writes
the rollups it holds in one batch per flush interval. What analysis reads is
the same figures either way: merging rollups merges the windows in them
(health.Totals), and a histogram's buckets are mapped onto the standard
bounds once, on the way in, exactly as a merge of the raw windows would.

A rollup is named by its `source` (the replica) and `bucket` (a number the
replica gives each rollup it opens), so that a reader that finds one both in
the replica's memory and in the store (a flush in progress) counts it once.
Its `first_receive` is the server time its first window arrived: analysis
takes a rollup only when that is inside the span it judges, so a rollup that
straddles the start of the span (or a deployment's creation) is left out
whole, at the cost of at most one second of data, rather than letting traffic
from before the span count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from .health import Totals, Window

BUCKET_SECONDS = 1  # one rollup per version per second received, at most, between two flushes


def bucket_second(received: datetime) -> int:
    return int(received.timestamp()) // BUCKET_SECONDS


@dataclass(kw_only=True)
class Rollup:
    program: str
    environment: str
    version: str
    source: str  # the replica that received the windows
    bucket: int  # the replica's number for this rollup
    first_receive: datetime
    window_count: int = 0
    totals: Totals = field(default_factory=Totals)

    def add(self, w: Window) -> None:
        self.totals.add(w)
        self.window_count += 1

    def as_window(self) -> Window:
        """The rollup as one window of its version (what health.merge takes)."""
        t = self.totals
        start = t.start_time or self.first_receive
        return Window(
            sidecar_id=self.source,
            program=self.program,
            environment=self.environment,
            version=self.version,
            start_time=start,
            end_time=t.end_time or start,
            request_count=t.request_count,
            error_count=t.error_count,
            bounds_ms=t.bounds_ms,
            counts=tuple(t.counts),
            sum_ms=t.sum_ms,
            feedback_correct=t.feedback_correct,
            feedback_total=t.feedback_total,
        )

    @property
    def name(self) -> tuple[str, int]:
        return self.source, self.bucket

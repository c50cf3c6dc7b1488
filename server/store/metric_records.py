"""Every query of metric rollups: sidecars' windows as each replica merged them, kept for a bounded time.

Rollups are telemetry: written in Store.telemetry() transactions, which take
no revision and append no event (see domain.rollups).
"""

from __future__ import annotations

import json
from datetime import datetime

from ..domain.health import Totals
from ..domain.rollups import Rollup
from .sql import Connection, Row, forget_oldest, to_datetime, to_us

_COLUMNS = (
    "program, environment, version, source, bucket, first_receive_time, start_time, end_time, "
    "window_count, request_count, error_count, latency, feedback_correct, feedback_total"
)


def _rollup(r: Row) -> Rollup:
    latency = json.loads(r["latency"])
    return Rollup(
        program=r["program"],
        environment=r["environment"],
        version=r["version"],
        source=r["source"],
        bucket=int(r["bucket"]),
        first_receive=to_datetime(r["first_receive_time"]),
        window_count=int(r["window_count"]),
        totals=Totals(
            request_count=int(r["request_count"]),
            error_count=int(r["error_count"]),
            bounds_ms=tuple(latency["bounds_ms"]),
            counts=list(latency["counts"]),
            sum_ms=float(latency["sum_ms"]),
            feedback_correct=int(r["feedback_correct"]),
            feedback_total=int(r["feedback_total"]),
            start_time=to_datetime(r["start_time"]),
            end_time=to_datetime(r["end_time"]),
        ),
    )


class MetricQueries:
    conn: Connection

    async def add_metric_rollups(self, rollups: list[Rollup]) -> None:
        """Store a replica's flushed rollups; one stored already (a flush retried after a commit whose
        outcome was unknown) is kept as it was."""
        if not rollups:
            return
        marks = ", ".join("?" for _ in _COLUMNS.split(", "))
        await self.conn.executemany(
            f"INSERT INTO metric_rollups ({_COLUMNS}) VALUES ({marks}) "
            "ON CONFLICT (program, environment, version, source, bucket) DO NOTHING",
            [
                (
                    r.program,
                    r.environment,
                    r.version,
                    r.source,
                    r.bucket,
                    to_us(r.first_receive),
                    to_us(r.totals.start_time or r.first_receive),
                    to_us(r.totals.end_time or r.first_receive),
                    r.window_count,
                    r.totals.request_count,
                    r.totals.error_count,
                    json.dumps(
                        {
                            "bounds_ms": r.totals.bounds_ms,
                            "counts": r.totals.counts,
                            "sum_ms": r.totals.sum_ms,
                        }
                    ),
                    r.totals.feedback_correct,
                    r.totals.feedback_total,
                )
                for r in sorted(rollups, key=lambda r: (r.program, r.environment, r.version, r.bucket))
            ],
        )

    async def metric_rollups(
        self, program: str, environment: str, versions: list[str], since: datetime
    ) -> list[Rollup]:
        """Rollups of these versions whose first window arrived at or after `since` (the server's clock)."""
        if not versions:
            return []
        marks = ", ".join("?" for _ in versions)
        rows = await self.conn.fetch(
            f"SELECT {_COLUMNS} FROM metric_rollups "
            f"WHERE program = ? AND environment = ? AND first_receive_time >= ? AND version IN ({marks})",
            program,
            environment,
            to_us(since),
            *versions,
        )
        return [_rollup(r) for r in rows]

    async def forget_metric_windows(self, before: datetime, most: int) -> int:
        """Drop rollups whose first window arrived before `before` (retention), the `most` oldest of
        them; returns how many it dropped."""
        key = ("program", "environment", "version", "source", "bucket")
        return await forget_oldest(
            self.conn, "metric_rollups", key, "first_receive_time", to_us(before), most
        )

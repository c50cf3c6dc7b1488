"""Every query of metric windows: sidecars' measurements, kept for a bounded time."""

from __future__ import annotations

import json
from datetime import datetime

from ..domain.health import Window
from .sql import Connection, to_datetime, to_us


class MetricQueries:
    conn: Connection

    async def add_metric_windows(self, sidecar_id: str, windows: list[Window], received: datetime) -> int:
        """Store the windows of one sidecar's report not stored before; how many were new.

        A retried report (the same sidecar, version and start time) counts once.
        """
        if not windows:
            return 0
        starts = [to_us(w.start_time) for w in windows]
        rows = await self.conn.fetch(
            "SELECT program, environment, version, start_time FROM metric_windows "
            "WHERE sidecar_id = ? AND start_time BETWEEN ? AND ?",
            sidecar_id,
            min(starts),
            max(starts),
        )
        seen = {(r["program"], r["environment"], r["version"], r["start_time"]) for r in rows}
        new: dict[tuple[str, str, str, int], Window] = {}
        for w, start in zip(windows, starts, strict=True):
            key = (w.program, w.environment, w.version, start)
            if key not in seen:
                new.setdefault(key, w)  # the same window twice in one report: the first
        await self.conn.executemany(
            "INSERT INTO metric_windows (program, environment, version, sidecar_id, start_time, end_time, "
            "receive_time, request_count, error_count, latency, feedback_correct, feedback_total) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    w.program,
                    w.environment,
                    w.version,
                    sidecar_id,
                    start,
                    to_us(w.end_time),
                    to_us(received),
                    w.request_count,
                    w.error_count,
                    json.dumps({"bounds_ms": w.bounds_ms, "counts": w.counts, "sum_ms": w.sum_ms}),
                    w.feedback_correct,
                    w.feedback_total,
                )
                for (_, _, _, start), w in new.items()
            ],
        )
        return len(new)

    async def metric_windows(
        self, program: str, environment: str, versions: list[str], since: datetime
    ) -> list[Window]:
        """Windows of these versions received at or after `since` (by the server's clock)."""
        if not versions:
            return []
        marks = ", ".join("?" for _ in versions)
        rows = await self.conn.fetch(
            "SELECT version, sidecar_id, start_time, end_time, request_count, error_count, latency, "
            "feedback_correct, feedback_total FROM metric_windows "
            f"WHERE program = ? AND environment = ? AND receive_time >= ? AND version IN ({marks})",
            program,
            environment,
            to_us(since),
            *versions,
        )
        out = []
        for r in rows:
            latency = json.loads(r["latency"])
            out.append(
                Window(
                    sidecar_id=r["sidecar_id"],
                    program=program,
                    environment=environment,
                    version=r["version"],
                    start_time=to_datetime(r["start_time"]),
                    end_time=to_datetime(r["end_time"]),
                    request_count=r["request_count"],
                    error_count=r["error_count"],
                    bounds_ms=tuple(latency["bounds_ms"]),
                    counts=tuple(latency["counts"]),
                    sum_ms=latency["sum_ms"],
                    feedback_correct=r["feedback_correct"],
                    feedback_total=r["feedback_total"],
                )
            )
        return out

    async def forget_metric_windows(self, before: datetime) -> int:
        """Drop windows received before `before` (retention)."""
        row = await self.conn.fetchrow(
            "SELECT COUNT(*) AS n FROM metric_windows WHERE receive_time < ?", to_us(before)
        )
        await self.conn.execute("DELETE FROM metric_windows WHERE receive_time < ?", to_us(before))
        return int(row["n"]) if row else 0

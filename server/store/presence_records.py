"""Every query of sidecar presence: which sidecars are live, what each runs, which replica holds it.

Telemetry, outside the revision order: written in Store.telemetry()
transactions by the replica a sidecar is connected to (see
usecases.live_sidecars). One row per sidecar, whichever replica last held it,
so a sidecar that moved replicas is one sidecar.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from ..domain.sidecars import Report, report_from_json, report_to_json
from .sql import Connection, to_datetime, to_json, to_us


@dataclass(frozen=True, kw_only=True)
class Presence:
    """A sidecar's row: its last report as stored, and the replica that holds it."""

    replica: str
    report: Report
    live_until: datetime


class PresenceQueries:
    conn: Connection

    async def put_presence(self, r: Report, replica: str, live_until: datetime) -> None:
        """The sidecar's report, now held by `replica`, replaces its previous one whole."""
        await self.conn.execute("DELETE FROM sidecar_presence_targets WHERE sidecar_id = ?", r.sidecar_id)
        await self.conn.execute(
            "INSERT INTO sidecar_presence (sidecar_id, replica, principal, report, heartbeat_ms, "
            "last_report_time, live_until) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sidecar_id) DO UPDATE "
            "SET replica = excluded.replica, principal = excluded.principal, report = excluded.report, "
            "heartbeat_ms = excluded.heartbeat_ms, last_report_time = excluded.last_report_time, "
            "live_until = excluded.live_until",
            r.sidecar_id,
            replica,
            r.principal,
            to_json(report_to_json(r)),
            int(r.heartbeat_seconds * 1000),
            to_us(r.time),
            to_us(live_until),
        )
        await self.conn.executemany(
            "INSERT INTO sidecar_presence_targets (sidecar_id, program, environment) VALUES (?, ?, ?) "
            "ON CONFLICT (program, environment, sidecar_id) DO NOTHING",
            sorted({(r.sidecar_id, a.program, a.environment) for a in r.targets}),
        )

    async def refresh_presence(self, replica: str, seen: list[tuple[Report, datetime]]) -> None:
        """One replica's batch: the last report and `live_until` of each sidecar it still holds (what
        each runs is unchanged: a change is written when it is reported). Rows another replica holds
        now are left alone."""
        await self.conn.executemany(
            "UPDATE sidecar_presence SET report = ?, last_report_time = ?, live_until = ? "
            "WHERE sidecar_id = ? AND replica = ?",
            [
                (to_json(report_to_json(r)), to_us(r.time), to_us(until), r.sidecar_id, replica)
                for r, until in sorted(seen, key=lambda s: s[0].sidecar_id)  # one lock order for all
            ],
        )

    async def presence_held_by(self, replica: str) -> set[str]:
        rows = await self.conn.fetch("SELECT sidecar_id FROM sidecar_presence WHERE replica = ?", replica)
        return {str(r["sidecar_id"]) for r in rows}

    async def remove_presence(self, sidecar_id: str) -> None:
        await self.conn.execute("DELETE FROM sidecar_presence_targets WHERE sidecar_id = ?", sidecar_id)
        await self.conn.execute("DELETE FROM sidecar_presence WHERE sidecar_id = ?", sidecar_id)

    async def presence_serving(self, program: str, environment: str, now: datetime) -> list[Presence]:
        """The rows, live at `now`, of sidecars that hold a version of `program` in `environment`."""
        rows = await self.conn.fetch(
            "SELECT s.sidecar_id, s.replica, s.principal, s.report, s.heartbeat_ms, s.last_report_time, "
            "s.live_until FROM sidecar_presence s JOIN sidecar_presence_targets t ON t.sidecar_id = s.sidecar_id "
            "WHERE t.program = ? AND t.environment = ? AND s.live_until >= ? ORDER BY s.sidecar_id",
            program,
            environment,
            to_us(now),
        )
        return [
            Presence(
                replica=r["replica"],
                report=report_from_json(
                    r["sidecar_id"],
                    r["principal"],
                    r["heartbeat_ms"] / 1000,
                    to_datetime(r["last_report_time"]),
                    json.loads(r["report"]),
                ),
                live_until=to_datetime(r["live_until"]),
            )
            for r in rows
        ]

    async def presence_owner(self, sidecar_id: str, now: datetime) -> tuple[str, str] | None:
        """(replica, principal) of a sidecar id live at `now`, else None."""
        row = await self.conn.fetchrow(
            "SELECT replica, principal FROM sidecar_presence WHERE sidecar_id = ? AND live_until >= ?",
            sidecar_id,
            to_us(now),
        )
        return None if row is None else (str(row["replica"]), str(row["principal"]))

    async def forget_silent_sidecars(self, now: datetime) -> int:
        """Drop sidecars no replica vouches for any more (housekeeping: liveness is judged on read)."""
        rows = await self.conn.fetch(
            "SELECT sidecar_id FROM sidecar_presence WHERE live_until < ?", to_us(now)
        )
        for r in rows:
            await self.remove_presence(str(r["sidecar_id"]))
        return len(rows)

"""Every query of sidecar presence: which sidecars are live, what each runs, which replicas heard it.

Telemetry, outside the revision order: written in Store.telemetry()
transactions by the replicas a sidecar reports to (see
usecases.live_sidecars). One row per sidecar and replica — a client that
spreads its calls over replicas reports to each — and readers take each
sidecar's newest row, so a sidecar is one sidecar however many replicas heard
it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from ..domain.sidecars import Applied, Report, content_from_json, content_to_json
from .sql import Connection, Row, to_datetime, to_json, to_us

_COLUMNS = "sidecar_id, replica, principal, report, heartbeat_ms, last_report_time, live_until, leaving"


@dataclass(frozen=True, kw_only=True)
class Presence:
    """One replica's row of a sidecar: its last report there, or (`leaving`) that it said it is going."""

    replica: str
    report: Report
    live_until: datetime
    leaving: bool


# A fleet's reports say a handful of different things (every pod of a target ACKs the same
# versions), and each replica writes every live sidecar's report once per flush: encoding each anew
# held the event loop for 10-60 ms per thousand sidecars, every flush, and decoding them as long on
# the leader's count of the fleet. Each content is encoded and decoded once, kept by what it says.
CONTENTS_KEPT = 4096


@lru_cache(maxsize=CONTENTS_KEPT)
def _encoded(targets: tuple[Applied, ...], revision: int) -> str:
    return to_json(content_to_json(targets, revision))


@lru_cache(maxsize=CONTENTS_KEPT)
def _decoded(text: str) -> tuple[tuple[Applied, ...], int]:
    return content_from_json(json.loads(text))


def _presence(r: Row) -> Presence:
    targets, revision = _decoded(r["report"])
    return Presence(
        replica=r["replica"],
        report=Report(
            sidecar_id=r["sidecar_id"],
            principal=r["principal"],
            targets=targets,
            heartbeat_seconds=r["heartbeat_ms"] / 1000,
            time=to_datetime(r["last_report_time"]),
            revision=revision,
        ),
        live_until=to_datetime(r["live_until"]),
        leaving=bool(r["leaving"]),
    )


def _row(r: Report, replica: str, live_until: datetime, leaving: bool) -> tuple[Any, ...]:
    return (
        r.sidecar_id,
        replica,
        r.principal,
        _encoded(r.targets, r.revision),
        int(r.heartbeat_seconds * 1000),
        to_us(r.time),
        to_us(live_until),
        int(leaving),
    )


class PresenceQueries:
    conn: Connection

    async def put_presence(
        self, seen: list[tuple[Report, datetime]], replica: str, *, targets_of: set[str]
    ) -> None:
        """Write `replica`'s rows of these sidecars (their last report there, and until when it vouches
        for each), and the targets each serves: those in `targets_of` replace what was written of
        them; the others' are added where missing (a sidecar that left through another replica took
        this replica's rows along), which writes nothing where they are there already."""
        rows = sorted((_row(r, replica, until, False) for r, until in seen), key=lambda row: row[0])
        await self.conn.executemany(
            f"INSERT INTO sidecar_presence ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (sidecar_id, replica) DO UPDATE SET principal = excluded.principal, "
            "report = excluded.report, heartbeat_ms = excluded.heartbeat_ms, "
            "last_report_time = excluded.last_report_time, live_until = excluded.live_until, leaving = 0",
            rows,
        )
        changed = sorted(r.sidecar_id for r, _ in seen if r.sidecar_id in targets_of)
        await self.conn.executemany(
            "DELETE FROM sidecar_presence_targets WHERE sidecar_id = ? AND replica = ?",
            [(sidecar_id, replica) for sidecar_id in changed],
        )
        await self.conn.executemany(
            "INSERT INTO sidecar_presence_targets (sidecar_id, replica, program, environment) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (program, environment, sidecar_id, replica) DO NOTHING",
            sorted({(r.sidecar_id, replica, a.program, a.environment) for r, _ in seen for a in r.targets}),
        )

    async def put_leaving(self, r: Report, replica: str, live_until: datetime) -> None:
        """The sidecar said it is going: every replica's row of it gives way to one that says so."""
        await self.remove_presence(r.sidecar_id)
        await self.conn.execute(
            f"INSERT INTO sidecar_presence ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            *_row(r, replica, live_until, True),
        )

    async def remove_presence(self, sidecar_id: str) -> None:
        await self.conn.execute("DELETE FROM sidecar_presence_targets WHERE sidecar_id = ?", sidecar_id)
        await self.conn.execute("DELETE FROM sidecar_presence WHERE sidecar_id = ?", sidecar_id)

    async def presence_serving(self, program: str, environment: str, now: datetime) -> list[Presence]:
        """Every row live at `now` of the sidecars some replica heard hold a version of `program` in
        `environment` — each sidecar's rows, all of them, since its newest may say otherwise — and
        every row that says a sidecar left (a replica that still holds it needs to know)."""
        rows = await self.conn.fetch(
            f"SELECT {_COLUMNS} FROM sidecar_presence WHERE live_until >= ? AND (leaving = 1 OR sidecar_id IN "
            "(SELECT sidecar_id FROM sidecar_presence_targets WHERE program = ? AND environment = ?)) "
            "ORDER BY sidecar_id, replica",
            to_us(now),
            program,
            environment,
        )
        return [_presence(r) for r in rows]

    async def live_contents(self, now: datetime) -> list[tuple[tuple[Applied, ...], int]]:
        """What the live sidecars run (telemetry's gauge of live sidecars): each sidecar's newest row
        live at `now`, its word as domain.sidecars.newest_word takes it — the latest report, of two at
        the same time the later replica's — unless that says it left; each distinct content once,
        with how many sidecars say it. Counted here, so that a fleet reporting to every replica is
        read as the handful of things it says, not as a row per sidecar (a thousand rows decoded held
        the leader's event loop for about 10 ms every time)."""
        rows = await self.conn.fetch(
            "SELECT report, COUNT(*) AS sidecars FROM (SELECT report, leaving, ROW_NUMBER() OVER "
            "(PARTITION BY sidecar_id ORDER BY last_report_time DESC, replica DESC) AS n "
            "FROM sidecar_presence WHERE live_until >= ?) AS newest WHERE n = 1 AND leaving = 0 "
            "GROUP BY report ORDER BY report",
            to_us(now),
        )
        return [(_decoded(r["report"])[0], int(r["sidecars"])) for r in rows]

    async def presence_of(self, sidecar_id: str, now: datetime) -> list[Presence]:
        """Every replica's row of `sidecar_id` live at `now`."""
        rows = await self.conn.fetch(
            f"SELECT {_COLUMNS} FROM sidecar_presence WHERE sidecar_id = ? AND live_until >= ? ORDER BY replica",
            sidecar_id,
            to_us(now),
        )
        return [_presence(r) for r in rows]

    async def forget_silent_sidecars(self, now: datetime) -> int:
        """Drop the rows no replica vouches for any more (housekeeping: liveness is judged on read)."""
        rows = await self.conn.fetch(
            "SELECT sidecar_id, replica FROM sidecar_presence WHERE live_until < ?", to_us(now)
        )
        keys = [(str(r["sidecar_id"]), str(r["replica"])) for r in rows]
        await self.conn.executemany(
            "DELETE FROM sidecar_presence_targets WHERE sidecar_id = ? AND replica = ?", keys
        )
        await self.conn.executemany("DELETE FROM sidecar_presence WHERE sidecar_id = ? AND replica = ?", keys)
        return len(keys)

"""Every query of version checks: CI's reports (domain/checks.py), one row per version and check."""

from __future__ import annotations

from ..domain.checks import CheckState, VersionCheck
from .sql import Connection, Row, to_datetime, to_us

_COLUMNS = "program, version, name, state, details_url, summary, reporter, create_time, update_time, revision"


def _check(row: Row) -> VersionCheck:
    return VersionCheck(
        program=row["program"],
        version=row["version"],
        check=row["name"],
        state=CheckState(row["state"]),
        details_url=row["details_url"],
        summary=row["summary"],
        reporter=row["reporter"],
        create_time=to_datetime(row["create_time"]),
        update_time=to_datetime(row["update_time"]),
        revision=row["revision"],
    )


class CheckQueries:
    conn: Connection

    async def put_version_check(self, c: VersionCheck) -> None:
        """The check's last report replaces the one before (its first report's time stays)."""
        await self.conn.execute(
            f"INSERT INTO version_checks ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (program, version, name) DO UPDATE SET state = excluded.state, "
            "details_url = excluded.details_url, summary = excluded.summary, reporter = excluded.reporter, "
            "update_time = excluded.update_time, revision = excluded.revision",
            c.program,
            c.version,
            c.check,
            int(c.state),
            c.details_url,
            c.summary,
            c.reporter,
            to_us(c.create_time),
            to_us(c.update_time),
            c.revision,
        )

    async def get_version_check(self, program: str, version: str, name: str) -> VersionCheck | None:
        row = await self.conn.fetchrow(
            f"SELECT {_COLUMNS} FROM version_checks WHERE program = ? AND version = ? AND name = ?",
            program,
            version,
            name,
        )
        return _check(row) if row else None

    async def version_checks(self, program: str, version: str) -> dict[str, VersionCheck]:
        """Every check reported for program@version, by name (in name order)."""
        rows = await self.conn.fetch(
            f"SELECT {_COLUMNS} FROM version_checks WHERE program = ? AND version = ? ORDER BY name",
            program,
            version,
        )
        return {str(r["name"]): _check(r) for r in rows}

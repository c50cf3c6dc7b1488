"""Every query of programs and their versions.

Written once for both backends, like the other *_records modules, which records.Records mixes in.
A program's summary row keeps its latest version (the highest release not yanked, else the highest
pre-release) and the labels of the version registered last; `program_labels` holds those labels a
row each, for ListPrograms' filters.
"""

from __future__ import annotations

import json
from typing import Any

from ..domain.model import Implementation, Page, ProgramSummary, ProgramVersion
from ..domain.programs import PredictorSummary
from .sql import Connection, Row, like_prefix, now_us, to_datetime, to_us, visible_condition
from .sql import to_json as _json
from .version_order import decode_version_cursor, neighbour, version_cursor

_PROGRAM_VERSION_COLUMNS = (
    "program, version, digest, size_bytes, media_type, signature, signature_version, "
    "performance, labels, metadata, previous_version, change_type, predictors, yanked, "
    "yank_reason, creator, create_time, revision, sort_key"
)


def _program_version(row: Row) -> ProgramVersion:
    return ProgramVersion(
        program=row["program"],
        version=row["version"],
        digest=row["digest"],
        size_bytes=row["size_bytes"],
        media_type=row["media_type"],
        signature=row["signature"],
        signature_version=row["signature_version"],
        performance=json.loads(row["performance"]),
        labels=json.loads(row["labels"]),
        metadata=json.loads(row["metadata"]),
        previous_version=row["previous_version"],
        change_type=row["change_type"],
        predictors=tuple(PredictorSummary.from_json(p) for p in json.loads(row["predictors"])),
        yanked=bool(row["yanked"]),
        yank_reason=row["yank_reason"],
        creator=row["creator"],
        create_time=to_datetime(row["create_time"]),
        revision=row["revision"],
    )


_IMPLEMENTATION = "version, signature, signature_version"
# A program's latest version: its highest non-yanked release, else pre-release (two index probes).
_LATEST = (
    "COALESCE("
    " (SELECT version FROM program_versions WHERE program = ? AND yanked = ? "
    "  AND prerelease = ? ORDER BY sort_key DESC, version DESC LIMIT 1),"
    " (SELECT version FROM program_versions WHERE program = ? AND yanked = ? "
    "  ORDER BY sort_key DESC, version DESC LIMIT 1), '')"
)


def _latest_args(program: str) -> tuple[str, bool, bool, str, bool]:
    return (program, False, False, program, False)


def _implementation(row: Row) -> Implementation:
    return Implementation(
        version=row["version"], signature=row["signature"], signature_version=row["signature_version"]
    )


def _program(row: Row) -> ProgramSummary:
    return ProgramSummary(
        program=row["name"],
        latest_version=row["latest_version"],
        version_count=row["version_count"],
        labels=json.loads(row["labels"]),
        signature=row["signature"],
        create_time=to_datetime(row["create_time"]),
        update_time=to_datetime(row["update_time"]),
    )


class ProgramQueries:
    conn: Connection

    async def version_with_digest(self, program: str, digest: str) -> ProgramVersion:
        """The newest version of `program` whose artifact is `digest` (for its media type)."""
        row = await self.conn.fetchrow(
            f"SELECT {_PROGRAM_VERSION_COLUMNS} FROM program_versions "
            "WHERE program = ? AND digest = ? ORDER BY sort_key DESC, version DESC LIMIT 1",
            program,
            digest,
        )
        assert row is not None
        return _program_version(row)

    async def get_program(self, program: str) -> ProgramSummary | None:
        row = await self.conn.fetchrow(
            "SELECT name, latest_version, version_count, labels, signature, create_time, "
            "update_time FROM programs WHERE name = ?",
            program,
        )
        return _program(row) if row else None

    async def program_version_digest(self, program: str, version: str) -> str | None:
        """The digest of program@version if it exists: the cheap immutability check."""
        row = await self.conn.fetchrow(
            "SELECT digest FROM program_versions WHERE program = ? AND version = ?", program, version
        )
        return str(row["digest"]) if row else None

    async def get_program_version(self, program: str, version: str) -> ProgramVersion | None:
        row = await self.conn.fetchrow(
            f"SELECT {_PROGRAM_VERSION_COLUMNS} FROM program_versions WHERE program = ? AND version = ?",
            program,
            version,
        )
        return _program_version(row) if row else None

    async def latest_program_version(self, program: str) -> ProgramVersion | None:
        row = await self.conn.fetchrow(
            f"SELECT {_PROGRAM_VERSION_COLUMNS} FROM program_versions WHERE program = ? "
            "AND version = (SELECT latest_version FROM programs WHERE name = ?)",
            program,
            program,
        )
        return _program_version(row) if row else None

    async def highest_program_release(self, program: str) -> str | None:
        """The highest release, yanked ones included: an auto-increment never reuses a number."""
        row = await self.conn.fetchrow(
            "SELECT version FROM program_versions WHERE program = ? AND prerelease = ? "
            "ORDER BY sort_key DESC, version DESC LIMIT 1",
            program,
            False,
        )
        return str(row["version"]) if row else None

    async def program_version_below(self, program: str, sort_key: str) -> Implementation | None:
        """The highest version with lower precedence, yanked or not: what the semver guard compares with.

        Only what the guard reads of it: every registration asks, and a whole version's row (its
        metadata, labels and predictors as JSON) cost more to read and parse than the rest of
        the guard."""
        row = await neighbour(
            self.conn, "program_versions", _IMPLEMENTATION, "program", program, sort_key, below=True
        )
        return _implementation(row) if row else None

    async def program_version_above(self, program: str, sort_key: str) -> Implementation | None:
        """The lowest version with higher precedence: what a backport must stay compatible with."""
        row = await neighbour(
            self.conn, "program_versions", _IMPLEMENTATION, "program", program, sort_key, below=False
        )
        return _implementation(row) if row else None

    async def insert_program_version(self, pv: ProgramVersion, sort_key: str, prerelease: bool) -> None:
        ts = to_us(pv.create_time)
        labels = _json(pv.labels)
        current = await self.conn.fetchrow("SELECT labels FROM programs WHERE name = ?", pv.program)
        if current is None:
            await self.conn.execute(
                "INSERT INTO programs (name, latest_version, version_count, labels, signature, "
                "create_time, update_time) VALUES (?, '', 1, ?, ?, ?, ?)",
                pv.program,
                labels,
                pv.signature_name,
                ts,
                ts,
            )
        if current is None or current["labels"] != labels:
            await self.conn.execute("DELETE FROM program_labels WHERE program = ?", pv.program)
            await self.conn.executemany(
                "INSERT INTO program_labels (program, key, value) VALUES (?, ?, ?)",
                [(pv.program, k, v) for k, v in sorted(pv.labels.items())],
            )
        await self.conn.execute(
            "INSERT INTO program_versions (program, version, sort_key, prerelease, digest, "
            "size_bytes, media_type, signature, signature_version, performance, labels, metadata, "
            "previous_version, change_type, predictors, yanked, yank_reason, creator, create_time, "
            "revision) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            pv.program,
            pv.version,
            sort_key,
            prerelease,
            pv.digest,
            pv.size_bytes,
            pv.media_type,
            pv.signature,
            pv.signature_version,
            _json(pv.performance),
            labels,
            _json(pv.metadata),
            pv.previous_version,
            pv.change_type,
            _json([p.to_json() for p in pv.predictors]),
            pv.yanked,
            pv.yank_reason,
            pv.creator,
            ts,
            pv.revision,
        )
        if current is None:
            await self._refresh_latest(pv.program, ts)
            return
        # The summary carries the labels of the most recently registered version; one statement
        # counts the version and refreshes the latest (after the insert, which it must see).
        await self.conn.execute(
            "UPDATE programs SET version_count = version_count + 1, labels = ?, signature = ?, "
            f"update_time = ?, latest_version = {_LATEST} WHERE name = ?",
            labels,
            pv.signature_name,
            ts,
            *_latest_args(pv.program),
            pv.program,
        )

    async def _refresh_latest(self, program: str, ts: int) -> None:
        """latest = the highest non-yanked release, else pre-release: two index probes."""
        await self.conn.execute(
            f"UPDATE programs SET update_time = ?, latest_version = {_LATEST} WHERE name = ?",
            ts,
            *_latest_args(program),
            program,
        )

    async def set_yanked(self, program: str, version: str, yanked: bool, reason: str, revision: int) -> None:
        await self.conn.execute(
            "UPDATE program_versions SET yanked = ?, yank_reason = ?, revision = ? "
            "WHERE program = ? AND version = ?",
            yanked,
            reason,
            revision,
            program,
            version,
        )
        await self._refresh_latest(program, now_us())

    async def list_programs(
        self,
        prefix: str,
        labels: dict[str, str],
        visible: list[str] | None,
        page: Page,
        environment: str = "",
    ) -> tuple[list[ProgramSummary], str | None, int]:
        """Programs by name, filtered; only those matching a `visible` glob (None: all)."""
        allowed, allowed_args = visible_condition("p.name", visible)
        where = ["p.name LIKE ? ESCAPE '\\'", allowed]
        args: list[Any] = [like_prefix(prefix), *allowed_args]
        if environment:  # deployed there: its target serves a stable version
            where.append(
                "EXISTS (SELECT 1 FROM targets t WHERE t.program = p.name AND t.environment = ? "
                "AND t.stable_version IS NOT NULL)"
            )
            args.append(environment)
        for key, value in sorted(labels.items()):
            where.append(
                "EXISTS (SELECT 1 FROM program_labels l WHERE l.program = p.name "
                "AND l.key = ? AND l.value = ?)"
            )
            args += [key, value]
        condition = " AND ".join(where)
        rows = await self.conn.fetch(
            "SELECT p.name, p.latest_version, p.version_count, p.labels, p.signature, "
            f"p.create_time, p.update_time FROM programs p WHERE {condition} AND p.name > ? "
            "ORDER BY p.name LIMIT ?",
            *args,
            page.after or "",
            page.size + 1,
        )
        total = await self.conn.fetchrow(f"SELECT COUNT(*) AS n FROM programs p WHERE {condition}", *args)
        after = rows[page.size - 1]["name"] if len(rows) > page.size else None
        return [_program(r) for r in rows[: page.size]], after, int(total["n"]) if total else 0

    async def list_program_versions(
        self, program: str, page: Page
    ) -> tuple[list[ProgramVersion], str | None, int]:
        key, version = decode_version_cursor(page.after)
        rows = await self.conn.fetch(
            f"SELECT {_PROGRAM_VERSION_COLUMNS} FROM program_versions "
            "WHERE program = ? AND (sort_key < ? OR (sort_key = ? AND version < ?)) "
            "ORDER BY sort_key DESC, version DESC LIMIT ?",
            program,
            key,
            key,
            version,
            page.size + 1,
        )
        total = await self.conn.fetchrow("SELECT version_count FROM programs WHERE name = ?", program)
        count = int(total["version_count"]) if total else 0
        return (
            [_program_version(r) for r in rows[: page.size]],
            version_cursor(rows, page.size),
            count,
        )

    async def program_versions_between(
        self, program: str, low_key: str, high_key: str
    ) -> list[ProgramVersion]:
        """Versions with low_key <= sort_key <= high_key, oldest first."""
        rows = await self.conn.fetch(
            f"SELECT {_PROGRAM_VERSION_COLUMNS} FROM program_versions "
            "WHERE program = ? AND sort_key >= ? AND sort_key <= ? ORDER BY sort_key, version",
            program,
            low_key,
            high_key,
        )
        return [_program_version(r) for r in rows]

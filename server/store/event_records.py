"""Every query of the event log but the append: the revision counter, reading the log, compacting it.

The append is the write transaction's own (records.Records.append): it takes the next revision.
What is here reads what committed, in order, for watchers to resume from, and drops old revisions.
"""

from __future__ import annotations

import json

from ..domain.model import Event
from .sql import Connection, to_datetime


class EventLogQueries:
    conn: Connection

    async def current_revision(self) -> int:
        row = await self.conn.fetchrow("SELECT revision FROM revisions WHERE id = 1")
        assert row is not None
        return int(row["revision"])

    async def compacted_revision(self) -> int:
        """Events at or below this revision are gone from the log (a watcher there needs a snapshot)."""
        row = await self.conn.fetchrow("SELECT compacted FROM revisions WHERE id = 1")
        return int(row["compacted"]) if row else 0

    async def compact_events(self, before_us: int, most: int) -> int:
        """Drop the log's revisions written before `before_us`, at most `most` of them past the
        compacted revision; returns the new compacted revision.

        Not a change anyone watches: no revision is consumed and no event written.
        """
        current = await self.compacted_revision()
        # Only the next `most` revisions are looked at, by the primary key, not the whole log by
        # create_time (which no index orders): maintenance asks again while a step drops `most`.
        row = await self.conn.fetchrow(
            "SELECT MAX(revision) AS r FROM events WHERE revision > ? AND revision <= ? AND create_time < ?",
            current,
            current + most,
            before_us,
        )
        upto = int(row["r"]) if row and row["r"] is not None else 0
        if upto <= current:
            return current
        await self.conn.execute("DELETE FROM events WHERE revision <= ?", upto)
        await self.conn.execute("UPDATE revisions SET compacted = ? WHERE id = 1", upto)
        return upto

    async def events_after(self, revision: int, limit: int = 1000) -> list[Event]:
        """About `limit` events after `revision`, in order, and only whole revisions.

        A page that the limit cut inside a revision is completed with the rest
        of that revision: callers continue from the last revision they got,
        and a revision's events must never arrive in two parts (or one lost).
        """
        rows = list(
            await self.conn.fetch(
                "SELECT revision, seq, kind, resource, data, create_time FROM events "
                "WHERE revision > ? ORDER BY revision, seq LIMIT ?",
                revision,
                limit,
            )
        )
        if rows and len(rows) == limit:
            last = rows[-1]
            rows += await self.conn.fetch(
                "SELECT revision, seq, kind, resource, data, create_time FROM events "
                "WHERE revision = ? AND seq > ? ORDER BY seq",
                last["revision"],
                last["seq"],
            )
        return [
            Event(
                kind=r["kind"],
                resource=r["resource"],
                data=json.loads(r["data"]),
                revision=r["revision"],
                create_time=to_datetime(r["create_time"]),
            )
            for r in rows
        ]

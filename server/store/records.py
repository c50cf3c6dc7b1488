"""Every query the registry runs, written once for both backends.

SQL here uses `?` placeholders; the Postgres connection rewrites them to
`$n`. A `Records` object wraps one connection: inside `Store.write()` it is
one serialized transaction whose events get the next revision; inside
`Store.read()` it is a plain connection for reads.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..calls import Call
from ..domain.access import AuditEvent, Outcome, audit_text
from ..domain.model import (
    Event,
    Implementation,
    Page,
    ProgramSummary,
    ProgramVersion,
    SignatureSummary,
    SignatureVersion,
)
from ..domain.pagination import is_cursor
from ..domain.programs import PredictorSummary
from ..domain.signatures import Level, SignatureSpec
from ..errors import InvalidArgument
from .access_records import AccessQueries
from .check_records import CheckQueries
from .deployment_records import DeploymentQueries, EnvironmentQueries, TargetQueries
from .metric_records import MetricQueries
from .presence_records import PresenceQueries
from .sql import Connection, Row, like_prefix, now_us, to_datetime, to_us, visible_condition
from .sql import to_json as _json
from .webhook_records import WebhookQueries

ARTIFACT_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StoredRequest:
    method: str
    fingerprint: str
    response: bytes


_SIGNATURE_VERSION_COLUMNS = (
    "signature, version, spec, metadata, previous_version, compatibility, creator, create_time, revision"
)
_PROGRAM_VERSION_COLUMNS = (
    "program, version, digest, size_bytes, media_type, signature, signature_version, "
    "performance, labels, metadata, previous_version, change_type, predictors, yanked, "
    "yank_reason, creator, create_time, revision, sort_key"
)


def _signature_version(row: Row) -> SignatureVersion:
    compat = row["compatibility"]
    return SignatureVersion(
        signature=row["signature"],
        version=row["version"],
        spec=SignatureSpec.from_json(json.loads(row["spec"])),
        metadata=json.loads(row["metadata"]),
        previous_version=row["previous_version"],
        compatibility=Level(compat) if compat is not None else None,
        creator=row["creator"],
        create_time=to_datetime(row["create_time"]),
        revision=row["revision"],
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


def _signature(row: Row) -> SignatureSummary:
    return SignatureSummary(
        signature=row["name"],
        latest_version=row["latest_version"],
        version_count=row["version_count"],
        create_time=to_datetime(row["create_time"]),
        update_time=to_datetime(row["update_time"]),
    )


def _decode_version_cursor(after: str | None) -> tuple[str, str]:
    """The (sort_key, version) a newest-first page resumes after; "~~" sorts above every key."""
    if after is None:
        return "~~", ""
    try:
        key, version = json.loads(after)
    except (ValueError, TypeError, RecursionError):
        key = version = None
    if (
        not isinstance(key, str)
        or not isinstance(version, str)
        or not (is_cursor(key) and is_cursor(version))
    ):
        raise InvalidArgument.one("page_token", "is not a token this server issued")
    return key, version


def _version_cursor(rows: Sequence[Row], size: int) -> str | None:
    """Keyset cursor for newest-first version lists: (sort_key, version) of the last row."""
    if len(rows) <= size:
        return None
    last = rows[size - 1]
    return json.dumps([last["sort_key"], last["version"]])


class Records(
    AccessQueries,
    EnvironmentQueries,
    TargetQueries,
    DeploymentQueries,
    PresenceQueries,
    MetricQueries,
    WebhookQueries,
    CheckQueries,
):
    """Queries over one connection; in a write transaction, also the revision counter."""

    def __init__(
        self, conn: Connection, *, base_revision: int | None = None, call: Call | None = None
    ) -> None:
        self.conn = conn
        self.call = call  # the call a write transaction serves, for its audit event (see finish)
        self._base_revision = base_revision  # set only inside a write transaction
        self._revision: int | None = None
        self._seq = 0
        self.appended: list[Event] = []
        self.audit_call: Call | None = None
        self.replay = False  # this transaction only answers a retry (see mark_replay)

    # -- revisions and the event log -------------------------------------------------

    async def current_revision(self) -> int:
        row = await self.conn.fetchrow("SELECT revision FROM revisions WHERE id = 1")
        assert row is not None
        return int(row["revision"])

    async def append(self, events: Sequence[Event]) -> int:
        """Append events under this transaction's revision (the next one); return it."""
        if self._base_revision is None:
            raise RuntimeError("append() needs a write transaction")
        if self._revision is None:
            self._revision = self._base_revision + 1
            await self.conn.execute("UPDATE revisions SET revision = ? WHERE id = 1", self._revision)
        ts = now_us()
        first_seq = self._seq
        rows = []
        texts: dict[int, str] = {}  # by id(data): entries that share a payload share its JSON
        for event in events:
            text = texts.get(id(event.data))
            if text is None:
                text = texts[id(event.data)] = _json(event.data)
            rows.append((self._revision, self._seq, event.kind, event.resource, text, ts))
            self.appended.append(
                Event(
                    kind=event.kind,
                    resource=event.resource,
                    data=event.data,
                    revision=self._revision,
                    create_time=to_datetime(ts),
                )
            )
            self._seq += 1
        insert = (
            "INSERT INTO events (revision, seq, kind, resource, data, create_time) VALUES (?, ?, ?, ?, ?, ?)"
        )
        if len(rows) == 1:
            await self.conn.execute(insert, *rows[0])
        else:
            await self.conn.executemany(insert, rows)
        # The webhook outbox, in the same transaction: a delivery exists exactly when its event does.
        await self.queue_deliveries(self._revision, first_seq, events, ts)
        return self._revision

    def mark_replay(self) -> None:
        """This transaction answers a retry with the first answer: it writes no audit event, since the
        mutation has one already (one audit event per mutation, however often it is retried)."""
        self.replay = True

    async def finish(self) -> None:
        """Just before COMMIT: the audit event of the mutation this transaction serves, in it.

        One per call, however many transactions it takes or however often it is retried.
        """
        call = self.call
        if call is None or not call.mutation or call.audited or self.audit_call is not None or self.replay:
            return
        await self.insert_audit(
            AuditEvent(
                time=datetime.now(UTC),
                principal=call.principal,
                token=call.token,
                method=call.method,
                resource=audit_text(call.resource),
                request_id=audit_text(call.request_id, 128),
                outcome=Outcome.SUCCEEDED,
                code=0,
                message="",
                revision=self.revision if self.appended else 0,
                peer=audit_text(call.peer),
            )
        )
        self.audit_call = call

    def committed(self) -> None:
        """After COMMIT: the audit event written by finish() is durable."""
        if self.audit_call is not None:
            self.audit_call.audited = True

    @property
    def revision(self) -> int:
        """The store's revision once this transaction commits."""
        if self._base_revision is None:
            raise RuntimeError("revision needs a write transaction")
        return self._revision if self._revision is not None else self._base_revision

    @property
    def next_revision(self) -> int:
        """The revision this transaction's writes will carry."""
        if self._base_revision is None:
            raise RuntimeError("next_revision needs a write transaction")
        return self._base_revision + 1

    async def compacted_revision(self) -> int:
        """Events at or below this revision are gone from the log (a watcher there needs a snapshot)."""
        row = await self.conn.fetchrow("SELECT compacted FROM revisions WHERE id = 1")
        return int(row["compacted"]) if row else 0

    async def compact_events(self, before_us: int) -> int:
        """Drop the log's revisions written before `before_us`; returns the new compacted revision.

        Not a change anyone watches: no revision is consumed and no event written.
        """
        row = await self.conn.fetchrow(
            "SELECT MAX(revision) AS r FROM events WHERE create_time < ?", before_us
        )
        upto = int(row["r"]) if row and row["r"] is not None else 0
        current = await self.compacted_revision()
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

    # -- idempotency -------------------------------------------------------------------

    async def get_request(self, principal: str, request_id: str) -> StoredRequest | None:
        row = await self.conn.fetchrow(
            "SELECT method, fingerprint, response FROM requests WHERE principal = ? AND request_id = ?",
            principal,
            request_id,
        )
        if row is None:
            return None
        return StoredRequest(row["method"], row["fingerprint"], bytes(row["response"]))

    async def put_request(
        self, principal: str, request_id: str, method: str, fingerprint: str, response: bytes
    ) -> None:
        await self.conn.execute(
            "INSERT INTO requests (principal, request_id, method, fingerprint, response, create_time) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            principal,
            request_id,
            method,
            fingerprint,
            response,
            now_us(),
        )

    async def prune_requests(self, before_us: int) -> None:
        """Forget idempotency records older than `before_us`: retries are answered for a window."""
        await self.conn.execute("DELETE FROM requests WHERE create_time < ?", before_us)

    # -- signatures --------------------------------------------------------------------

    async def get_signature_version(self, signature: str, version: str) -> SignatureVersion | None:
        row = await self.conn.fetchrow(
            f"SELECT {_SIGNATURE_VERSION_COLUMNS} FROM signature_versions "
            "WHERE signature = ? AND version = ?",
            signature,
            version,
        )
        return _signature_version(row) if row else None

    async def latest_signature_version(self, signature: str) -> SignatureVersion | None:
        row = await self.conn.fetchrow(
            f"SELECT {_SIGNATURE_VERSION_COLUMNS} FROM signature_versions WHERE signature = ? "
            "AND version = (SELECT latest_version FROM signatures WHERE name = ?)",
            signature,
            signature,
        )
        return _signature_version(row) if row else None

    async def resolve_signature_version(self, signature: str, version: str) -> str | None:
        """The exact version `version` names (`latest` resolved), if it exists."""
        if version == "latest":
            row = await self.conn.fetchrow("SELECT latest_version FROM signatures WHERE name = ?", signature)
            return str(row["latest_version"]) if row else None
        row = await self.conn.fetchrow(
            "SELECT version FROM signature_versions WHERE signature = ? AND version = ?", signature, version
        )
        return str(row["version"]) if row else None

    async def _neighbour(
        self, table: str, columns: str, owner_column: str, owner: str, sort_key: str, *, below: bool
    ) -> Row | None:
        """The version of `owner` next in precedence below (or above) `sort_key`, yanked or not: what
        the semver guards compare a new version with. Table and column names are this module's own."""
        order = "sort_key DESC, version DESC" if below else "sort_key, version"
        return await self.conn.fetchrow(
            f"SELECT {columns} FROM {table} WHERE {owner_column} = ? AND sort_key {'<' if below else '>'} ? "
            f"ORDER BY {order} LIMIT 1",
            owner,
            sort_key,
        )

    async def signature_version_below(self, signature: str, sort_key: str) -> SignatureVersion | None:
        """The highest version with lower precedence: what the semver guard compares with."""
        row = await self._neighbour(
            "signature_versions", _SIGNATURE_VERSION_COLUMNS, "signature", signature, sort_key, below=True
        )
        return _signature_version(row) if row else None

    async def signature_version_above(self, signature: str, sort_key: str) -> SignatureVersion | None:
        """The lowest version with higher precedence: what a backport must stay compatible with."""
        row = await self._neighbour(
            "signature_versions", _SIGNATURE_VERSION_COLUMNS, "signature", signature, sort_key, below=False
        )
        return _signature_version(row) if row else None

    async def highest_signature_release(self, signature: str) -> str | None:
        row = await self.conn.fetchrow(
            "SELECT version FROM signature_versions WHERE signature = ? AND sort_key LIKE '%~' "
            "ORDER BY sort_key DESC, version DESC LIMIT 1",
            signature,
        )
        return str(row["version"]) if row else None

    async def insert_signature_version(self, sv: SignatureVersion, sort_key: str) -> None:
        ts = to_us(sv.create_time)
        await self.conn.execute(
            "INSERT INTO signatures (name, latest_version, version_count, create_time, update_time) "
            "VALUES (?, '', 0, ?, ?) ON CONFLICT (name) DO NOTHING",
            sv.signature,
            ts,
            ts,
        )
        await self.conn.execute(
            "INSERT INTO signature_versions (signature, version, sort_key, spec, metadata, "
            "previous_version, compatibility, creator, create_time, revision) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            sv.signature,
            sv.version,
            sort_key,
            _json(sv.spec.to_json()),
            _json(sv.metadata),
            sv.previous_version,
            int(sv.compatibility) if sv.compatibility is not None else None,
            sv.creator,
            ts,
            sv.revision,
        )
        # Latest: the highest release, else the highest pre-release (sort keys of
        # releases end in "~", which sorts above every pre-release of that core).
        await self.conn.execute(
            "UPDATE signatures SET update_time = ?, version_count = version_count + 1, "
            "latest_version = COALESCE("
            " (SELECT version FROM signature_versions WHERE signature = ? AND sort_key LIKE '%~' "
            "  ORDER BY sort_key DESC, version DESC LIMIT 1),"
            " (SELECT version FROM signature_versions WHERE signature = ? "
            "  ORDER BY sort_key DESC, version DESC LIMIT 1)) "
            "WHERE name = ?",
            ts,
            sv.signature,
            sv.signature,
            sv.signature,
        )

    async def list_signatures(
        self, prefix: str, visible: list[str] | None, page: Page
    ) -> tuple[list[SignatureSummary], str | None, int]:
        """Signatures by name; only those matching a `visible` glob (None: all)."""
        allowed, allowed_args = visible_condition("name", visible)
        condition = f"name LIKE ? ESCAPE '\\' AND {allowed}"
        args = [like_prefix(prefix), *allowed_args]
        rows = await self.conn.fetch(
            "SELECT name, latest_version, version_count, create_time, update_time FROM signatures "
            f"WHERE {condition} AND name > ? ORDER BY name LIMIT ?",
            *args,
            page.after or "",
            page.size + 1,
        )
        total = await self.conn.fetchrow(f"SELECT COUNT(*) AS n FROM signatures WHERE {condition}", *args)
        after = rows[page.size - 1]["name"] if len(rows) > page.size else None
        return [_signature(r) for r in rows[: page.size]], after, int(total["n"]) if total else 0

    async def list_signature_versions(
        self, signature: str, page: Page
    ) -> tuple[list[SignatureVersion], str | None, int]:
        key, version = _decode_version_cursor(page.after)
        rows = await self.conn.fetch(
            f"SELECT {_SIGNATURE_VERSION_COLUMNS}, sort_key FROM signature_versions "
            "WHERE signature = ? AND (sort_key < ? OR (sort_key = ? AND version < ?)) "
            "ORDER BY sort_key DESC, version DESC LIMIT ?",
            signature,
            key,
            key,
            version,
            page.size + 1,
        )
        total = await self.conn.fetchrow("SELECT version_count FROM signatures WHERE name = ?", signature)
        count = int(total["version_count"]) if total else 0
        return (
            [_signature_version(r) for r in rows[: page.size]],
            _version_cursor(rows, page.size),
            count,
        )

    # -- artifacts ---------------------------------------------------------------------

    async def put_artifact(self, digest: str, chunks: Sequence[bytes]) -> None:
        """Store an artifact once per digest; a second put of the same digest is a no-op."""
        await self.conn.execute(
            "INSERT INTO artifacts (digest, size_bytes, chunk_count, create_time) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (digest) DO NOTHING",
            digest,
            sum(len(c) for c in chunks),
            len(chunks),
            now_us(),
        )
        await self.conn.executemany(
            "INSERT INTO artifact_chunks (digest, seq, data) VALUES (?, ?, ?) "
            "ON CONFLICT (digest, seq) DO NOTHING",
            [(digest, i, chunk) for i, chunk in enumerate(chunks)],
        )

    async def put_artifact_from(self, digest: str, size_bytes: int, chunks: AsyncIterator[bytes]) -> None:
        """put_artifact, the chunks (ARTIFACT_CHUNK each) read one at a time: an upload's never all in memory."""
        if await self.conn.fetchrow("SELECT 1 FROM artifacts WHERE digest = ?", digest) is not None:
            return  # stored once per digest: the bytes need not even be read
        await self.conn.execute(
            "INSERT INTO artifacts (digest, size_bytes, chunk_count, create_time) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (digest) DO NOTHING",
            digest,
            size_bytes,
            -(-size_bytes // ARTIFACT_CHUNK),
            now_us(),
        )
        seq = 0
        async for chunk in chunks:
            await self.conn.execute(
                "INSERT INTO artifact_chunks (digest, seq, data) VALUES (?, ?, ?) "
                "ON CONFLICT (digest, seq) DO NOTHING",
                digest,
                seq,
                chunk,
            )
            seq += 1

    async def artifact_chunk_count(self, program: str, digest: str) -> int | None:
        """The chunk count of `digest` if some version of `program` uses it, else None."""
        row = await self.conn.fetchrow(
            "SELECT a.chunk_count FROM artifacts a WHERE a.digest = ? AND EXISTS "
            "(SELECT 1 FROM program_versions v WHERE v.digest = a.digest AND v.program = ?)",
            digest,
            program,
        )
        return int(row["chunk_count"]) if row else None

    async def artifact_chunk(self, digest: str, seq: int) -> bytes:
        row = await self.conn.fetchrow(
            "SELECT data FROM artifact_chunks WHERE digest = ? AND seq = ?", digest, seq
        )
        assert row is not None, f"artifact {digest} lost chunk {seq}"
        return bytes(row["data"])

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

    # -- programs ----------------------------------------------------------------------

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
        row = await self._neighbour(
            "program_versions", _IMPLEMENTATION, "program", program, sort_key, below=True
        )
        return _implementation(row) if row else None

    async def program_version_above(self, program: str, sort_key: str) -> Implementation | None:
        """The lowest version with higher precedence: what a backport must stay compatible with."""
        row = await self._neighbour(
            "program_versions", _IMPLEMENTATION, "program", program, sort_key, below=False
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
        key, version = _decode_version_cursor(page.after)
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
            _version_cursor(rows, page.size),
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

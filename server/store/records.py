"""The queries of one store transaction, written once for both backends: `Records`.

SQL here uses `?` placeholders; the Postgres connection rewrites them to
`$n`. A `Records` object wraps one connection: inside `Store.write()` it is
one serialized transaction whose events get the next revision; inside
`Store.read()` it is a plain connection for reads.

Each aggregate's queries are a module of their own (signature_records, program_records,
artifact_records, event_records, request_records, access_records, deployment_records, …), mixed
into `Records`; what is left here is the write transaction's own state: the revision it takes,
the events it appends, and the audit event it writes before COMMIT.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from ..calls import Call
from ..domain.access import AuditEvent, Outcome, audit_text
from ..domain.model import Event
from .access_records import AccessQueries
from .artifact_records import ArtifactQueries
from .check_records import CheckQueries
from .deployment_records import DeploymentQueries, EnvironmentQueries, TargetQueries
from .event_records import EventLogQueries
from .metric_records import MetricQueries
from .presence_records import PresenceQueries
from .program_records import ProgramQueries
from .request_records import RequestQueries
from .signature_records import SignatureQueries
from .sql import Connection, now_us, to_datetime
from .sql import to_json as _json
from .webhook_records import WebhookQueries


class Records(
    EventLogQueries,
    RequestQueries,
    SignatureQueries,
    ProgramQueries,
    ArtifactQueries,
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
        self,
        conn: Connection,
        *,
        base_revision: int | None = None,
        call: Call | None = None,
        revision_row: bool = True,
    ) -> None:
        """`revision_row=False`: the caller writes the revision row itself (SQLite's writer, once per
        batch of transactions that share its COMMIT), not each transaction that appends."""
        self.conn = conn
        self.call = call  # the call a write transaction serves, for its audit event (see finish)
        self._base_revision = base_revision  # set only inside a write transaction
        self._revision_row = revision_row
        self._revision: int | None = None
        self._seq = 0
        self.appended: list[Event] = []
        self.audit_call: Call | None = None
        self.replay = False  # this transaction only answers a retry (see mark_replay)

    # -- the write transaction: its revision, its events, its audit event --------------

    async def append(self, events: Sequence[Event]) -> int:
        """Append events under this transaction's revision (the next one); return it."""
        if self._base_revision is None:
            raise RuntimeError("append() needs a write transaction")
        if self._revision is None:
            self._revision = self._base_revision + 1
            if self._revision_row:
                await self.conn.execute("UPDATE revisions SET revision = ? WHERE id = 1", self._revision)
        ts = now_us()
        create_time = to_datetime(ts)  # one time for the transaction's events, as their rows have
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
                    create_time=create_time,
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

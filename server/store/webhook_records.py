"""Every query of webhooks and their delivery outbox.

Written once for both backends, like records.py, whose Records class mixes
these in. `queue_deliveries` is the outbox's write side: `Records.append`
calls it for the events of every write transaction, so a delivery row
exists exactly when its event committed. The notifier claims due rows in
write transactions (which serialize, across replicas too), so one attempt of
a delivery is in flight at a time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from ..domain import webhooks
from ..domain.deployments import Kind
from ..domain.events import DeploymentChanged, deployment_kind, is_deployment_kind
from ..domain.model import Event, Page
from ..domain.webhooks import Delivery, DeliveryState, Due, Interest, Selector, SigningSecret, Webhook
from ..errors import InvalidArgument
from .sql import Connection, Row, forget_oldest, to_datetime, to_json, to_us

# `secret` is empty since migration 12: a webhook's secrets are rows of webhook_secrets.
_WEBHOOK_COLUMNS = "name, url, event_kinds, selectors, secret, description, creator, create_time, revision"
_DELIVERY_COLUMNS = (
    "id, webhook, revision, seq, event_kind, state, attempts, last_response_code, last_error, "
    "create_time, last_attempt_time, next_attempt_time, complete_time"
)


def _selectors(text: str) -> tuple[Selector, ...]:
    return tuple(Selector(program, environment) for program, environment in json.loads(text))


def _interest(row: Row) -> Interest:
    return Interest(frozenset(Kind(k) for k in json.loads(row["event_kinds"])), _selectors(row["selectors"]))


def _webhook(row: Row, secrets: dict[str, list[SigningSecret]]) -> Webhook:
    return Webhook(
        id=row["name"],
        url=row["url"],
        event_kinds=tuple(Kind(k) for k in json.loads(row["event_kinds"])),
        selectors=_selectors(row["selectors"]),
        secrets=tuple(secrets.get(row["name"], ())),
        description=row["description"],
        creator=row["creator"],
        create_time=to_datetime(row["create_time"]),
        revision=row["revision"],
    )


def _optional_time(value: int | None) -> datetime | None:
    return to_datetime(value) if value is not None else None


def _delivery(row: Row) -> Delivery:
    return Delivery(
        id=row["id"],
        webhook=row["webhook"],
        event_id=f"{row['revision']}-{row['seq']}",
        event_kind=Kind(row["event_kind"]),
        state=DeliveryState(row["state"]),
        attempts=row["attempts"],
        last_response_code=row["last_response_code"],
        last_error=row["last_error"],
        create_time=to_datetime(row["create_time"]),
        last_attempt_time=_optional_time(row["last_attempt_time"]),
        next_attempt_time=_optional_time(row["next_attempt_time"]),
        complete_time=_optional_time(row["complete_time"]),
    )


def _event_cursor(after: str | None) -> tuple[int, int]:
    """The (revision, seq) a newest-first page of deliveries resumes before."""
    if after is None:
        return 2**62, 0
    try:
        revision, seq = json.loads(after)
    except (ValueError, TypeError, RecursionError):
        revision = seq = None
    if not isinstance(revision, int) or not isinstance(seq, int):
        raise InvalidArgument.one("page_token", "is not a token this server issued")
    return revision, seq


class WebhookQueries:
    conn: Connection

    # -- webhooks ----------------------------------------------------------------------------

    async def count_webhooks(self) -> int:
        row = await self.conn.fetchrow("SELECT COUNT(*) AS n FROM webhooks")
        return int(row["n"]) if row else 0

    async def _secrets(self, webhook_ids: Sequence[str]) -> dict[str, list[SigningSecret]]:
        """The active secrets of these webhooks, oldest first."""
        if not webhook_ids:
            return {}
        rows = await self.conn.fetch(
            "SELECT webhook, id, secret, create_time FROM webhook_secrets "
            f"WHERE webhook IN ({', '.join('?' for _ in webhook_ids)}) ORDER BY create_time, id",
            *webhook_ids,
        )
        out: dict[str, list[SigningSecret]] = {}
        for r in rows:
            secret = SigningSecret(id=r["id"], value=r["secret"], create_time=to_datetime(r["create_time"]))
            out.setdefault(r["webhook"], []).append(secret)
        return out

    async def get_webhook(self, webhook_id: str) -> Webhook | None:
        row = await self.conn.fetchrow(f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE name = ?", webhook_id)
        return _webhook(row, await self._secrets([webhook_id])) if row else None

    async def insert_webhook(self, w: Webhook) -> None:
        await self.conn.execute(
            f"INSERT INTO webhooks ({_WEBHOOK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            w.id,
            w.url,
            to_json([int(k) for k in w.event_kinds]),
            to_json([[s.program, s.environment] for s in w.selectors]),
            "",
            w.description,
            w.creator,
            to_us(w.create_time),
            w.revision,
        )
        for secret in w.secrets:
            await self.insert_webhook_secret(w.id, secret)

    async def insert_webhook_secret(self, webhook_id: str, secret: SigningSecret) -> None:
        await self.conn.execute(
            "INSERT INTO webhook_secrets (webhook, id, secret, create_time) VALUES (?, ?, ?, ?)",
            webhook_id,
            secret.id,
            secret.value,
            to_us(secret.create_time),
        )

    async def delete_webhook_secret(self, webhook_id: str, secret_id: str) -> None:
        await self.conn.execute(
            "DELETE FROM webhook_secrets WHERE webhook = ? AND id = ?", webhook_id, secret_id
        )

    async def touch_webhook(self, webhook_id: str, revision: int) -> None:
        """The webhook changed (its secrets) at `revision`."""
        await self.conn.execute("UPDATE webhooks SET revision = ? WHERE name = ?", revision, webhook_id)

    async def delete_webhook(self, webhook_id: str) -> None:
        """The webhook, its secrets and its deliveries: pending ones are never attempted again."""
        await self.conn.execute("DELETE FROM webhook_deliveries WHERE webhook = ?", webhook_id)
        await self.conn.execute("DELETE FROM webhook_secrets WHERE webhook = ?", webhook_id)
        await self.conn.execute("DELETE FROM webhooks WHERE name = ?", webhook_id)

    async def list_webhooks(self, page: Page) -> tuple[list[Webhook], str | None, int]:
        rows = await self.conn.fetch(
            f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE name > ? ORDER BY name LIMIT ?",
            page.after or "",
            page.size + 1,
        )
        total = await self.count_webhooks()
        after = str(rows[page.size - 1]["name"]) if len(rows) > page.size else None
        secrets = await self._secrets([r["name"] for r in rows[: page.size]])
        return [_webhook(r, secrets) for r in rows[: page.size]], after, total

    # -- the outbox ----------------------------------------------------------------------------

    async def queue_deliveries(self, revision: int, first_seq: int, events: Sequence[Event], ts: int) -> None:
        """One PENDING delivery per deployment event and webhook that wants it, in this transaction."""
        if not any(is_deployment_kind(e.kind) for e in events):
            return
        # Read in this transaction (writes serialize): a webhook created or deleted by an
        # earlier commit is seen, one of a later commit is not. The table is small, and most
        # often empty: the events' kinds are looked up only for webhooks that may want them.
        interests = [
            (str(r["name"]), _interest(r))
            for r in await self.conn.fetch("SELECT name, event_kinds, selectors FROM webhooks")
        ]
        if not interests:
            return
        wanted = [
            (first_seq + i, kind, e)
            for i, e in enumerate(events)
            if (kind := deployment_kind(e.kind)) is not None
        ]
        rows = []
        for seq, kind, e in wanted:
            change = DeploymentChanged.from_json(e.data)
            body: str | None = None
            for name, interest in interests:
                if not interest.matches(kind, change.program, change.environment):
                    continue
                if body is None:
                    body = webhooks.event_body(
                        f"{revision}-{seq}", kind, revision, to_datetime(ts), e.resource, change
                    )
                rows.append(
                    (
                        webhooks.new_delivery_id(),
                        name,
                        revision,
                        seq,
                        int(kind),
                        body,
                        int(DeliveryState.PENDING),
                        0,
                        0,
                        "",
                        ts,
                        None,
                        ts,
                        None,
                    )
                )
        await self.conn.executemany(
            "INSERT INTO webhook_deliveries (id, webhook, revision, seq, event_kind, body, state, attempts, "
            "last_response_code, last_error, create_time, last_attempt_time, next_attempt_time, "
            "complete_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    async def list_deliveries(
        self, webhook_id: str, states: Sequence[DeliveryState], page: Page
    ) -> tuple[list[Delivery], str | None, int]:
        """A webhook's deliveries, newest event first."""
        where = ["webhook = ?"]
        args: list[object] = [webhook_id]
        if states:
            where.append(f"state IN ({', '.join('?' for _ in states)})")
            args += [int(s) for s in states]
        condition = " AND ".join(where)
        revision, seq = _event_cursor(page.after)
        rows = await self.conn.fetch(
            f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE {condition} "
            "AND (revision < ? OR (revision = ? AND seq < ?)) ORDER BY revision DESC, seq DESC LIMIT ?",
            *args,
            revision,
            revision,
            seq,
            page.size + 1,
        )
        total = await self.conn.fetchrow(
            f"SELECT COUNT(*) AS n FROM webhook_deliveries WHERE {condition}", *args
        )
        after = None
        if len(rows) > page.size:
            last = rows[page.size - 1]
            after = json.dumps([last["revision"], last["seq"]])
        return [_delivery(r) for r in rows[: page.size]], after, int(total["n"]) if total else 0

    async def next_delivery_time(self) -> datetime | None:
        """When the earliest pending delivery is due (or its lease ends)."""
        row = await self.conn.fetchrow(
            "SELECT MIN(next_attempt_time) AS t FROM webhook_deliveries WHERE state = ?",
            int(DeliveryState.PENDING),
        )
        return to_datetime(row["t"]) if row and row["t"] is not None else None

    async def claim_deliveries(self, now: datetime, lease_until: datetime, limit: int) -> list[Due]:
        """Up to `limit` due deliveries, leased until `lease_until` (needs a write transaction)."""
        rows = await self.conn.fetch(
            "SELECT d.id, d.webhook, d.event_kind, d.body, d.attempts, d.create_time, w.url "
            "FROM webhook_deliveries d JOIN webhooks w ON w.name = d.webhook "
            "WHERE d.state = ? AND d.next_attempt_time <= ? ORDER BY d.next_attempt_time, d.id LIMIT ?",
            int(DeliveryState.PENDING),
            to_us(now),
            limit,
        )
        if not rows:
            return []
        await self.conn.executemany(
            "UPDATE webhook_deliveries SET next_attempt_time = ? WHERE id = ?",
            [(to_us(lease_until), r["id"]) for r in rows],
        )
        # Read in the claim's transaction: an attempt signs with the secrets active as it was claimed.
        secrets = await self._secrets(sorted({r["webhook"] for r in rows}))
        return [
            Due(
                id=r["id"],
                webhook=r["webhook"],
                url=r["url"],
                secrets=tuple(secret.value for secret in secrets.get(r["webhook"], ())),
                event_kind=Kind(r["event_kind"]),
                body=r["body"],
                attempts=r["attempts"],
                create_time=to_datetime(r["create_time"]),
                lease_until=lease_until,
            )
            for r in rows
        ]

    async def settle_delivery(
        self,
        delivery_id: str,
        state: DeliveryState,
        response_code: int,
        error: str,
        attempted: datetime,
        next_attempt: datetime | None,
        lease_until: datetime,
    ) -> None:
        """Record one attempt's outcome, if the attempt still holds its lease.

        An attempt that outlived its lease was claimed again by someone else: its
        outcome is theirs to record. A delivery deleted with its webhook stays gone.
        """
        await self.conn.execute(
            "UPDATE webhook_deliveries SET state = ?, attempts = attempts + 1, last_response_code = ?, "
            "last_error = ?, last_attempt_time = ?, next_attempt_time = ?, complete_time = ? "
            "WHERE id = ? AND state = ? AND next_attempt_time = ?",
            int(state),
            response_code,
            error,
            to_us(attempted),
            to_us(next_attempt) if next_attempt is not None else None,
            to_us(attempted) if state != DeliveryState.PENDING else None,
            delivery_id,
            int(DeliveryState.PENDING),
            to_us(lease_until),
        )

    async def forget_deliveries(self, before: datetime, most: int) -> int:
        """Drop deliveries completed before `before` (retention), the `most` oldest of them; returns
        how many it dropped."""
        return await forget_oldest(
            self.conn, "webhook_deliveries", ("id",), "complete_time", to_us(before), most
        )

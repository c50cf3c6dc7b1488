"""Every query of access control: principals, tokens, grants and the audit log.

Written once for both backends, like records.py, whose Records class mixes
these in. Audit events are only ever inserted and read: no query here
updates or deletes one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from ..domain.access import (
    Action,
    AuditEvent,
    AuditFilter,
    Grant,
    Outcome,
    Principal,
    PrincipalType,
    Token,
)
from ..domain.model import Page
from ..errors import InvalidArgument
from .sql import Connection, Row, like_prefix, to_datetime, to_us

_PRINCIPAL_COLUMNS = (
    "name, type, display_name, team, email, certificate_subjects, disabled, disable_reason, "
    "creator, create_time, update_time, revision"
)
_TOKEN_COLUMNS = (
    "id, principal, description, expire_time, revoked, revoke_time, creator, create_time, revision, "
    "last_use_time"
)
_GRANT_COLUMNS = "id, principal, action, resource, creator, create_time, revision"
_AUDIT_COLUMNS = (
    "id, time, principal, token, method, resource, request_id, outcome, code, message, revision, peer"
)


def _principal(row: Row) -> Principal:
    return Principal(
        name=row["name"],
        type=PrincipalType(row["type"]),
        display_name=row["display_name"],
        team=row["team"],
        email=row["email"],
        certificate_subjects=tuple(json.loads(row["certificate_subjects"])),
        disabled=bool(row["disabled"]),
        disable_reason=row["disable_reason"],
        creator=row["creator"],
        create_time=to_datetime(row["create_time"]),
        update_time=to_datetime(row["update_time"]),
        revision=row["revision"],
    )


def _optional_time(value: int | None) -> datetime | None:
    return to_datetime(value) if value is not None else None


def _token(row: Row) -> Token:
    return Token(
        id=row["id"],
        principal=row["principal"],
        description=row["description"],
        secret_prefix=f"dspyr_{row['id']}_",
        expire_time=_optional_time(row["expire_time"]),
        revoked=bool(row["revoked"]),
        revoke_time=_optional_time(row["revoke_time"]),
        creator=row["creator"],
        create_time=to_datetime(row["create_time"]),
        revision=row["revision"],
        last_use_time=_optional_time(row["last_use_time"]),
    )


def _grant(row: Row) -> Grant:
    return Grant(
        id=row["id"],
        principal=row["principal"],
        action=Action(row["action"]),
        resource=row["resource"],
        creator=row["creator"],
        create_time=to_datetime(row["create_time"]),
        revision=row["revision"],
    )


def _audit(row: Row) -> AuditEvent:
    return AuditEvent(
        id=row["id"],
        time=to_datetime(row["time"]),
        principal=row["principal"],
        token=row["token"],
        method=row["method"],
        resource=row["resource"],
        request_id=row["request_id"],
        outcome=Outcome(row["outcome"]),
        code=row["code"],
        message=row["message"],
        revision=row["revision"],
        peer=row["peer"],
    )


def _page(rows: Sequence[Row], size: int, key: str) -> str | None:
    return str(rows[size - 1][key]) if len(rows) > size else None


def _audit_cursor(after: str | None) -> int:
    if after is None:
        return 2**62
    if not (after.isascii() and after.isdigit()) or len(after) > 18:
        raise InvalidArgument.one("page_token", "is not a token this server issued")
    return int(after)


class AccessQueries:
    conn: Connection

    async def _keyed_page(
        self, table: str, columns: str, key: str, where: list[str], args: list[object], page: Page
    ) -> tuple[Sequence[Row], str | None, int]:
        """One page of `table` ordered by its unique `key`, after the page's cursor, and the total matching."""
        condition = " AND ".join(where)
        rows = await self.conn.fetch(
            f"SELECT {columns} FROM {table} WHERE {condition} AND {key} > ? ORDER BY {key} LIMIT ?",
            *args,
            page.after or "",
            page.size + 1,
        )
        total = await self.conn.fetchrow(f"SELECT COUNT(*) AS n FROM {table} WHERE {condition}", *args)
        return rows[: page.size], _page(rows, page.size, key), int(total["n"]) if total else 0

    # -- principals ----------------------------------------------------------------------

    async def count_principals(self) -> int:
        row = await self.conn.fetchrow("SELECT COUNT(*) AS n FROM principals")
        return int(row["n"]) if row else 0

    async def insert_principal(self, p: Principal) -> None:
        await self.conn.execute(
            f"INSERT INTO principals ({_PRINCIPAL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            p.name,
            int(p.type),
            p.display_name,
            p.team,
            p.email,
            json.dumps(list(p.certificate_subjects)),
            p.disabled,
            p.disable_reason,
            p.creator,
            to_us(p.create_time),
            to_us(p.update_time),
            p.revision,
        )
        await self.conn.executemany(
            "INSERT INTO principal_subjects (subject, principal) VALUES (?, ?)",
            [(subject, p.name) for subject in p.certificate_subjects],
        )

    async def get_principal(self, name: str) -> Principal | None:
        row = await self.conn.fetchrow(f"SELECT {_PRINCIPAL_COLUMNS} FROM principals WHERE name = ?", name)
        return _principal(row) if row else None

    async def principal_by_subject(self, subject: str) -> Principal | None:
        row = await self.conn.fetchrow(
            f"SELECT {_PRINCIPAL_COLUMNS} FROM principals WHERE name = "
            "(SELECT principal FROM principal_subjects WHERE subject = ?)",
            subject,
        )
        return _principal(row) if row else None

    async def subject_owner(self, subject: str) -> str | None:
        row = await self.conn.fetchrow("SELECT principal FROM principal_subjects WHERE subject = ?", subject)
        return str(row["principal"]) if row else None

    async def set_principal_disabled(
        self, name: str, disabled: bool, reason: str, revision: int, now: datetime
    ) -> None:
        await self.conn.execute(
            "UPDATE principals SET disabled = ?, disable_reason = ?, revision = ?, update_time = ? "
            "WHERE name = ?",
            disabled,
            reason,
            revision,
            to_us(now),
            name,
        )

    async def list_principals(
        self, type_: PrincipalType | None, team: str, include_disabled: bool, page: Page
    ) -> tuple[list[Principal], str | None, int]:
        where: list[str] = ["1 = 1"]
        args: list[object] = []
        if type_ is not None:
            where.append("type = ?")
            args.append(int(type_))
        if team:
            where.append("team = ?")
            args.append(team)
        if not include_disabled:
            where.append("disabled = ?")
            args.append(False)
        rows, next_after, total = await self._keyed_page(
            "principals", _PRINCIPAL_COLUMNS, "name", where, args, page
        )
        return [_principal(r) for r in rows], next_after, total

    # -- tokens --------------------------------------------------------------------------

    async def insert_token(self, t: Token, secret_hash: str) -> None:
        await self.conn.execute(
            f"INSERT INTO tokens ({_TOKEN_COLUMNS}, secret_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            t.id,
            t.principal,
            t.description,
            to_us(t.expire_time) if t.expire_time else None,
            t.revoked,
            None,
            t.creator,
            to_us(t.create_time),
            t.revision,
            None,
            secret_hash,
        )

    async def get_token(self, token_id: str) -> Token | None:
        row = await self.conn.fetchrow(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE id = ?", token_id)
        return _token(row) if row else None

    async def token_for_authentication(self, token_id: str) -> tuple[Token, str, Principal] | None:
        """A token, its secret's hash and its principal: one round trip per cache miss."""
        row = await self.conn.fetchrow(
            f"SELECT {', '.join('t.' + c.strip() for c in _TOKEN_COLUMNS.split(','))}, t.secret_hash, "
            f"{', '.join('p.' + c.strip() + ' AS p_' + c.strip() for c in _PRINCIPAL_COLUMNS.split(','))} "
            "FROM tokens t JOIN principals p ON p.name = t.principal WHERE t.id = ?",
            token_id,
        )
        if row is None:
            return None
        principal_row = {c.strip(): row["p_" + c.strip()] for c in _PRINCIPAL_COLUMNS.split(",")}
        return _token(row), str(row["secret_hash"]), _principal(principal_row)

    async def touch_token(self, token_id: str, when: datetime) -> None:
        """Record a use; not a change anyone watches, so no revision and no event."""
        await self.conn.execute("UPDATE tokens SET last_use_time = ? WHERE id = ?", to_us(when), token_id)

    async def revoke_token(self, token_id: str, revision: int, now: datetime) -> None:
        await self.conn.execute(
            "UPDATE tokens SET revoked = ?, revoke_time = ?, revision = ? WHERE id = ?",
            True,
            to_us(now),
            revision,
            token_id,
        )

    async def active_token_ids(self, principal: str, now: datetime) -> list[str]:
        """The ids of `principal`'s tokens neither revoked nor expired at `now`."""
        rows = await self.conn.fetch(
            "SELECT id FROM tokens WHERE principal = ? AND revoked = ? "
            "AND (expire_time IS NULL OR expire_time > ?) ORDER BY id",
            principal,
            False,
            to_us(now),
        )
        return [str(r["id"]) for r in rows]

    async def list_tokens(
        self, principal: str | None, active_at: datetime | None, page: Page
    ) -> tuple[list[Token], str | None, int]:
        """Tokens of one principal (or all), oldest id first; only active ones when `active_at`."""
        where: list[str] = ["1 = 1"]
        args: list[object] = []
        if principal is not None:
            where.append("principal = ?")
            args.append(principal)
        if active_at is not None:
            where.append("revoked = ? AND (expire_time IS NULL OR expire_time > ?)")
            args += [False, to_us(active_at)]
        rows, next_after, total = await self._keyed_page("tokens", _TOKEN_COLUMNS, "id", where, args, page)
        return [_token(r) for r in rows], next_after, total

    # -- grants --------------------------------------------------------------------------

    async def insert_grant(self, g: Grant) -> None:
        await self.conn.execute(
            f"INSERT INTO grants ({_GRANT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            g.id,
            g.principal,
            int(g.action),
            g.resource,
            g.creator,
            to_us(g.create_time),
            g.revision,
        )

    async def find_grant(self, principal: str, action: Action, resource: str) -> Grant | None:
        row = await self.conn.fetchrow(
            f"SELECT {_GRANT_COLUMNS} FROM grants WHERE principal = ? AND action = ? AND resource = ?",
            principal,
            int(action),
            resource,
        )
        return _grant(row) if row else None

    async def get_grant(self, grant_id: str) -> Grant | None:
        row = await self.conn.fetchrow(f"SELECT {_GRANT_COLUMNS} FROM grants WHERE id = ?", grant_id)
        return _grant(row) if row else None

    async def delete_grant(self, grant_id: str) -> None:
        await self.conn.execute("DELETE FROM grants WHERE id = ?", grant_id)

    async def grants_of(self, principal: str) -> tuple[Grant, ...]:
        rows = await self.conn.fetch(
            f"SELECT {_GRANT_COLUMNS} FROM grants WHERE principal = ? ORDER BY id", principal
        )
        return tuple(_grant(r) for r in rows)

    async def list_grants(
        self, principal: str, action: Action | None, resource: str, page: Page
    ) -> tuple[list[Grant], str | None, int]:
        where: list[str] = ["1 = 1"]
        args: list[object] = []
        if principal:
            where.append("principal = ?")
            args.append(principal)
        if action is not None:
            where.append("action = ?")
            args.append(int(action))
        if resource:
            where.append("resource = ?")
            args.append(resource)
        rows, next_after, total = await self._keyed_page("grants", _GRANT_COLUMNS, "id", where, args, page)
        return [_grant(r) for r in rows], next_after, total

    # -- audit ---------------------------------------------------------------------------

    async def insert_audit(self, e: AuditEvent) -> None:
        await self.conn.execute(
            "INSERT INTO audit_events (time, principal, token, method, resource, request_id, outcome, "
            "code, message, revision, peer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            to_us(e.time),
            e.principal,
            e.token,
            e.method,
            e.resource,
            e.request_id,
            int(e.outcome),
            e.code,
            e.message,
            e.revision,
            e.peer,
        )

    async def list_audit(self, f: AuditFilter, page: Page) -> tuple[list[AuditEvent], str | None, int]:
        """Audit events matching `f`, newest first."""
        where: list[str] = ["1 = 1"]
        args: list[object] = []
        if f.principal:
            where.append("principal = ?")
            args.append(f.principal)
        if f.resource:
            where.append("(resource = ? OR resource LIKE ? ESCAPE '\\')")
            args += [f.resource, like_prefix(f.resource.rstrip("/") + "/")]
        if f.method:
            where.append("method = ?")
            args.append(f.method)
        if f.start_time is not None:
            where.append("time >= ?")
            args.append(to_us(f.start_time))
        if f.end_time is not None:
            where.append("time < ?")
            args.append(to_us(f.end_time))
        if f.outcomes:
            where.append(f"outcome IN ({', '.join('?' for _ in f.outcomes)})")
            args += [int(o) for o in f.outcomes]
        if f.codes:
            where.append(f"code IN ({', '.join('?' for _ in f.codes)})")
            args += list(f.codes)
        condition = " AND ".join(where)
        before = _audit_cursor(page.after)
        rows = await self.conn.fetch(
            f"SELECT {_AUDIT_COLUMNS} FROM audit_events WHERE {condition} AND id < ? "
            "ORDER BY id DESC LIMIT ?",
            *args,
            before,
            page.size + 1,
        )
        total = await self.conn.fetchrow(f"SELECT COUNT(*) AS n FROM audit_events WHERE {condition}", *args)
        return (
            [_audit(r) for r in rows[: page.size]],
            _page(rows, page.size, "id"),
            int(total["n"]) if total else 0,
        )

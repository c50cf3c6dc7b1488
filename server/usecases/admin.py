"""The `admin` principal: made on the first start of an empty store, and recovered offline.

The first start gives `admin` admin on `*` and one token: the token its
`--admin-token-file` already holds (a mounted Kubernetes Secret, which the
server only reads), else a new one written there for the owner alone.
`dspy-registry admin reset-token` is the way back in when that token is lost:
run against the database itself, it revokes `admin`'s tokens and issues a new
one, making `admin` whole again (there, enabled, admin on `*`) — audited, as
every mutation is, and seen by running replicas through the store's feed.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..calls import Call
from ..domain import access
from ..domain.access import Action, Grant, NewToken, Principal, Token
from ..domain.clock import Clock
from ..domain.events import EventKind, PrincipalChanged, PrincipalStatusChanged, new_event
from ..domain.model import Event
from ..errors import FailedPrecondition
from ..store.base import Store
from ..store.records import Records

log = logging.getLogger("dspy_registry.access")

ADMIN = "admin"
RESET_METHOD = "admin reset-token"  # the audit log's method for an offline reset


def issue(
    clock: Clock,
    *,
    principal: str,
    description: str,
    expire_time: datetime | None,
    creator: str,
    revision: int,
    chosen: tuple[str, str] | None = None,
) -> NewToken:
    """A token for `principal`: a new id and secret, or the (id, secret) `chosen` (an adopted one)."""
    token_id, secret = chosen or (access.new_token_id(), access.new_secret())
    token = Token(
        id=token_id,
        principal=principal,
        description=description,
        secret_prefix=access.secret_prefix(token_id),
        expire_time=expire_time,
        revoked=False,
        revoke_time=None,
        creator=creator,
        create_time=clock.now(),
        revision=revision,
    )
    return NewToken(token, secret)


def read_token_file(path: Path) -> tuple[str, str] | None:
    """The (id, secret) of the token in `path`; None when there is no such file. ValueError when the
    file holds something else: a Secret made by hand must not start a server nobody can call."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    parsed = access.parse_token(text)
    if parsed is None:
        raise ValueError(
            f"{path} does not hold a dspy-registry token (dspyr_…): make one with "
            "`dspy-registry admin generate-token`, or remove the file to have one generated"
        )
    return parsed


async def bootstrap(store: Store, clock: Clock, token_file: Path) -> bool:
    """On an empty store: `admin` with admin on `*`, and its token — adopted from `token_file` when
    that exists, else generated and written there. False (and nothing written) on any other store."""
    async with store.read() as tx:
        if await tx.count_principals() > 0:
            return False  # every start but the first: no write, so a read-only store starts too
    adopted = read_token_file(token_file)
    async with store.write(_system_call("bootstrap", peer="")) as tx:
        if await tx.count_principals() > 0:
            return False
        events = await _make_admin_whole(tx, clock, access.BOOTSTRAP)
        issued = await _new_admin_token(tx, clock, "bootstrap admin token", access.BOOTSTRAP, adopted, events)
        await tx.append(events)
        if adopted is None:
            # Written before the commit: if it fails, no admin exists without its token.
            try:
                write_secret(token_file, access.bearer_token(issued.token.id, issued.secret))
            except OSError as exc:
                raise OSError(
                    f"cannot write the new admin token to {token_file} ({exc.strerror or exc}); a "
                    "token in that file would be adopted instead: is the Secret mounted under "
                    "another file name?"
                ) from None
    log.warning(
        "created the admin principal; its token is %s %s",
        "the one in" if adopted else "in",
        token_file if adopted else f"{token_file} (mode 0600)",
        extra={
            "token": access.secret_prefix(issued.token.id) + "…",
            "token_file": str(token_file),
            "adopted": adopted is not None,
        },
    )
    return True


@dataclass(frozen=True, kw_only=True)
class Reset:
    """What `reset_token` did: the new token (its secret only here) and the ids of those revoked."""

    issued: NewToken
    revoked: tuple[str, ...]


async def reset_token(store: Store, clock: Clock) -> Reset:
    """Access again after the admin token is lost: `admin`'s tokens revoked, `admin` there, enabled and
    with admin on `*`, and a new token. FailedPrecondition on a store no server
    has started on (its first start makes the admin: nothing to recover)."""
    # Who ran it, for the audit log: no principal is behind an offline command.
    ran_by = f"{getpass.getuser()}@{socket.gethostname()}"
    async with store.write(_system_call(RESET_METHOD, peer=ran_by)) as tx:
        if await tx.count_principals() == 0:
            raise FailedPrecondition(
                "this store has no principals: no server has started on it (is --database the "
                "server's?); the first start creates the admin"
            )
        events = await _make_admin_whole(tx, clock, access.SYSTEM)
        now = clock.now()
        changed = PrincipalChanged(principal=ADMIN)
        revoked = await tx.active_token_ids(ADMIN, now)
        for token_id in revoked:
            await tx.revoke_token(token_id, tx.next_revision, now)
            events.append(
                new_event(EventKind.TOKEN_REVOKED, f"principals/{ADMIN}/tokens/{token_id}", changed)
            )
        description = "reset by `dspy-registry admin reset-token`"
        issued = await _new_admin_token(tx, clock, description, access.SYSTEM, None, events)
        await tx.append(events)
    return Reset(issued=issued, revoked=tuple(revoked))


def _system_call(method: str, *, peer: str) -> Call:
    """What the server does by itself, audited like any mutation: the store writes the audit event
    in the mutation's transaction."""
    return Call(
        method=method,
        principal=access.SYSTEM,
        token="",
        resource=f"principals/{ADMIN}",
        request_id="",
        peer=peer,
        mutation=True,
    )


async def _new_admin_token(
    tx: Records,
    clock: Clock,
    description: str,
    creator: str,
    chosen: tuple[str, str] | None,
    events: list[Event],
) -> NewToken:
    """A token for `admin` stored (its hash), and its event added to `events`."""
    issued = issue(
        clock,
        principal=ADMIN,
        description=description,
        expire_time=None,
        creator=creator,
        revision=tx.next_revision,
        chosen=chosen,
    )
    await tx.insert_token(issued.token, access.hash_secret(issued.secret))
    changed = PrincipalChanged(principal=ADMIN)
    events.append(new_event(EventKind.TOKEN_CREATED, issued.token.resource_name, changed))
    return issued


async def _make_admin_whole(tx: Records, clock: Clock, creator: str) -> list[Event]:
    """`admin` exists, is enabled and holds admin on `*`: what was missing is made, and its events."""
    now = clock.now()
    changed = PrincipalChanged(principal=ADMIN)
    events: list[Event] = []
    principal = await tx.get_principal(ADMIN)
    if principal is None:
        principal = Principal(
            name=ADMIN,
            type=access.PrincipalType.USER,
            display_name="Administrator",
            team="",
            email="",
            certificate_subjects=(),
            disabled=False,
            disable_reason="",
            creator=creator,
            create_time=now,
            update_time=now,
            revision=tx.next_revision,
        )
        await tx.insert_principal(principal)
        events.append(new_event(EventKind.PRINCIPAL_CREATED, principal.resource_name, changed))
    elif principal.disabled:
        await tx.set_principal_disabled(ADMIN, False, "", tx.next_revision, now)
        status = PrincipalStatusChanged(principal=ADMIN, reason="admin reset-token")
        events.append(new_event(EventKind.PRINCIPAL_ENABLED, principal.resource_name, status))
    if await tx.find_grant(ADMIN, Action.ADMIN, access.ALL) is None:
        grant = Grant(
            id=access.new_token_id(),
            principal=ADMIN,
            action=Action.ADMIN,
            resource=access.ALL,
            creator=creator,
            create_time=now,
            revision=tx.next_revision,
        )
        await tx.insert_grant(grant)
        events.append(new_event(EventKind.PERMISSION_GRANTED, grant.resource_name, changed))
    return events


def write_secret(path: Path, secret: str) -> None:
    """Write `path` readable by its owner only, before any byte of the secret is in it.

    A fresh file (O_EXCL, no symlink followed) renamed over the old one: a link
    planted at `path` cannot redirect the secret elsewhere.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = path.with_name(f".{path.name}.{os.getpid()}.new")
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, (secret + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(fresh, path)

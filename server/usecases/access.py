"""Access use cases: authenticate, authorize, manage principals, tokens and grants, audit.

Verified tokens and each principal's grants are cached for at most one
second, and dropped at once when a commit revokes, disables or re-grants
(this replica's commits, and other replicas' through the store's feed), so
a revocation takes effect within one second everywhere.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path

from ..calls import Call
from ..domain import access
from ..domain.access import Action, AuditEvent, AuditFilter, Grant, NewToken, Outcome, Principal, Token
from ..domain.clock import SYSTEM_CLOCK, Clock
from ..domain.events import (
    EventKind,
    PrincipalChanged,
    PrincipalStatusChanged,
    changes_credentials,
    changes_grants,
    new_event,
)
from ..domain.model import Event
from ..domain.names import check_name, check_text
from ..errors import Aborted as AbortedError
from ..errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RegistryError,
    Unauthenticated,
    Violations,
    quote,
)
from ..store.base import Store
from . import admin
from .common import Idempotency, PageOf, Replay, page_of, record, replayed

log = logging.getLogger("dspy_registry.access")

CACHE_SECONDS = 1.0  # how stale a verified token or a grant list may be, at most
MAX_CACHED = 10_000
LAST_USE_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class Identity:
    principal: Principal
    token: Token | None  # None when a client certificate identified the caller

    @property
    def name(self) -> str:
        return self.principal.name

    @cached_property
    def token_name(self) -> str:
        """The token's resource name, or "" (a client certificate): once, not on every call."""
        return self.token.resource_name if self.token is not None else ""


@dataclass(slots=True)
class _GrantsOf:
    """A principal's grants as read at most CACHE_SECONDS ago, and the answers they gave."""

    fresh_until: float  # time.monotonic()
    grants: tuple[Grant, ...]
    # (action's name, resource) -> allowed: every read of a program asks the same question of the
    # same grants, and a glob's match is worth remembering. Dropped with the grants. Keyed by the
    # name: hashing an enum member is a Python-level call.
    answers: dict[tuple[str, str], bool]


@dataclass(frozen=True, kw_only=True)
class PrincipalDraft:
    name: str
    type: access.PrincipalType
    display_name: str
    team: str
    email: str
    certificate_subjects: tuple[str, ...]


class Access:
    def __init__(self, store: Store, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.store = store
        self.clock = clock
        # authorization header -> (fresh until (monotonic), token expiry (epoch s) or None, identity)
        self._verified: dict[str, tuple[float, float | None, Identity]] = {}
        self._generation = 0  # bumped by every commit that may invalidate a verified token
        self._touching: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._grants: dict[str, _GrantsOf] = {}
        store.commits.subscribe(self._on_commit, self._forget_all)

    # -- caches ----------------------------------------------------------------------------

    def _on_commit(self, events: Sequence[Event]) -> None:
        for event in events:
            if changes_credentials(event.kind):
                self._generation += 1
                self._verified.clear()  # rare events: dropping all is simplest and safe
            if changes_grants(event.kind):
                self._grants.pop(str(event.data.get("principal", "")), None)

    def _forget_all(self) -> None:
        self._generation += 1
        self._verified.clear()
        self._grants.clear()

    # -- authentication --------------------------------------------------------------------

    def verified(self, authorization: str) -> Identity | None:
        """The identity behind a header verified less than CACHE_SECONDS ago (and not revoked, disabled
        or expired since), or None: the hot path, a dict lookup that the caller need not await."""
        hit = self._verified.get(authorization)
        if (
            hit is not None
            and hit[0] > time.monotonic()
            and (hit[1] is None or self.clock.now().timestamp() < hit[1])
        ):
            return hit[2]
        return None

    async def authenticate(self, authorization: str | None) -> Identity:
        """The identity behind an `authorization: Bearer …` value, or Unauthenticated."""
        if not authorization:
            raise Unauthenticated("missing authorization metadata: send `authorization: Bearer <token>`")
        known = self.verified(authorization)
        if known is not None:
            return known
        parsed = access.parse_bearer(authorization)
        if parsed is None:
            raise Unauthenticated("malformed authorization metadata: expected `Bearer dspyr_…`")
        token_id, secret = parsed
        generation, fresh_until = self._generation, time.monotonic() + CACHE_SECONDS
        async with self.store.read() as tx:
            found = await tx.token_for_authentication(token_id)
        if found is None or not access.secret_matches(secret, found[1]):
            raise Unauthenticated("unknown token")
        token, _, principal = found
        if token.revoked:
            raise Unauthenticated(f"token {access.secret_prefix(token.id)}… was revoked")
        if not token.active_at(self.clock.now()):
            raise Unauthenticated(f"token {access.secret_prefix(token.id)}… expired")
        if principal.disabled:
            raise Unauthenticated(f"principal {principal.name} is disabled")
        who = Identity(principal, token)
        self._note_use(token)
        expiry = token.expire_time.timestamp() if token.expire_time is not None else None
        if len(self._verified) > MAX_CACHED:
            self._verified.clear()  # a flood of distinct tokens must not grow memory
        if generation == self._generation:  # else a revocation landed while we read: do not cache
            self._verified[authorization] = (fresh_until, expiry, who)
        return who

    def _note_use(self, token: Token) -> None:
        """Keep `last_use_time` to the minute, off the call's path (at most once a minute a token)."""
        now = self.clock.now()
        if token.last_use_time is not None and now - token.last_use_time < LAST_USE_RESOLUTION:
            return
        if token.id in self._touching:
            return
        self._touching.add(token.id)

        async def touch() -> None:
            try:
                async with self.store.write() as tx:
                    await tx.touch_token(token.id, now)
            except RegistryError:
                log.warning("could not record the use of token %s", access.secret_prefix(token.id))
            finally:
                self._touching.discard(token.id)

        # Nobody's call (so no audit event), and a context of its own: the request logs do not count it.
        task = asyncio.get_running_loop().create_task(touch(), context=contextvars.Context())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def authenticate_subject(self, subject: str) -> Identity:
        """The identity a client certificate's subject maps to, or Unauthenticated."""
        async with self.store.read() as tx:
            principal = await tx.principal_by_subject(subject)
        if principal is None:
            raise Unauthenticated(f"no principal is mapped to the certificate subject {quote(subject)}")
        if principal.disabled:
            raise Unauthenticated(f"principal {principal.name} is disabled")
        return Identity(principal, None)

    # -- authorization ---------------------------------------------------------------------

    async def grants(self, principal: str) -> tuple[Grant, ...]:
        return (await self._grants_of(principal)).grants

    async def _grants_of(self, principal: str) -> _GrantsOf:
        now = time.monotonic()
        cached = self._grants.get(principal)
        if cached is not None and cached.fresh_until >= now:
            return cached
        async with self.store.read() as tx:
            grants = await tx.grants_of(principal)
        entry = self._grants[principal] = _GrantsOf(now + CACHE_SECONDS, grants, {})
        return entry

    def allowed(self, identity: Identity, action: Action, resources: Sequence[str]) -> bool | None:
        """Whether the grants read less than CACHE_SECONDS ago allow `action` on every resource
        named; None when they must be read first (`authorize`). The hot path: no await."""
        cached = self._grants.get(identity.principal.name)
        if cached is None or cached.fresh_until < time.monotonic():
            return None
        answers = cached.answers
        verb = action._name_
        for resource in resources:
            allowed = answers.get((verb, resource))
            if allowed is None:
                if len(answers) >= MAX_CACHED:
                    answers.clear()  # a caller naming ever new resources must not grow memory
                allowed = access.matching_grant(cached.grants, action, resource) is not None
                answers[(verb, resource)] = allowed
            if not allowed:
                return False
        return True

    async def authorize(self, identity: Identity, action: Action, resources: Sequence[str]) -> None:
        """PermissionDenied unless a grant allows `action` on every resource named."""
        allowed = self.allowed(identity, action, resources)
        if allowed is None:
            await self._grants_of(identity.name)
            allowed = self.allowed(identity, action, resources)
        if allowed:
            return
        grants = await self.grants(identity.name)
        for resource in resources:
            if access.matching_grant(grants, action, resource) is None:
                raise PermissionDenied(identity.name, action.name.lower(), resource)

    async def readable(self, identity: Identity) -> list[str] | None:
        """Globs of what the caller may read (None: everything), for filtering lists."""
        return access.readable_globs(await self.grants(identity.name))

    # -- audit -----------------------------------------------------------------------------

    async def audit_alone(self, call: Call, outcome: Outcome, code: int, message: str) -> None:
        """A denied or failed call's audit event, in a transaction of its own."""
        call.audited = True  # this transaction must not add a second one
        event = AuditEvent(
            time=self.clock.now(),
            principal=call.principal,
            token=call.token,
            method=call.method,
            resource=access.audit_text(call.resource),
            request_id=access.audit_text(call.request_id, 128),
            outcome=outcome,
            code=code,
            message=access.audit_text(message, 1024),
            revision=0,
            peer=access.audit_text(call.peer),
        )
        async with self.store.write() as tx:
            await tx.insert_audit(event)

    async def list_audit(self, f: AuditFilter, page_size: int, page_token: str) -> PageOf[AuditEvent]:
        return await page_of(
            self.store, lambda tx, page: tx.list_audit(f, page), page_size, page_token, "audit", f
        )

    # -- bootstrap -------------------------------------------------------------------------

    async def bootstrap(self, token_file: Path) -> bool:
        """On an empty store: the `admin` principal and its token (usecases/admin.py)."""
        return await admin.bootstrap(self.store, self.clock, token_file)

    # -- principals ------------------------------------------------------------------------

    async def create_principal(
        self, call: Call, draft: PrincipalDraft, idem: Idempotency[Principal] | None
    ) -> Principal | Replay:
        v = Violations()
        v.collect(lambda: access.check_principal_id(draft.name, "principal_id"))
        v.collect(lambda: check_text(draft.display_name, "principal.display_name", 256))
        v.collect(lambda: check_text(draft.email, "principal.email", 256))
        if draft.team:
            v.collect(lambda: check_name(draft.team, "principal.team"))
        for i, subject in enumerate(draft.certificate_subjects):
            if not subject or len(subject) > 1024 or any(ord(c) < 32 for c in subject):
                v.add(f"principal.certificate_subjects[{i}]", "must be 1-1024 printable characters")
        if len(set(draft.certificate_subjects)) != len(draft.certificate_subjects):
            v.add("principal.certificate_subjects", "must be unique")
        v.raise_if_any()
        async with self.store.write(call) as tx:
            if (replay := await replayed(tx, idem)) is not None:
                return replay
            if await tx.get_principal(draft.name) is not None:
                raise AlreadyExists(f"principals/{draft.name}")
            for subject in draft.certificate_subjects:
                owner = await tx.subject_owner(subject)
                if owner is not None:
                    raise AlreadyExists(
                        f"principals/{owner}", f"certificate subject {quote(subject)} already maps to {owner}"
                    )
            now = self.clock.now()
            principal = Principal(
                name=draft.name,
                type=draft.type,
                display_name=draft.display_name,
                team=draft.team,
                email=draft.email,
                certificate_subjects=draft.certificate_subjects,
                disabled=False,
                disable_reason="",
                creator=call.actor,
                create_time=now,
                update_time=now,
                revision=tx.next_revision,
            )
            await tx.insert_principal(principal)
            await tx.append(
                [
                    new_event(
                        EventKind.PRINCIPAL_CREATED,
                        principal.resource_name,
                        PrincipalChanged(principal=draft.name),
                    )
                ]
            )
            return await record(tx, idem, principal)

    async def list_principals(
        self,
        type_: access.PrincipalType | None,
        team: str,
        include_disabled: bool,
        page_size: int,
        page_token: str,
    ) -> PageOf[Principal]:
        return await page_of(
            self.store,
            lambda tx, page: tx.list_principals(type_, team, include_disabled, page),
            page_size,
            page_token,
            "principals",
            type_,
            team,
            include_disabled,
        )

    async def get_principal(self, name: str) -> Principal:
        async with self.store.read() as tx:
            found = await tx.get_principal(name)
        if found is None:
            raise NotFound(f"principals/{name}")
        return found

    async def disable_principal(
        self, call: Call, name: str, reason: str, undo: bool, etag: str, idem: Idempotency[Principal] | None
    ) -> Principal | Replay:
        check_text(reason, "reason", 1024)
        if not undo and not reason.strip():
            raise InvalidArgument.one("reason", "say why the principal is disabled")
        async with self.store.write(call) as tx:
            if (replay := await replayed(tx, idem)) is not None:
                return replay
            principal = await tx.get_principal(name)
            if principal is None:
                raise NotFound(f"principals/{name}")
            if etag and etag != principal.etag:
                raise AbortedError(f"{principal.resource_name} changed: etag is {principal.etag}")
            if not undo and name == call.actor:
                raise FailedPrecondition("a principal cannot disable itself; ask another admin")
            disabled = not undo
            if principal.disabled == disabled:
                return await record(tx, idem, principal)
            now = self.clock.now()
            await tx.set_principal_disabled(name, disabled, "" if undo else reason, tx.next_revision, now)
            kind = EventKind.PRINCIPAL_ENABLED if undo else EventKind.PRINCIPAL_DISABLED
            change = PrincipalStatusChanged(principal=name, reason=reason)
            await tx.append([new_event(kind, principal.resource_name, change)])
            updated = replace(
                principal,
                disabled=disabled,
                disable_reason="" if undo else reason,
                update_time=now,
                revision=tx.next_revision,
            )
            return await record(tx, idem, updated)

    # -- tokens ----------------------------------------------------------------------------

    async def create_token(
        self,
        call: Call,
        principal: str,
        description: str,
        expire_time: datetime | None,
        ttl: timedelta | None,
        idem: Idempotency[NewToken] | None,
    ) -> NewToken | Replay:
        check_text(description, "description", 1024)
        if expire_time is not None and ttl is not None:
            raise InvalidArgument.one("ttl", "give expire_time or ttl, not both")
        if ttl is not None:
            if not timedelta(0) < ttl <= timedelta(days=3650):
                raise InvalidArgument.one("ttl", "must be positive and at most ten years")
            expire_time = self.clock.now() + ttl
        if expire_time is not None and expire_time <= self.clock.now():
            raise InvalidArgument.one("expire_time", "must be in the future")
        async with self.store.write(call) as tx:
            if (replay := await replayed(tx, idem)) is not None:
                return replay
            owner = await tx.get_principal(principal)
            if owner is None:
                raise NotFound(f"principals/{principal}")
            if owner.disabled:
                raise FailedPrecondition(f"principals/{principal} is disabled")
            issued = admin.issue(
                self.clock,
                principal=principal,
                description=description,
                expire_time=expire_time,
                creator=call.actor,
                revision=tx.next_revision,
            )
            await tx.insert_token(issued.token, access.hash_secret(issued.secret))
            await tx.append(
                [
                    new_event(
                        EventKind.TOKEN_CREATED,
                        issued.token.resource_name,
                        PrincipalChanged(principal=principal),
                    )
                ]
            )
            # The recorded answer carries no secret: a retry gets the token, never the secret again.
            return await record(tx, idem, issued)

    async def list_tokens(
        self, principal: str | None, include_inactive: bool, page_size: int, page_token: str
    ) -> PageOf[Token]:
        if principal is not None:
            await self.get_principal(principal)  # NOT_FOUND names it
        active_at = None if include_inactive else self.clock.now()
        return await page_of(
            self.store,
            lambda tx, page: tx.list_tokens(principal, active_at, page),
            page_size,
            page_token,
            "tokens",
            principal,
            include_inactive,
        )

    async def revoke_token(
        self, call: Call, principal: str, token_id: str, idem: Idempotency[Token] | None
    ) -> Token | Replay:
        async with self.store.write(call) as tx:
            if (replay := await replayed(tx, idem)) is not None:
                return replay
            token = await tx.get_token(token_id)
            if token is None or token.principal != principal:
                raise NotFound(f"principals/{principal}/tokens/{token_id}")
            if token.revoked:
                return await record(tx, idem, token)
            now = self.clock.now()
            await tx.revoke_token(token_id, tx.next_revision, now)
            await tx.append(
                [
                    new_event(
                        EventKind.TOKEN_REVOKED, token.resource_name, PrincipalChanged(principal=principal)
                    )
                ]
            )
            return await record(
                tx, idem, replace(token, revoked=True, revoke_time=now, revision=tx.next_revision)
            )

    # -- grants ----------------------------------------------------------------------------

    async def grant(
        self,
        call: Call,
        principal: str,
        action: Action,
        resource: str,
        idem: Idempotency[tuple[Grant, bool]] | None,
    ) -> tuple[Grant, bool] | Replay:
        access.check_glob(resource, "resource")
        async with self.store.write(call) as tx:
            if (replay := await replayed(tx, idem)) is not None:
                return replay
            found = await tx.get_principal(principal)
            if found is None:
                raise NotFound(f"principals/{principal}")
            if found.disabled:  # as for tokens: power is not handed to an account that was shut
                raise FailedPrecondition(f"principals/{principal} is disabled; enable it first")
            existing = await tx.find_grant(principal, action, resource)
            if existing is not None:
                return await record(tx, idem, (existing, False))
            grant = Grant(
                id=access.new_token_id(),
                principal=principal,
                action=action,
                resource=resource,
                creator=call.actor,
                create_time=self.clock.now(),
                revision=tx.next_revision,
            )
            await tx.insert_grant(grant)
            await tx.append(
                [
                    new_event(
                        EventKind.PERMISSION_GRANTED,
                        grant.resource_name,
                        PrincipalChanged(principal=principal),
                    )
                ]
            )
            return await record(tx, idem, (grant, True))

    async def revoke_grant(
        self, call: Call, grant_id: str, idem: Idempotency[Grant] | None
    ) -> Grant | Replay:
        async with self.store.write(call) as tx:
            if (replay := await replayed(tx, idem)) is not None:
                return replay
            grant = await tx.get_grant(grant_id)
            if grant is None:
                raise NotFound(f"permissions/{grant_id}")
            await tx.delete_grant(grant_id)
            await tx.append(
                [
                    new_event(
                        EventKind.PERMISSION_REVOKED,
                        grant.resource_name,
                        PrincipalChanged(principal=grant.principal),
                    )
                ]
            )
            return await record(tx, idem, replace(grant, revision=tx.next_revision))

    async def list_grants(
        self, principal: str, action: Action | None, resource: str, page_size: int, page_token: str
    ) -> PageOf[Grant]:
        return await page_of(
            self.store,
            lambda tx, page: tx.list_grants(principal, action, resource, page),
            page_size,
            page_token,
            "grants",
            principal,
            action,
            resource,
        )

    async def check(self, principal: str, action: Action, resource: str) -> tuple[Grant | None, str]:
        """Whether `principal` may do `action` on `resource`: the grant that allows it, and why."""
        async with self.store.read() as tx:
            who = await tx.get_principal(principal)
        if who is None:
            raise NotFound(f"principals/{principal}")
        if who.disabled:
            return None, f"{principal} is disabled"
        grant = access.matching_grant(await self.grants(principal), action, resource)
        if grant is None:
            return None, f"no grant gives {principal} {action.name.lower()} on {resource}"
        return grant, f"{grant.action.name.lower()} on {grant.resource} allows it"

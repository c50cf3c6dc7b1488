"""Who is calling and may they: authentication, authorization and the audit of refusals.

Every RPC but health and reflection passes here first (handlers.py builds it
into each handler at start-up): the `authorization: Bearer <token>` metadata,
else a client certificate mapped to a principal, else UNAUTHENTICATED; then
the RPC's rule from permissions.py, else PERMISSION_DENIED. Refusals, and
mutations that fail, are audited in a transaction of their own; successful
mutations are audited by the store inside their own transaction.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import grpc

from ..calls import Call, current_call
from ..domain.access import ANONYMOUS, Action, Outcome, Principal, PrincipalType
from ..errors import PermissionDenied, RegistryError, ResourceExhausted, StoreUnavailable, Unauthenticated
from ..usecases.access import Access, Identity
from .context import Context
from .permissions import Rule
from .status import code_for

log = logging.getLogger("dspy_registry.access")

_EPOCH = datetime.fromtimestamp(0, UTC)

current_identity: ContextVar[Identity | None] = ContextVar("current_identity", default=None)


def identity() -> Identity:
    """The authenticated caller of the current RPC."""
    found = current_identity.get()
    if found is None:  # pragma: no cover - handlers set it before any servicer runs
        raise Unauthenticated("no authenticated caller")
    return found


# The REST gateway calls over its private Unix socket, where every peer reads "unix:". It names
# the HTTP client in these keys, with a per-process secret, so that the audit log and the refusal
# throttle see the real caller; without the secret the keys are ignored (anyone could send them).
GATEWAY_SECRET_KEY = "x-dspy-registry-gateway"
GATEWAY_CLIENT_KEY = "x-dspy-registry-client"


class Guard:
    def __init__(
        self,
        access: Access,
        *,
        enabled: bool = True,
        client_certificates: bool = False,
        gateway_secret: str = "",
    ) -> None:
        self.access = access
        self.enabled = enabled
        self.client_certificates = client_certificates
        self.gateway_secret = gateway_secret
        self._throttle = _Throttle()

    def peer(self, context: Context) -> str:
        """The caller's address as gRPC names it (ipv4:10.0.0.7:51234), the REST gateway's callers included."""
        value: Any = context.peer()
        address = str(value or "")
        if not self.gateway_secret or not address.startswith("unix:"):
            return address
        metadata = dict(context.invocation_metadata() or ())
        secret, client = metadata.get(GATEWAY_SECRET_KEY), metadata.get(GATEWAY_CLIENT_KEY)
        if isinstance(secret, str) and isinstance(client, str) and client:
            if hmac.compare_digest(secret.encode(), self.gateway_secret.encode()):
                return client
        return address

    def known(self, context: Context) -> Identity | None:
        """The caller, when a token verified less than a second ago names them: the hot path, with
        nothing to await (a coroutine per call is measurable on the serving path). None: ask
        `authenticate`."""
        if not self.enabled:
            return _ANYONE
        authorization = _authorization(context)
        return None if authorization is None else self.access.verified(authorization)

    async def authenticate(self, context: Context) -> Identity:
        if not self.enabled:
            return _ANYONE
        authorization = _authorization(context)
        if authorization is None:
            if self.client_certificates:
                subject = _certificate_subject(context)
                if subject is not None:
                    return await self.access.authenticate_subject(subject)
        else:
            known = self.access.verified(authorization)
            if known is not None:
                return known
        return await self.access.authenticate(authorization)

    def allows(self, who: Identity, rule: Rule, names: Sequence[str]) -> bool:
        """Whether `who` may make this call by what is known without a wait (its rule needs no check
        here, or the grants read less than a second ago allow it); False: ask `authorize`, which
        reads them or refuses. PermissionDenied at once for a rule that names nothing."""
        if not self.enabled or rule.action is None or rule.filtered or rule.by_servicer:
            return True
        if not names:  # fail closed: a rule that names nothing allows nothing
            raise PermissionDenied(who.name, rule.action.name.lower(), "(no resource)")
        return self.access.allowed(who, rule.action, names) is True

    async def authorize(self, who: Identity, rule: Rule, names: Sequence[str]) -> None:
        """`allows`, and where it cannot tell, the grants read (PermissionDenied if they do not)."""
        if not self.allows(who, rule, names) and rule.action is not None:
            await self.access.authorize(who, rule.action, names)

    async def authorize_resource(self, action: Action, names: list[str]) -> None:
        """For servicers whose rule needs a lookup first: check `action` on what they found."""
        call = current_call.get()
        if self.enabled:
            await self.access.authorize(identity(), action, names)
        if call is not None:
            call.authorized = True
            call.resource = call.resource or (names[0] if names else "")

    async def readable(self, who: Identity) -> list[str] | None:
        """Globs of what `who` may read (None: everything), for lists that filter."""
        return None if not self.enabled else await self.access.readable(who)

    async def audit_refusal(self, call: Call, exc: Exception, rule: Rule) -> None:
        """Audit a denied call, or a failed mutation, unless its transaction already did.

        Refusals and failed mutations are throttled per caller (the principal,
        else the peer's address): a burst of REFUSAL_BURST is written one by one,
        then one event a second carries the count of those it stands for, so
        that a flood of bad calls cannot turn into a flood of writes.
        """
        if not self.enabled or call.audited:
            return
        denied = isinstance(exc, Unauthenticated | PermissionDenied)
        if not denied and not rule.mutation:
            return
        code = code_for(exc) if isinstance(exc, RegistryError) else grpc.StatusCode.INTERNAL
        message = exc.message if isinstance(exc, RegistryError) else "internal error"
        allowed, suppressed = self._throttle.take(call.principal or call.peer.rsplit(":", 1)[0])
        if not allowed:
            return
        if suppressed:
            message += f" (and {suppressed} more refusals of this caller, not written one by one)"
        try:
            await self.access.audit_alone(
                call, Outcome.DENIED if denied else Outcome.FAILED, code.value[0], message
            )
        except (StoreUnavailable, ResourceExhausted) as fault:
            # The store fault that failed the call (the database away, a full disk) fails its
            # audit too: one line, not a traceback for every call of an outage.
            log.warning("could not write the audit event of %s: %s", call.method, fault.message)
        except RegistryError:
            log.exception("could not write the audit event of %s", call.method)


REFUSAL_BURST = 20
REFUSALS_PER_SECOND = 1.0


class _Throttle:
    """A token bucket per caller; `take` says whether to write, and how many were skipped."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float, int]] = {}  # key -> (tokens, last, skipped)

    def take(self, key: str) -> tuple[bool, int]:
        now = time.monotonic()
        tokens, last, skipped = self._buckets.get(key, (float(REFUSAL_BURST), now, 0))
        tokens = min(float(REFUSAL_BURST), tokens + (now - last) * REFUSALS_PER_SECOND)
        if len(self._buckets) > 10_000:
            self._buckets.clear()  # bounded memory under a flood of distinct peers
        if tokens < 1:
            self._buckets[key] = (tokens, now, skipped + 1)
            return False, 0
        self._buckets[key] = (tokens - 1, now, 0)
        return True, skipped


def _authorization(context: Context) -> str | None:
    """The call's `authorization` metadata, or None."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode()
    return None


def _certificate_subject(context: Context) -> str | None:
    # The full subject only: a common name could spell out another certificate's subject.
    values = list(context.auth_context().get("x509_subject", ()))
    return values[0].decode() if values else None


# With authentication switched off (--no-auth, for development and benchmarks)
# every caller acts as this principal, and every check passes.
_ANYONE = Identity(
    principal=Principal(
        name=ANONYMOUS,
        type=PrincipalType.USER,
        display_name="anonymous (authentication off)",
        team="",
        email="",
        certificate_subjects=(),
        disabled=False,
        disable_reason="",
        creator="",
        create_time=_EPOCH,
        update_time=_EPOCH,
        revision=0,
    ),
    token=None,
)

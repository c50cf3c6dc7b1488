"""Who is calling and may they: authentication, authorization and the audit of refusals.

Every RPC but health and reflection passes here first (handlers.py builds it
into each handler at start-up): the `authorization: Bearer <token>` metadata,
else a client certificate mapped to a principal, else UNAUTHENTICATED; then
the RPC's rule from permissions.py, else PERMISSION_DENIED. Refusals, and
mutations that fail, are audited in a transaction of their own; successful
mutations are audited by the store inside their own transaction.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import grpc

from ..calls import Call
from ..domain.access import Outcome, Principal, PrincipalType
from ..errors import PermissionDenied, RegistryError, Unauthenticated
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


class Guard:
    def __init__(self, access: Access, *, enabled: bool = True, client_certificates: bool = False) -> None:
        self.access = access
        self.enabled = enabled
        self.client_certificates = client_certificates

    async def authenticate(self, context: Context) -> Identity:
        if not self.enabled:
            return _ANYONE
        authorization = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                authorization = value if isinstance(value, str) else value.decode()
                break
        if authorization is None and self.client_certificates:
            subject = _certificate_subject(context)
            if subject is not None:
                return await self.access.authenticate_subject(subject)
        return await self.access.authenticate(authorization)

    async def authorize(self, who: Identity, rule: Rule, names: list[str]) -> None:
        if not self.enabled or rule.action is None or rule.filtered or rule.by_servicer:
            return
        await self.access.authorize(who, rule.action, names)

    async def readable(self, who: Identity) -> list[str] | None:
        """Globs of what `who` may read (None: everything), for lists that filter."""
        return None if not self.enabled else await self.access.readable(who)

    async def audit_refusal(self, call: Call, exc: Exception, rule: Rule) -> None:
        """Audit a denied call, or a failed mutation, unless its transaction already did."""
        if not self.enabled or call.audited:
            return
        denied = isinstance(exc, Unauthenticated | PermissionDenied)
        if not denied and not rule.mutation:
            return
        code = code_for(exc) if isinstance(exc, RegistryError) else grpc.StatusCode.INTERNAL
        message = exc.message if isinstance(exc, RegistryError) else "internal error"
        try:
            await self.access.audit_alone(
                call, Outcome.DENIED if denied else Outcome.FAILED, code.value[0], message
            )
        except RegistryError:
            log.exception("could not write the audit event of %s", call.method)


def _certificate_subject(context: Context) -> str | None:
    properties = context.auth_context()
    for key in ("x509_subject", "x509_common_name"):
        values = list(properties.get(key, ()))
        if values:
            return values[0].decode()
    return None


def peer(context: Context) -> str:
    value: Any = context.peer()
    return str(value or "")


# With authentication switched off (--no-auth, for development and benchmarks)
# every caller acts as this principal, and every check passes.
_ANYONE = Identity(
    principal=Principal(
        "anonymous", PrincipalType.USER, "anonymous (authentication off)", "", "", (), False, "", "",
        _EPOCH, _EPOCH, 0,
    ),
    token=None,
)  # fmt: skip

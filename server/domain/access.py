"""Access rules: actions, grants on names and globs, tokens, and who may do what.

A principal holds actions on
programs (and signatures, by name): `admin` implies every other action. A
grant's resource is a name or a glob where `*` matches any run of
characters (`sentiment_*`, `*`). Deny by default: no grant, no access.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from functools import lru_cache

from ..errors import InvalidArgument, quote
from .names import check_name


class Action(IntEnum):
    """The numbers match the proto enum Action."""

    READ = 1
    REGISTER = 2
    DEPLOY = 3
    ROLLBACK = 4
    APPROVE = 5
    ADMIN = 6
    # CI's: reporting checks of program versions (ReportVersionCheck). Only admin implies it;
    # deploy does not, so that whoever deploys a version cannot also vouch for its checks.
    CHECK = 7


class PrincipalType(IntEnum):
    """The numbers match the proto enum PrincipalType."""

    USER = 1
    SERVICE_ACCOUNT = 2


ALL = "*"
GLOB_RE = re.compile(r"[a-z0-9_*-]{1,63}")
TOKEN_PREFIX = "dspyr"
TOKEN_RE = re.compile(rf"{TOKEN_PREFIX}_([a-z0-9]{{12}})_([A-Za-z0-9_-]{{43}})")


@dataclass(frozen=True, kw_only=True)
class Principal:
    name: str
    type: PrincipalType
    display_name: str
    team: str
    email: str
    certificate_subjects: tuple[str, ...]
    disabled: bool
    disable_reason: str
    creator: str
    create_time: datetime
    update_time: datetime
    revision: int

    @property
    def resource_name(self) -> str:
        return f"principals/{self.name}"

    @property
    def etag(self) -> str:
        return f"rev-{self.revision}"  # opaque to clients; quote-free for shells and JSON


@dataclass(frozen=True, kw_only=True)
class Token:
    id: str
    principal: str
    description: str
    secret_prefix: str
    expire_time: datetime | None
    revoked: bool
    revoke_time: datetime | None
    creator: str
    create_time: datetime
    revision: int
    last_use_time: datetime | None = None

    @property
    def resource_name(self) -> str:
        return f"principals/{self.principal}/tokens/{self.id}"

    def active_at(self, now: datetime) -> bool:
        return not self.revoked and (self.expire_time is None or now < self.expire_time)


@dataclass(frozen=True, kw_only=True)
class Grant:
    id: str
    principal: str
    action: Action
    resource: str  # a name or a glob
    creator: str
    create_time: datetime
    revision: int

    @property
    def resource_name(self) -> str:
        return f"permissions/{self.id}"


@dataclass(frozen=True)
class NewToken:
    """A token as issued: the secret exists only here and in the caller's hands."""

    token: Token
    secret: str


MAX_WILDCARDS = 3  # keeps matching linear-ish: many `*` make a regex backtrack exponentially


CONTROLLER = "controller"  # the server itself: auto-deploys, controller steps, automated rollbacks


BOOTSTRAP = "bootstrap"  # the server's first start: the admin principal, its grant and token


SYSTEM = "system"  # what the server does outside any call (its audit events read principals/system)


ANONYMOUS = "anonymous"  # every caller when authentication is off (--no-auth)


RESERVED_PRINCIPALS = (CONTROLLER, BOOTSTRAP, SYSTEM, ANONYMOUS)


def check_principal_id(value: str, field: str) -> str:
    """A new principal's id: a name, and not one the server itself acts as (which would read as
    the server in every creator, actor and audit field)."""
    check_name(value, field)
    if value in RESERVED_PRINCIPALS:
        raise InvalidArgument.one(field, f"{quote(value)} is reserved: the server acts under that name")
    return value


def principal_name(who: str) -> str:
    """Who did something, as the contract names it: principals/{principal}, `controller` or `bootstrap`."""
    return who if who in (CONTROLLER, BOOTSTRAP) or not who else f"principals/{who}"


def check_glob(value: str, field: str) -> str:
    if not GLOB_RE.fullmatch(value):
        raise InvalidArgument.one(field, f"{quote(value)} must be a name or a glob of a-z, 0-9, _, - and *")
    if value.count("*") > MAX_WILDCARDS or "**" in value:
        raise InvalidArgument.one(field, f"at most {MAX_WILDCARDS} wildcards, never two in a row")
    return value


def audit_text(value: str, limit: int = 256) -> str:
    """A request-supplied string fit for the audit log: no control characters, bounded."""
    cleaned = "".join(c if c.isprintable() else "?" for c in value[: limit + 1])
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


@lru_cache(maxsize=65536)
def _glob_regex(glob: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in glob.split("*")))


def glob_matches(glob: str, name: str) -> bool:
    return glob == ALL or glob == name or ("*" in glob and _glob_regex(glob).fullmatch(name) is not None)


def implies(granted: Action, wanted: Action) -> bool:
    return granted == wanted or granted == Action.ADMIN


def matching_grant(grants: tuple[Grant, ...], action: Action, resource: str) -> Grant | None:
    """The grant that allows `action` on `resource`, if any (admin grants imply all)."""
    for grant in grants:
        if implies(grant.action, action) and glob_matches(grant.resource, resource):
            return grant
    return None


def readable_globs(grants: tuple[Grant, ...]) -> list[str] | None:
    """The globs a principal may read; None when it may read everything."""
    globs = [g.resource for g in grants if implies(g.action, Action.READ)]
    return None if ALL in globs else globs


def new_token_id() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(12))


def new_secret() -> str:
    return secrets.token_urlsafe(32)  # 256 bits: 43 characters


def hash_secret(secret: str) -> str:
    # Secrets are 256 random bits: a fast hash is enough; nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def bearer_token(token_id: str, secret: str) -> str:
    """What a client sends: `authorization: Bearer dspyr_<id>_<secret>`."""
    return f"{TOKEN_PREFIX}_{token_id}_{secret}"


def parse_bearer(value: str) -> tuple[str, str] | None:
    """(token id, secret) from an authorization header value, or None if malformed."""
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return parse_token(credentials)


def parse_token(value: str) -> tuple[str, str] | None:
    """(token id, secret) from a token as `bearer_token` writes it (a token file, a Secret), or None."""
    match = TOKEN_RE.fullmatch(value.strip())
    return (match.group(1), match.group(2)) if match else None


def new_bearer_token() -> str:
    """A fresh token, stored nowhere yet: what a Secret holds before the server adopts it."""
    return bearer_token(new_token_id(), new_secret())


def secret_prefix(token_id: str) -> str:
    """The part of a token safe to show and log: enough to recognise it, useless to use it."""
    return f"{TOKEN_PREFIX}_{token_id}_"


class Outcome(IntEnum):
    """The numbers match the proto enum AuditOutcome."""

    SUCCEEDED = 1
    DENIED = 2  # UNAUTHENTICATED or PERMISSION_DENIED
    FAILED = 3


@dataclass(frozen=True, kw_only=True)
class AuditEvent:
    time: datetime
    principal: str
    token: str
    method: str
    resource: str
    request_id: str
    outcome: Outcome
    code: int  # google.rpc.Code
    message: str
    revision: int
    peer: str
    id: int = 0

    @property
    def resource_name(self) -> str:
        return f"auditEvents/{self.id}"


@dataclass(frozen=True, kw_only=True)
class AuditFilter:
    principal: str = ""
    resource: str = ""  # this resource or anything below it
    method: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None
    outcomes: tuple[Outcome, ...] = ()
    codes: tuple[int, ...] = ()

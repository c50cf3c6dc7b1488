"""Every error the server raises on purpose, as one tree.

    RegistryError                    base; never raised itself
    ├── InvalidArgument              bad input; carries one FieldViolation per bad field
    ├── NotFound                     a named resource does not exist
    ├── AlreadyExists                a resource with that name exists and differs
    ├── FailedPrecondition           the system is not in a state that allows the call;
    │                                carries PreconditionViolations (semver guard ...)
    ├── Aborted                      an etag or revision did not match; retry after a read
    ├── ResourceExhausted            a size, concurrency or rate limit was hit, or the database's
    │                                disk is full; may say when to retry (`retry_after`)
    ├── Unimplemented                a capability a later release adds
    ├── Unauthenticated              no valid credentials: missing, malformed, unknown,
    │                                revoked or expired token, or a disabled principal
    ├── PermissionDenied             authenticated, but no grant allows the action
    │                                (the same answer whether the resource exists or not)
    ├── ShuttingDown                 the server is stopping: the call was not started (or, a
    │                                watch, was ended); retry, on another replica
    └── StoreError                   the store could not do its work (raised by server.store):
        │                            a bug of ours, a corrupt file (INTERNAL)
        └── StoreUnavailable         the database cannot be reached, did not answer in time, is
                                     starting or shutting down, or refuses writes (UNAVAILABLE)

Messages never repeat a caller's value whole: `quote()` cuts it (a 10 000
character name must not turn the answer into a trailer too big for gRPC's
metadata limit, nor flood a log).

Nothing here imports grpc or a database driver: the api layer maps these to
status codes in one table (`dspy_registry.server.api.status`), and the store
translates driver exceptions into them, so neither sqlite3 nor asyncpg
exceptions ever reach the transport.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

QUOTED_CHARACTERS = 64  # of a caller's value, at most, in an error message
MAX_VIOLATIONS = 100  # field violations one answer collects; beyond, only counted
MESSAGE_VIOLATIONS = 20  # of them, written into the message


def quote(value: object, limit: int = QUOTED_CHARACTERS) -> str:
    """`value` as a quoted literal for an error message, cut to `limit` characters with its length."""
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path in the request (`spec.version`) and what is wrong."""

    field: str
    description: str


@dataclass(frozen=True)
class PreconditionViolation:
    """One unmet precondition: a type (`SEMVER_GUARD`), its subject and why."""

    type: str
    subject: str
    description: str


class RegistryError(Exception):
    """Base of every deliberate error; `reason` is a stable UPPER_SNAKE code.

    `retry_after`, when set, is how many seconds the caller should wait before
    trying again (sent as a google.rpc.RetryInfo).
    """

    reason = "REGISTRY_ERROR"
    retry_after: float | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(RegistryError):
    """The request is malformed; `violations` names each bad field."""

    reason = "INVALID_ARGUMENT"

    def __init__(
        self, violations: list[FieldViolation], message: str | None = None, *, more: int = 0
    ) -> None:
        """`more`: violations found beyond those listed (Violations keeps MAX_VIOLATIONS)."""
        self.violations = violations
        self.more = more
        if message is None:
            message = "; ".join(f"{v.field}: {v.description}" for v in violations[:MESSAGE_VIOLATIONS])
            hidden = len(violations) - MESSAGE_VIOLATIONS + more
            if hidden > 0:
                message += f"; and {hidden} more"
        super().__init__(message)

    @classmethod
    def one(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])


class NotFound(RegistryError):
    """A resource does not exist; `resource` is its name (`programs/x/versions/1.0.0`)."""

    reason = "NOT_FOUND"

    def __init__(self, resource: str, message: str | None = None) -> None:
        self.resource = resource
        super().__init__(message or f"{resource} not found")


class AlreadyExists(RegistryError):
    """A resource exists under that name with other content; `violations` may name the fields that differ."""

    reason = "ALREADY_EXISTS"

    def __init__(
        self, resource: str, message: str | None = None, violations: list[FieldViolation] | None = None
    ) -> None:
        self.resource = resource
        self.violations = violations or []
        super().__init__(message or f"{resource} already exists")


class FailedPrecondition(RegistryError):
    """The call is refused in the current state; `violations` says why."""

    reason = "FAILED_PRECONDITION"

    def __init__(self, message: str, violations: list[PreconditionViolation] | None = None) -> None:
        self.violations = violations or []
        super().__init__(message)


class Aborted(RegistryError):
    """A concurrency check (etag, revision) failed; the caller should re-read and retry."""

    reason = "ABORTED"


class ResourceExhausted(RegistryError):
    """A limit was exceeded: `limit` names it; `retry_after` for a limit that frees up by itself."""

    reason = "RESOURCE_EXHAUSTED"

    def __init__(self, limit: str, message: str, retry_after: float | None = None) -> None:
        self.limit = limit
        self.retry_after = retry_after
        super().__init__(message)


class Unimplemented(RegistryError):
    """A capability this release does not have yet (never a pretend answer)."""

    reason = "UNIMPLEMENTED"


class Unauthenticated(RegistryError):
    """The call carries no valid credentials."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(RegistryError):
    """The caller lacks `action` on `resource` (DSPy.rb calls it AccessDeniedError)."""

    reason = "PERMISSION_DENIED"

    def __init__(self, principal: str, action: str, resource: str) -> None:
        self.principal = principal
        self.action = action
        self.resource = resource
        super().__init__(f"{principal} may not {action} {resource}")


class ShuttingDown(RegistryError):
    """The server is stopping: nothing of the call was done (a watch resumes by revision elsewhere)."""

    reason = "SHUTTING_DOWN"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class StoreError(RegistryError):
    """The store failed in a way the caller cannot fix."""

    reason = "STORE_ERROR"


class StoreUnavailable(StoreError):
    """The database cannot be reached, or a statement timed out."""

    reason = "STORE_UNAVAILABLE"


@dataclass
class Violations:
    """Collects field violations so that one answer names every bad field (the first
    MAX_VIOLATIONS of them, and how many more: a list of 100 000 bad items is one answer, not
    100 000 objects)."""

    items: list[FieldViolation] = field(default_factory=list)
    more: int = 0

    def add(self, field_path: str, description: str) -> None:
        if len(self.items) >= MAX_VIOLATIONS:
            self.more += 1
            return
        self.items.append(FieldViolation(field_path, description))

    def collect(self, check: Callable[[], object]) -> None:
        """Run a check that raises InvalidArgument, keeping its violations instead."""
        try:
            check()
        except InvalidArgument as exc:
            for v in exc.violations:
                self.add(v.field, v.description)
            self.more += exc.more

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(list(self.items), more=self.more)

    def __bool__(self) -> bool:
        return bool(self.items)

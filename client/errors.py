"""Every error a call of the client raises for a failed RPC, as one tree.

    RegistryError                    base: `.code`, `.message`, `.details`; raised itself for a
    │                                status with no subclass (CANCELLED, UNIMPLEMENTED ...)
    ├── InvalidArgumentError         INVALID_ARGUMENT, OUT_OF_RANGE: bad input, nothing changed;
    │                                `.field_violations` names each bad field
    ├── NotFoundError                NOT_FOUND: a named resource does not exist
    ├── AlreadyExistsError           ALREADY_EXISTS: it exists, with another spec or artifact
    ├── FailedPreconditionError      FAILED_PRECONDITION: not allowed in the present state (policy,
    │                                semver guard, nothing to roll back to); `.precondition_violations`
    ├── ConflictError                ABORTED: an etag did not match; read again, then retry
    ├── ResourceExhaustedError       RESOURCE_EXHAUSTED: too big, too many, or a watcher fell behind
    │                                (watch again from the last revision seen)
    ├── UnauthenticatedError         UNAUTHENTICATED: no, bad, revoked or expired token, or a
    │                                disabled principal
    ├── AccessDeniedError            PERMISSION_DENIED: no grant for the action
    ├── UnavailableError             UNAVAILABLE: the server could not be reached, after the
    │                                client's retries (each with the call's request_id)
    ├── DeadlineExceededError        DEADLINE_EXCEEDED: the call's timeout passed
    └── InternalError                INTERNAL, UNKNOWN, DATA_LOSS: a server bug; the message says what

The server answers a failed call with a status code, a message and, in the
`grpc-status-details-bin` trailer, a google.rpc.Status whose details say
more: which request fields were wrong (BadRequest), a machine-readable
reason (ErrorInfo), which preconditions failed (PreconditionFailure)...
`from_rpc_error` turns such a failure into the class of its status code,
with those details unpacked:

    try:
        await registry.register_signature("Bad Name", signature=spec)
    except InvalidArgumentError as err:
        err.field_violations   # [("signature", "must match ^[a-z]...")]

Outside the tree, the client raises TypeError for an argument of a type it
does not take (before anything is sent), ValueError for an artifact whose
bytes do not match their digest, and FileNotFoundError from `connect` for a
token or TLS file that is not there.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2

# Every detail type google.rpc defines; the server uses the first five.
_DETAIL_TYPES: tuple[Any, ...] = (
    error_details_pb2.BadRequest,
    error_details_pb2.ErrorInfo,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.ResourceInfo,
    error_details_pb2.QuotaFailure,
    error_details_pb2.RetryInfo,
    error_details_pb2.DebugInfo,
    error_details_pb2.RequestInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
)


class RegistryError(Exception):
    """A call failed. `code` is the gRPC status; `details` every unpacked google.rpc detail message."""

    def __init__(self, code: grpc.StatusCode, message: str, details: list[Message] | None = None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.details: list[Message] = list(details or ())

    def detail(self, kind: type[Any]) -> Any:
        """The first detail of the given message type (e.g. error_details_pb2.BadRequest), else None."""
        return next((d for d in self.details if isinstance(d, kind)), None)

    @property
    def field_violations(self) -> list[tuple[str, str]]:
        """(field, description) for each BadRequest violation."""
        return [
            (v.field, v.description)
            for d in self.details
            if isinstance(d, error_details_pb2.BadRequest)
            for v in d.field_violations
        ]

    @property
    def precondition_violations(self) -> list[tuple[str, str, str]]:
        """(type, subject, description) for each PreconditionFailure violation."""
        return [
            (v.type, v.subject, v.description)
            for d in self.details
            if isinstance(d, error_details_pb2.PreconditionFailure)
            for v in d.violations
        ]

    @property
    def reason(self) -> Any:
        """The ErrorInfo (`.reason`, `.domain`, `.metadata`), else None."""
        return self.detail(error_details_pb2.ErrorInfo)

    @property
    def retry_after(self) -> float | None:
        """Seconds the server asks the caller to wait before retrying (google.rpc.RetryInfo), else None."""
        info = self.detail(error_details_pb2.RetryInfo)
        return None if info is None else float(info.retry_delay.ToNanoseconds()) / 1e9

    @property
    def resource_info(self) -> Any:
        """The ResourceInfo (`.resource_type`, `.resource_name`), else None."""
        return self.detail(error_details_pb2.ResourceInfo)


class InvalidArgumentError(RegistryError):
    """INVALID_ARGUMENT: see `field_violations`."""


class NotFoundError(RegistryError):
    """NOT_FOUND."""


class AlreadyExistsError(RegistryError):
    """ALREADY_EXISTS: e.g. the version exists with another spec or digest."""


class AccessDeniedError(RegistryError):
    """PERMISSION_DENIED: the caller has no grant for the action."""


class UnauthenticatedError(RegistryError):
    """UNAUTHENTICATED: no, bad, revoked or expired token, or a disabled principal."""


class FailedPreconditionError(RegistryError):
    """FAILED_PRECONDITION: see `precondition_violations`."""


class ConflictError(RegistryError):
    """ABORTED: an etag did not match; read again and retry."""


class ResourceExhaustedError(RegistryError):
    """RESOURCE_EXHAUSTED: too big, too many, or a watcher fell behind."""


class UnavailableError(RegistryError):
    """UNAVAILABLE: the server could not be reached (retried before this is raised)."""


class DeadlineExceededError(RegistryError):
    """DEADLINE_EXCEEDED: the call's timeout passed."""


class InternalError(RegistryError):
    """INTERNAL or UNKNOWN: a server bug; the message says what happened."""


_BY_CODE: dict[grpc.StatusCode, type[RegistryError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.PERMISSION_DENIED: AccessDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: ConflictError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.DATA_LOSS: InternalError,
}


def _unpack(status: Any) -> list[Message]:
    out: list[Message] = []
    for packed in status.details:
        for kind in _DETAIL_TYPES:
            if packed.Is(kind.DESCRIPTOR):
                message = kind()
                packed.Unpack(message)
                out.append(message)
                break
    return out


def from_rpc_error(err: grpc.RpcError) -> RegistryError:
    """The typed exception for a failed call (grpc.aio.AioRpcError or a sync grpc.Call)."""
    call: Any = err
    code: grpc.StatusCode = call.code()
    message: str = call.details() or ""
    details: list[Message] = []
    for key, value in call.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            # A detail the server sends undecodable is dropped, not fatal: the code and message stand.
            try:
                details = _unpack(status_pb2.Status.FromString(value))
            except DecodeError:
                details = []
    return _BY_CODE.get(code, RegistryError)(code, message, details)

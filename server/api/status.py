"""The one table that maps errors to gRPC status codes, with rich details.

Details follow google.rpc error_details: BadRequest field violations for
INVALID_ARGUMENT, PreconditionFailure for FAILED_PRECONDITION, ResourceInfo
for NOT_FOUND / ALREADY_EXISTS, RetryInfo when waiting helps (a limit that
frees up, a server that stops), and an ErrorInfo (reason, domain) on every
error, so that clients branch on fields, never on message text.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from .. import errors

DOMAIN = "dspy-registry"
MESSAGE_BYTES = 1024
FIELD_BYTES = 256  # a field violation's path
DESCRIPTION_BYTES = 512  # a field violation's or precondition's description
STATUS_BYTES = 4096
MAX_SHOWN = 32  # violations tried at first: more could never fit in STATUS_BYTES anyway

STATUS_CODES: dict[type[errors.RegistryError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    errors.StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.StoreError: grpc.StatusCode.INTERNAL,
}


def code_for(exc: errors.RegistryError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _bad_request(violations: list[Any]) -> any_pb2.Any:
    return _pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=cut(v.field, FIELD_BYTES), description=cut(v.description, DESCRIPTION_BYTES)
                )
                for v in violations
            ]
        )
    )


def cut(text: str, limit: int) -> str:
    """`text` within `limit` bytes of UTF-8, an ellipsis marking a cut."""
    if len(text.encode()) <= limit:
        return text
    return text.encode()[: limit - 3].decode(errors="ignore") + "…"


def to_status(exc: errors.RegistryError) -> grpc.Status:
    """The grpc.Status (code, message, google.rpc.Status details) for an error, within STATUS_BYTES."""
    return rpc_status.to_status(status_proto(exc))


def status_proto(exc: errors.RegistryError) -> status_pb2.Status:
    code = code_for(exc)
    violations: list[Any] = list(getattr(exc, "violations", None) or [])
    shown = min(len(violations), MAX_SHOWN)
    while True:
        proto = _status_proto(
            exc, code, violations[:shown], len(violations) - shown + getattr(exc, "more", 0)
        )
        # The message travels twice: as grpc-message, and inside the details (grpc-status-details-bin).
        if proto.ByteSize() + len(proto.message.encode()) <= STATUS_BYTES or shown <= 1:
            return proto
        shown -= 1


def _status_proto(
    exc: errors.RegistryError, code: grpc.StatusCode, violations: list[Any], dropped: int
) -> status_pb2.Status:
    # The count of what is not shown survives the cut.
    more = (
        f" (the details list {len(violations)} of {len(violations) + dropped} violations)" if dropped else ""
    )
    message = cut(exc.message, MESSAGE_BYTES - len(more)) + more
    details = [_pack(error_details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN))]
    if isinstance(exc, errors.InvalidArgument):
        details.append(_bad_request(violations))
    elif isinstance(exc, errors.FailedPrecondition) and exc.violations:
        details.append(
            _pack(
                error_details_pb2.PreconditionFailure(
                    violations=[
                        error_details_pb2.PreconditionFailure.Violation(
                            type=v.type,
                            subject=cut(v.subject, FIELD_BYTES),
                            description=cut(v.description, DESCRIPTION_BYTES),
                        )
                        for v in violations
                    ]
                )
            )
        )
    elif isinstance(exc, errors.NotFound | errors.AlreadyExists):
        details.append(
            _pack(
                error_details_pb2.ResourceInfo(
                    resource_type=cut(exc.resource.split("/")[0], FIELD_BYTES),
                    resource_name=cut(exc.resource, FIELD_BYTES),
                )
            )
        )
        if violations:  # an existing version: the fields of the request that differ from it
            details.append(_bad_request(violations))
    elif isinstance(exc, errors.ResourceExhausted):
        details.append(
            _pack(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=exc.limit, description=cut(exc.message, DESCRIPTION_BYTES)
                        )
                    ]
                )
            )
        )
    if exc.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(exc.retry_after * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=details)

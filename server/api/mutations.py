"""What every mutating RPC shares: its request_id, and answering a retry with the first answer."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeVar

from google.protobuf.message import Message

from ..calls import serving
from ..domain.names import check_request_id
from ..usecases.common import Idempotency, Replay
from .convert.common import fingerprint

R = TypeVar("R", bound=Message)
T = TypeVar("T")


# The response a call's mutation recorded with its request_id, with the result and the builder it came
# from: an answer built alike is that response, not one built again (each call runs in a task, and a
# context, of its own). An answer built otherwise (CreateToken's holds the secret, its record not) is
# built anew.
_recorded: ContextVar[tuple[object, Callable[[Any], Message], Message] | None] = ContextVar(
    "recorded_response", default=None
)


def idempotency(request: Message, method: str, build: Callable[[T], Message]) -> Idempotency[T] | None:
    """The request's idempotency key, recording the response that `build` makes."""
    request_id: str = getattr(request, "request_id", "")
    if not request_id:
        return None
    check_request_id(request_id)

    def encode(result: T) -> bytes:
        response = build(result)
        _recorded.set((result, build, response))
        return response.SerializeToString()

    return Idempotency(
        principal=serving().actor,
        request_id=request_id,
        method=method,
        fingerprint=fingerprint(request),
        encode=encode,
    )


def answer(result: T | Replay, response_type: type[R], build: Callable[[T], R]) -> R:
    """The first answer for a replayed request, else the response built from `result` (the one
    recorded with the request_id, if this call recorded it)."""
    if isinstance(result, Replay):
        return response_type.FromString(result.response)
    recorded = _recorded.get()
    if recorded is not None and recorded[0] is result and recorded[1] is build:
        _recorded.set(None)
        response = recorded[2]
        assert isinstance(response, response_type)
        return response
    return build(result)

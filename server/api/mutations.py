"""What every mutating RPC shares: its request_id, and answering a retry with the first answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from google.protobuf.message import Message

from ..calls import serving
from ..domain.names import check_request_id
from ..usecases.common import Idempotency, Replay
from .convert.common import fingerprint

R = TypeVar("R", bound=Message)
T = TypeVar("T")


def idempotency(request: Message, method: str, build: Callable[[T], Message]) -> Idempotency[T] | None:
    """The request's idempotency key, recording the response that `build` makes."""
    request_id: str = getattr(request, "request_id", "")
    if not request_id:
        return None
    check_request_id(request_id)
    return Idempotency(
        principal=serving().actor,
        request_id=request_id,
        method=method,
        fingerprint=fingerprint(request),
        encode=lambda r: build(r).SerializeToString(),
    )


def answer(result: T | Replay, response_type: type[R], build: Callable[[T], R]) -> R:
    """The first answer for a replayed request, else the response built from `result`."""
    if isinstance(result, Replay):
        return response_type.FromString(result.response)
    return build(result)

"""What every use case shares: idempotent mutations and paged lists."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..domain import pagination
from ..domain.model import Page
from ..errors import InvalidArgument
from ..store.base import Store
from ..store.records import Records

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Idempotency(Generic[T]):
    """A mutation's request_id: the first answer is recorded and replayed on retry."""

    principal: str
    request_id: str
    method: str
    fingerprint: str
    encode: Callable[[T], bytes]


@dataclass(frozen=True)
class Replay:
    """The recorded first answer to a retried request."""

    response: bytes


@dataclass(frozen=True)
class PageOf(Generic[T]):
    items: list[T]
    next_page_token: str
    total_size: int


async def replayed(tx: Records, idem: Idempotency[Any] | None) -> Replay | None:
    """The first answer if this request_id was seen; INVALID_ARGUMENT if for another request."""
    if idem is None:
        return None
    prior = await tx.get_request(idem.principal, idem.request_id)
    if prior is None:
        return None
    if prior.method != idem.method or prior.fingerprint != idem.fingerprint:
        raise InvalidArgument.one("request_id", "was already used for a different request; use a new id")
    tx.mark_replay()
    return Replay(prior.response)


async def record(tx: Records, idem: Idempotency[T] | None, result: T) -> T:
    """Remember the answer with the request_id, in the mutation's own transaction."""
    if idem is not None:
        await tx.put_request(
            idem.principal, idem.request_id, idem.method, idem.fingerprint, idem.encode(result)
        )
    return result


async def page_of(
    store: Store,
    query: Callable[[Records, Page], Awaitable[tuple[list[T], str | None, int]]],
    page_size: int,
    page_token: str,
    *filters: object,
) -> PageOf[T]:
    """One page of a list: validate the size and token (bound to `filters`), run `query`."""
    fp = pagination.query_fingerprint(*filters)
    page = pagination.page(page_size, page_token, fp)
    async with store.read() as tx:
        items, after, total = await query(tx, page)
    return PageOf(items, pagination.next_token(after, fp), total)

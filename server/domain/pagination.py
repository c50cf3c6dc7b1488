"""AIP-158 pagination: page sizes and opaque page tokens bound to their query."""

from __future__ import annotations

import base64
import hashlib
import json

from ..errors import InvalidArgument
from .model import Page

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_TOKEN_LENGTH = 1024


def query_fingerprint(*parts: object) -> str:
    """A short hash of the filters, so that a token is refused by another query."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_cursor(text: str) -> bool:
    """Whether `text` could be a cursor this server wrote: every key it pages by is printable ASCII.
    A client can rewrite a token's cursor; a lone surrogate (JSON's "\\ud800") or a superscript
    digit (which str.isdigit() accepts and int() refuses) must not reach a query."""
    return text.isascii() and text.isprintable()


def page(page_size: int, page_token: str, fingerprint: str) -> Page:
    """Validate a page request: 0 -> default, too big -> clamped, negative -> error."""
    if page_size < 0:
        raise InvalidArgument.one("page_size", "must not be negative")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    if not page_token:
        return Page(size)
    if len(page_token) > MAX_TOKEN_LENGTH:
        raise InvalidArgument.one("page_token", "is not a token this server issued")
    try:
        padded = page_token + "=" * (-len(page_token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded))
        after, fp = data["a"], data["q"]
        if not isinstance(after, str) or not isinstance(fp, str) or not is_cursor(after):
            raise ValueError
    except (ValueError, KeyError, TypeError, RecursionError):
        raise InvalidArgument.one("page_token", "is not a token this server issued") from None
    if fp != fingerprint:
        raise InvalidArgument.one("page_token", "belongs to a request with other filters")
    return Page(size, after)


def next_token(after: str | None, fingerprint: str) -> str:
    """The token that resumes after `after` (the last key of this page); empty at the end."""
    if after is None:
        return ""
    raw = json.dumps({"a": after, "q": fingerprint}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")

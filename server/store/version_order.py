"""What signature and program versions share in the store: their order of precedence.

A version's `sort_key` orders versions as SemVer does (a release's ends in "~", above each of its
pre-releases). Both kinds find the version next to a new one by it (the semver guards compare the
two) and list their versions newest first, a page resuming after the (sort_key, version) of the
last row of the page before.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from ..domain.pagination import is_cursor
from ..errors import InvalidArgument
from .sql import Connection, Row


def decode_version_cursor(after: str | None) -> tuple[str, str]:
    """The (sort_key, version) a newest-first page resumes after; "~~" sorts above every key."""
    if after is None:
        return "~~", ""
    try:
        key, version = json.loads(after)
    except (ValueError, TypeError, RecursionError):
        key = version = None
    if (
        not isinstance(key, str)
        or not isinstance(version, str)
        or not (is_cursor(key) and is_cursor(version))
    ):
        raise InvalidArgument.one("page_token", "is not a token this server issued")
    return key, version


def version_cursor(rows: Sequence[Row], size: int) -> str | None:
    """Keyset cursor for newest-first version lists: (sort_key, version) of the last row."""
    if len(rows) <= size:
        return None
    last = rows[size - 1]
    return json.dumps([last["sort_key"], last["version"]])


async def neighbour(
    conn: Connection, table: str, columns: str, owner_column: str, owner: str, sort_key: str, *, below: bool
) -> Row | None:
    """The version of `owner` next in precedence below (or above) `sort_key`, yanked or not: what
    the semver guards compare a new version with. Table and column names are the callers' own,
    never a caller's input."""
    order = "sort_key DESC, version DESC" if below else "sort_key, version"
    return await conn.fetchrow(
        f"SELECT {columns} FROM {table} WHERE {owner_column} = ? AND sort_key {'<' if below else '>'} ? "
        f"ORDER BY {order} LIMIT 1",
        owner,
        sort_key,
    )

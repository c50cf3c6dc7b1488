"""What every query module shares: the connection protocol and value encodings.

SQL uses `?` placeholders (the Postgres connection rewrites them to `$n`).
Timestamps are microseconds since the epoch, JSON is compact text with sorted
keys, so both backends store the same bytes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol


class Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


class Connection(Protocol):
    """What the queries need from a backend connection; driver errors arrive translated."""

    async def fetch(self, sql: str, *args: Any) -> Sequence[Row]: ...
    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...
    async def execute(self, sql: str, *args: Any) -> None: ...
    async def executemany(self, sql: str, args: list[tuple[Any, ...]]) -> None: ...


def now_us() -> int:
    return time.time_ns() // 1000


def to_us(value: datetime) -> int:
    return int(value.timestamp() * 1_000_000)


def to_datetime(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


# What json.dumps(value, separators=(",", ":"), sort_keys=True) builds on every call, built once: a
# registration stores some ten JSON texts (its version's maps, a deployment, the events). Without
# the check for cycles (a set of the ids of the containers open), which none of them can have: a
# tenth of each encoding (a cycle would end in RecursionError rather than ValueError).
_ENCODER = json.JSONEncoder(separators=(",", ":"), sort_keys=True, check_circular=False)


def to_json(value: Any) -> str:
    return _ENCODER.encode(value)


def like_prefix(prefix: str) -> str:
    """A LIKE pattern (with ESCAPE '\\') matching strings that start with `prefix`."""
    return escape_like(prefix) + "%"


def glob_to_like(glob: str) -> str:
    """A grant's glob (`*` any run of characters) as a LIKE pattern with ESCAPE '\\'."""
    return "%".join(escape_like(part) for part in glob.split("*"))


def visible_condition(column: str, globs: list[str] | None) -> tuple[str, list[str]]:
    """SQL restricting `column` to names matching one of `globs` (None: no restriction)."""
    if globs is None:
        return "1 = 1", []
    if not globs:
        return "1 = 0", []
    return "(" + " OR ".join(f"{column} LIKE ? ESCAPE '\\'" for _ in globs) + ")", [
        glob_to_like(g) for g in globs
    ]


def escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def forget_oldest(
    conn: Connection, table: str, key: Sequence[str], age: str, before_us: int, most: int
) -> int:
    """Delete the `most` oldest rows of `table` whose `age` column is before `before_us`, one by its
    `key` columns at a time; how many. Maintenance forgets a backlog in such steps, a transaction
    each: SQLite holds the pages a transaction changes in memory until it ends (store/sqlite.py)."""
    rows = await conn.fetch(
        f"SELECT {', '.join(key)} FROM {table} WHERE {age} < ? ORDER BY {age} LIMIT ?", before_us, most
    )
    keys = [tuple(row[column] for column in key) for row in rows]
    await conn.executemany(f"DELETE FROM {table} WHERE {' AND '.join(f'{c} = ?' for c in key)}", keys)
    return len(keys)

"""The statements a replica sends to PostgreSQL, counted by text: `python -m bench fleet
--count-statements` puts this directory on the replicas' PYTHONPATH, so that Python loads it at
start. Bench only — the server never imports it.

It wraps asyncpg's statement methods (a transaction's BEGIN and COMMIT go through `execute`, and so
does the pool's reset, when there is one) and writes the counts so far to $BENCH_STATEMENTS_FILE
once a second, for the driver to read at the measured window's ends.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from typing import Any

PATH = os.environ.get("BENCH_STATEMENTS_FILE", "")


def _install(path: str) -> None:
    import asyncpg.connection

    counts: collections.Counter[str] = collections.Counter()
    connection: Any = asyncpg.connection.Connection

    def wrap(name: str) -> None:
        method = getattr(connection, name)

        async def counted(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
            # executemany: one statement per row of arguments, as the database runs it.
            counts[" ".join(str(query).split())[:100]] += (
                len(args[0]) if name == "executemany" and args else 1
            )
            return await method(self, query, *args, **kwargs)

        setattr(connection, name, counted)

    for name in ("fetch", "fetchrow", "fetchval", "execute", "executemany"):
        wrap(name)

    def write() -> None:
        while True:
            time.sleep(1.0)
            try:
                snapshot = dict(counts)
            except RuntimeError:  # changed while copied: the next second's copy
                continue
            with open(path + ".new", "w") as f:
                json.dump({"time": time.time(), "counts": snapshot}, f)
            os.replace(path + ".new", path)

    threading.Thread(target=write, name="bench-statements", daemon=True).start()


if PATH:
    _install(PATH)

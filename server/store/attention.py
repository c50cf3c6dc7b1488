"""Waiting for the database's answer by the time this replica could have heard it, not by the clock.

A health probe that finds the database "unreachable" cuts every connection, resets every watcher
and refuses calls until the next probe. Judged by the clock, a replica whose event loop is held
(its own work: hundreds of sidecars resuming at once) or whose process waits for a CPU (a machine
loaded past its cores) hears no answer in time even though the database sent it: the answer sits
unread in the socket while the timer runs out. On a fleet that cut every watcher of the survivors
when a replica died, and every sidecar resumed at once, which held their loops longer still.

So a wait here counts only the time the loop was free to take an answer: it waits in short slices,
and a slice that ends late (the loop was held, or the process had no CPU) counts for no more than
the slice asked, and is never the last: an answer that arrived while the loop was held is read in
the turn after. A database that is silent is still found silent after `seconds` of a free loop; a
replica that is merely slow waits for the answer longer, and hears it.
"""

from __future__ import annotations

import asyncio
from typing import Any

SLICE_SECONDS = 0.1  # how much of the loop's inattention one slice can hide: at most this much each


async def attended(awaited: asyncio.Future[Any], seconds: float) -> bool:
    """Wait until `awaited` is done or the loop was free to hear it for `seconds`; whether it is done.

    `awaited` is left as it is (not cancelled) either way.
    """
    loop = asyncio.get_running_loop()
    heard = 0.0  # seconds the loop was free to take the answer
    late = False  # the last slice ended a slice or more late: what came meanwhile is not read yet
    while not awaited.done() and (heard < seconds or late):
        asked = max(min(SLICE_SECONDS, seconds - heard), 0.0)
        began = loop.time()
        await asyncio.wait({awaited}, timeout=asked)
        took = loop.time() - began
        heard += min(took, asked)
        late = took > asked + SLICE_SECONDS
    return awaited.done()

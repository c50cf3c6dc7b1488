"""The event log, as the store tests read and write it: one event per write, every event's resource."""

from __future__ import annotations

from dspy_registry.server.domain.model import Event
from dspy_registry.server.store.base import Store


async def append(store: Store, resource: str = "r/1") -> int:
    async with store.write() as tx:
        return await tx.append([Event(kind="e", resource=resource)])


async def revision(store: Store) -> int:
    async with store.read() as tx:
        return await tx.current_revision()


async def resources(store: Store) -> list[str]:
    """Every event's resource, in revision order (the log is read a page at a time)."""
    found: list[str] = []
    after = 0
    while True:
        async with store.read() as tx:
            page = await tx.events_after(after)
        if not page:
            return found
        found += [e.resource for e in page]
        after = page[-1].revision

"""Watch use cases: what a WatchTargets or WatchEvents stream reads from the store.

A watch starts from a snapshot, or from the event log after the revision a
watcher resumes from, and then follows the hub (server/watch.py), which tells
it of each commit. These are its reads: the two ends of the log, a page of
it, and the two snapshots. Each is one read transaction: a snapshot is the
state of the one revision it comes with.
"""

from __future__ import annotations

from ..domain.deployments import Deployment, Target
from ..domain.model import Event
from ..store.base import Store


class Watches:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def compacted_revision(self) -> int:
        """Events at or below this revision are gone from the log: a watcher there needs a snapshot."""
        async with self.store.read() as tx:
            return await tx.compacted_revision()

    async def current_revision(self) -> int:
        """The last revision committed, by any replica."""
        async with self.store.read() as tx:
            return await tx.current_revision()

    async def events_after(self, revision: int, limit: int) -> list[Event]:
        """About `limit` events after `revision`, in order, whole revisions only (Records.events_after)."""
        async with self.store.read() as tx:
            return await tx.events_after(revision, limit=limit)

    async def targets(self) -> tuple[int, list[Target]]:
        """Every target, and the revision they are the state of."""
        async with self.store.read() as tx:
            return await tx.targets_snapshot()

    async def live_deployments(self) -> tuple[int, list[Deployment]]:
        """The deployments pending or in progress, and the revision they are the state of."""
        async with self.store.read() as tx:
            return await tx.live_deployments_snapshot()

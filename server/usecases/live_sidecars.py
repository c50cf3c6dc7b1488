"""The sidecars connected to this replica, held in its memory, and the fleet as all replicas wrote it.

A heartbeat that says again what the sidecar said before changes nothing a
deployment decides on: this replica keeps it in memory (`held`) and writes the
last report of every sidecar it holds in one batch per flush interval
(`flush`), in a telemetry transaction (no revision, no revision lock). What
changes a decision — a sidecar joins, leaves, or ACKs or NACKs another set of
versions — is written before the report is answered, so the replica that
runs the controller reads it at once, wherever the sidecar is connected.

Each sidecar is one row, naming the replica that holds it. Readers take the
rows of other replicas that are still vouched for (`live_until`) and, for
this replica's own sidecars, its memory, which is newer; a sidecar that moved
to another replica is counted once, as the newest report says. A replica
that finds at its flush that a sidecar's row names another replica now (it
moved, or left through another replica) lets it go.
"""

from __future__ import annotations

from datetime import datetime

from ..domain import sidecars
from ..domain.clock import SYSTEM_CLOCK, Clock
from ..domain.sidecars import Report
from ..errors import PermissionDenied
from ..store.base import Store
from ..store.records import Records

DEFAULT_FLUSH_SECONDS = 5.0


class LiveSidecars:
    def __init__(
        self,
        store: Store,
        replica: str,
        *,
        flush_seconds: float = DEFAULT_FLUSH_SECONDS,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        self.replica = replica
        self.flush_seconds = flush_seconds
        self.clock = clock
        # The last report of each sidecar connected here; guarded by the event loop (no await
        # between a read of an entry and the write that depends on it).
        self.held: dict[str, Report] = {}

    def last(self, sidecar_id: str, now: datetime) -> Report | None:
        """The sidecar's last report here, if it is still live."""
        r = self.held.get(sidecar_id)
        return r if r is not None and r.live_at(now) else None

    async def check_owner(self, sidecar_id: str, principal: str, now: datetime) -> None:
        """A live id belongs to the principal reporting under it: another may not overwrite or remove it."""
        mine = self.last(sidecar_id, now)
        if mine is not None:
            owner: str | None = mine.principal
        else:
            async with self.store.read() as tx:
                found = await tx.presence_owner(sidecar_id, now)
            # A row this replica wrote but no longer holds is a sidecar gone silent here.
            owner = found[1] if found is not None and found[0] != self.replica else None
        if owner is not None and owner != principal:
            raise PermissionDenied(principal, "report as", f"sidecars/{sidecar_id}")

    async def keep(self, r: Report) -> None:
        """Write `r` now (it changes what is kept), as held by this replica, and hold it."""
        async with self.store.telemetry() as tx:
            await tx.put_presence(r, self.replica, sidecars.live_until(r, self.flush_seconds))
        self.held[r.sidecar_id] = r

    def seen(self, r: Report) -> None:
        """A heartbeat that changes nothing kept: memory only, written with the next batch."""
        self.held[r.sidecar_id] = r

    def forget(self, sidecar_id: str) -> None:
        """Let the sidecar go from memory (its next report is written as a change)."""
        self.held.pop(sidecar_id, None)

    async def leave(self, sidecar_id: str) -> None:
        async with self.store.telemetry() as tx:
            await tx.remove_presence(sidecar_id)
        self.held.pop(sidecar_id, None)

    async def serving(self, tx: Records, program: str, environment: str, now: datetime) -> list[Report]:
        """The live sidecars that hold a version of `program` in `environment`, each once, by id."""
        found: dict[str, Report] = {}
        for p in await tx.presence_serving(program, environment, now):
            if p.replica != self.replica:  # this replica's own: its memory says it better
                found[p.report.sidecar_id] = p.report
        for r in list(self.held.values()):
            if not r.live_at(now) or not any(
                a.program == program and a.environment == environment for a in r.targets
            ):
                continue
            other = found.get(r.sidecar_id)
            if other is None or other.time <= r.time:
                found[r.sidecar_id] = r
        return [found[k] for k in sorted(found)]

    async def flush(self) -> int:
        """One batch: the last report of every live sidecar held here; let go of those silent for three
        heartbeats and of those another replica holds now. How many were written."""
        now = self.clock.now()
        snapshot = dict(self.held)
        live = [r for r in snapshot.values() if r.live_at(now)]
        for sidecar_id, r in snapshot.items():
            if not r.live_at(now) and self.held.get(sidecar_id) is r:
                del self.held[sidecar_id]  # its row expires by itself (live_until)
        if not snapshot:
            return 0
        async with self.store.telemetry() as tx:
            await tx.refresh_presence(
                self.replica, [(r, sidecars.live_until(r, self.flush_seconds)) for r in live]
            )
            mine = await tx.presence_held_by(self.replica)
        for sidecar_id, r in snapshot.items():
            # Compared by identity: a report that arrived during the batch is the newer word.
            if sidecar_id not in mine and self.held.get(sidecar_id) is r:
                del self.held[sidecar_id]
        return len(live)

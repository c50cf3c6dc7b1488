"""The sidecars that report to this replica, held in its memory, and the fleet as all replicas wrote it.

A heartbeat that says again what the sidecar said before changes nothing a
deployment decides on: this replica keeps it in memory (`held`) and writes
the last report of every sidecar it holds in one batch per flush interval
(`flush`), in a telemetry transaction (no revision, no revision lock) — of
the sidecars it heard since it last wrote them: the others' rows say what it
holds already. What
changes a decision — a sidecar joins, leaves, or ACKs or NACKs another set of
versions — is written before the report is answered, so the replica that runs
the controller reads it at once, wherever the sidecar reports. Those changes
are written in group commits (`keep`): a deployment makes every sidecar ACK
at once, and the reports that arrive while one transaction is in flight are
written together by the next, each answered once its row is committed.

A sidecar may report to several replicas (a client that spreads its calls
round-robin): each replica that heard it writes its own row, and a reader
takes each sidecar's newest word (domain.sidecars.newest_word), so it is
counted once. A replica compares a report with what it holds, or — the first
time it hears a sidecar — with what the store says: a report that says what
another replica already wrote is held, not written. This replica's own rows
give way to its memory, which is newer (and forgets a sidecar silent for
three heartbeats even while its row is still vouched for), except a row that
says the sidecar left.
"""

from __future__ import annotations

import asyncio
import contextvars
from datetime import datetime

from ..domain import sidecars
from ..domain.clock import SYSTEM_CLOCK, Clock
from ..domain.sidecars import Report
from ..errors import NotFound, PermissionDenied, RegistryError, StoreUnavailable
from ..store.base import Store
from ..store.presence_records import Presence
from ..store.records import Records

DEFAULT_FLUSH_SECONDS = 5.0
WRITTEN_SLACK = 1000  # sidecars remembered beyond twice those held, before those not held are let go
# Sidecars a flush goes through, and writes, per turn of the event loop. A flush of a thousand
# sidecars in one stretch held a replica's loop for 5-10 ms on a core every interval, and a call
# that arrived meanwhile waited for it (docs/operations.md, "CreateDeployment under the fleet").
FLUSH_BATCH = 200


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
        # The last report of each sidecar heard here. Written under `_writing`: a batch must not write
        # an older report over a newer one written meanwhile.
        self.held: dict[str, Report] = {}
        # The report of each sidecar this replica last wrote: a batch writes only the sidecars heard
        # since (each report heard is a new object), replaces the targets of those whose targets
        # changed since, and adds the others' where missing (store.presence_records). Kept after a
        # sidecar drops out of `held` (it comes back: a client spreading its calls is often silent
        # here for three heartbeats); the store never holds more of this replica's than it says.
        self._written: dict[str, Report] = {}
        self._writing = asyncio.Lock()
        # Reports to keep that wait for the next transaction, each with its caller's answer, in the
        # order they came; and the task that writes them, while there are any.
        self._queued: list[tuple[Report, asyncio.Future[None]]] = []
        self._keeping: asyncio.Task[None] | None = None

    def last(self, sidecar_id: str, now: datetime) -> Report | None:
        """The sidecar's last report here, if it is still live."""
        r = self.held.get(sidecar_id)
        return r if r is not None and r.live_at(now) else None

    def _others(self, rows: list[Presence]) -> list[tuple[Report, bool]]:
        """Rows as (report, leaving): other replicas' rows, and this replica's that say a sidecar left."""
        return [(p.report, p.leaving) for p in rows if p.replica != self.replica or p.leaving]

    async def known(self, sidecar_id: str, now: datetime) -> Report | None:
        """What the sidecar last said, here or (the first time this replica hears it) in the store."""
        mine = self.last(sidecar_id, now)
        if mine is not None:
            return mine
        async with self.store.read() as tx:
            rows = await tx.presence_of(sidecar_id, now)
        found = sidecars.newest_word(self._others(rows))
        return found[0] if found else None

    @property
    def waiting(self) -> int:
        """Reports to keep waiting for the next transaction (one is in flight, or a flush)."""
        return len(self._queued)

    def check_owner(self, sidecar_id: str, principal: str, now: datetime) -> None:
        """A live id this replica holds belongs to the principal that reports under it: another may
        not send windows under it. Memory only, never the store: under a client that spreads its
        calls over the replicas, most windows reach a replica its sidecar's heartbeats do not, and
        reading the store for each was most of what a fleet cost the database. A window's sidecar id
        only names it, to count a retry once (usecases.rollups, which keys it by principal too), so
        windows sent under an id held elsewhere count as the sender's own: what its `rollback`
        permission on the program already lets it report."""
        owned_by(self.last(sidecar_id, now), principal, sidecar_id)

    async def keep(self, r: Report) -> None:
        """Write `r` now (it changes what is kept), as heard by this replica, and hold it; return once
        its row is committed. NotFound if a program or environment it names does not exist.

        Group commit: while one transaction is in flight (or a flush), the reports kept meanwhile
        queue, and the next transaction checks and writes all of them, so that the ACKs a deployment
        brings, hundreds at once, take a few transactions rather than one each, one after the other.
        A transaction that fails fails every report in it with its error, and none is held. A caller
        that goes (a deadline) before its report is written has it left out; one that goes after has
        it written but not held, since it did not act on it (a NACK ends a deployment): the sidecar's
        next report is a change again."""
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((r, answer))
        if self._keeping is None:
            # A context of its own: the writer serves every caller queued, not the first one's call.
            self._keeping = asyncio.create_task(self._keep_queued(), context=contextvars.Context())
        try:
            await answer
        except asyncio.CancelledError:
            # Also when the answer had come, but this caller was cancelled before it could resume.
            self.held.pop(r.sidecar_id, None)
            raise

    async def _keep_queued(self) -> None:
        """Write what is queued, a transaction at a time, until nothing is."""
        batch: list[tuple[Report, asyncio.Future[None]]] = []
        try:
            while self._queued:
                async with self._writing:
                    # A report whose caller went while it waited is not written: it could undo what
                    # was written since (the sidecar left through `leave`, which took the turn first).
                    batch = [(r, answer) for r, answer in self._queued if not answer.cancelled()]
                    self._queued = []
                    if batch:
                        await self._keep_batch(batch)
        finally:
            self._keeping = None
            # Only when this task itself is cancelled (the loop is closing): else each was answered.
            for _, answer in [*batch, *self._queued]:
                if not answer.done():
                    answer.set_exception(StoreUnavailable("the replica is stopping"))
            self._queued = []

    async def _keep_batch(self, batch: list[tuple[Report, asyncio.Future[None]]]) -> None:
        refused: dict[int, RegistryError] = {}
        kept: dict[str, Report] = {}  # by sidecar: the newest of its reports, if it sent two
        try:
            async with self.store.telemetry() as tx:
                # Checked in the transaction that writes them: one read for the batch, not one per
                # report. (Nothing deletes a program or an environment: a check and a write in one
                # transaction would not be enough without a lock on the rows if something did.)
                missing = await _missing(tx, [r for r, _ in batch])
                for n, (r, _) in enumerate(batch):
                    gone = next((name for name in _names(r) if name in missing), None)
                    if gone is not None:
                        refused[n] = NotFound(gone)
                    elif (other := kept.get(r.sidecar_id)) is None or other.time <= r.time:
                        kept[r.sidecar_id] = r
                await self._put(tx, list(kept.values()), targets_of=set(kept))
        except Exception as exc:
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(exc)
            return
        self._written.update(kept)
        # Written, but a caller went (a deadline) before it heard so, and did not act on its report (a
        # NACK ends a deployment): not held, so that its sidecar's next report is a change again —
        # also when another caller of the same sidecar's, in the same batch, is answered.
        unheard = {r.sidecar_id for r, answer in batch if answer.cancelled()}
        for n, (r, answer) in enumerate(batch):
            if n in refused:
                if not answer.done():
                    answer.set_exception(refused[n])
                continue
            if r.sidecar_id in unheard:
                self.held.pop(r.sidecar_id, None)
            else:
                self.held[r.sidecar_id] = kept[r.sidecar_id]
            if not answer.done():
                answer.set_result(None)

    def seen(self, r: Report) -> None:
        """A report that changes nothing kept: memory only, written with the next batch."""
        self.held[r.sidecar_id] = r

    def forget(self, sidecar_id: str) -> None:
        """Let the sidecar go from memory (its next report is written as a change)."""
        self.held.pop(sidecar_id, None)

    async def leave(self, r: Report) -> None:
        """The sidecar is going: every replica's row of it gives way to one that says so."""
        async with self._writing:
            async with self.store.telemetry() as tx:
                await tx.put_leaving(r, self.replica, sidecars.live_until(r, self.flush_seconds))
            self.held.pop(r.sidecar_id, None)
            self._written.pop(r.sidecar_id, None)

    async def serving(self, tx: Records, program: str, environment: str, now: datetime) -> list[Report]:
        """The live sidecars that hold a version of `program` in `environment`, each once, by id."""
        rows = self._others(await tx.presence_serving(program, environment, now))
        ids = {r.sidecar_id for r, _ in rows}
        mine = [
            (r, False)
            for r in list(self.held.values())
            if r.live_at(now)
            and (
                r.sidecar_id in ids
                or any(a.program == program and a.environment == environment for a in r.targets)
            )
        ]
        # This replica's memory last: of two words at the same time, its own.
        found = sidecars.newest_word([*rows, *mine])
        return [
            r for r in found if any(a.program == program and a.environment == environment for a in r.targets)
        ]

    async def flush(self) -> int:
        """One batch: the last report of every live sidecar held here that was heard since this replica
        last wrote it (the others' rows say what it holds already); let go of those silent for three
        heartbeats (their rows expire by themselves). How many were written.

        Both go FLUSH_BATCH sidecars at a time, with a turn of the event loop between (the writes in
        one transaction still): the calls that arrive meanwhile are answered between batches, not
        after the whole fleet."""
        async with self._writing:
            now = self.clock.now()
            due: list[Report] = []
            for n, (sidecar_id, r) in enumerate(list(self.held.items())):
                if n and n % FLUSH_BATCH == 0:
                    await asyncio.sleep(0)
                if not r.live_at(now):
                    if self.held.get(sidecar_id) is r:  # not heard again during a turn given away
                        del self.held[sidecar_id]
                elif self._written.get(sidecar_id) is not r:
                    due.append(r)
            if len(self._written) > 2 * len(self.held) + WRITTEN_SLACK:  # sidecars gone for good
                self._written = {i: r for i, r in self._written.items() if i in self.held}
            if not due:
                return 0
            async with self.store.telemetry() as tx:
                # What each runs is replaced only where it changed since this replica wrote it; the
                # rest is added where missing (a sidecar that left through another replica took this
                # replica's rows of it along), which writes nothing where it is there.
                await self._put(tx, due, targets_of={r.sidecar_id for r in due if self._targets_changed(r)})
            self._written.update((r.sidecar_id, r) for r in due)
            return len(due)

    async def _put(self, tx: Records, reports: list[Report], *, targets_of: set[str]) -> None:
        """Write this replica's rows of `reports`, FLUSH_BATCH at a time with a turn of the loop between."""
        for first in range(0, len(reports), FLUSH_BATCH):
            batch = reports[first : first + FLUSH_BATCH]
            await tx.put_presence(
                [(r, sidecars.live_until(r, self.flush_seconds)) for r in batch],
                self.replica,
                targets_of={r.sidecar_id for r in batch} & targets_of,
            )
            await asyncio.sleep(0)  # a store that answered at once gave no turn away

    def _targets_changed(self, r: Report) -> bool:
        """Whether `r` serves other targets than this replica last wrote of its sidecar (or none)."""
        written = self._written.get(r.sidecar_id)
        return written is None or _targets(written) != _targets(r)


def _targets(r: Report) -> frozenset[tuple[str, str]]:
    return frozenset((a.program, a.environment) for a in r.targets)


def _names(r: Report) -> list[str]:
    """The programs and environments `r` names, in the order their absence is reported."""
    programs = sorted({a.program for a in r.targets})
    environments = sorted({a.environment for a in r.targets})
    return [*(f"programs/{p}" for p in programs), *(f"environments/{e}" for e in environments)]


async def _missing(tx: Records, reports: list[Report]) -> set[str]:
    """Of the programs and environments `reports` name, those that do not exist."""
    missing: set[str] = set()
    for program in sorted({a.program for r in reports for a in r.targets}):
        if await tx.get_program(program) is None:
            missing.add(f"programs/{program}")
    for environment in sorted({a.environment for r in reports for a in r.targets}):
        if await tx.get_environment(environment) is None:
            missing.add(f"environments/{environment}")
    return missing


def owned_by(known: Report | None, principal: str, sidecar_id: str) -> None:
    """Refuse `principal` a live sidecar id (`known`: its newest report) that another principal reports as."""
    if known is not None and known.principal != principal:
        raise PermissionDenied(principal, "report as", f"sidecars/{sidecar_id}")

"""Sidecar use cases: take a sidecar's report, say which sidecars serve a target.

A report is telemetry, not registry state: it replaces the sidecar's last one
and appends no event, so it neither moves the store's revision nor wakes a
watcher. This replica holds it in memory (usecases.live_sidecars): one that
changes what the sidecar runs (it joins, or ACKs or NACKs another set of
versions) is written before it is answered; one that only says it again is
written with the replica's next batch. A new NACK is also a signal to the
deployment it concerns (a blue-green deployment of that version fails), acted
on in its own transaction. Liveness is judged when read (three missed
heartbeats and a sidecar is gone); maintenance deletes the rows of those long
silent.
"""

from __future__ import annotations

from collections.abc import Callable

from ..calls import Call
from ..domain import sidecars
from ..domain.clock import SYSTEM_CLOCK, Clock
from ..domain.sidecars import Report
from ..store.base import Store
from .deployments import Deployments
from .live_sidecars import LiveSidecars, owned_by


class Sidecars:
    def __init__(
        self,
        store: Store,
        deployments: Deployments,
        live: LiveSidecars,
        revision: Callable[[], int],
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_report: Callable[[str, str], None] | None = None,
    ) -> None:
        """`revision`: the last revision this replica has seen committed (what a report is answered)."""
        self.store = store
        self.deployments = deployments
        self.live = live
        self.revision = revision
        self.clock = clock
        # Told (program, environment) of each report that changes what is kept, as Metrics.on_report
        # (the dashboard's live view); a heartbeat that says the same again changes nothing shown.
        self.on_report = on_report
        # Told of each ACK (True) or NACK (False) a sidecar reports anew, with its environment, once
        # the report is kept (telemetry sets it). A heartbeat repeating its results tells nothing.
        self.on_result: Callable[[str, bool], None] | None = None

    async def report(self, call: Call, r: Report) -> int:
        """Record `r` (already validated); the store's revision as this replica knows it."""
        before = await self.live.known(r.sidecar_id, r.time)
        if not sidecars.changes_what_is_kept(before, r):
            self.live.seen(r)
            return self.revision()
        owned_by(before, r.principal, r.sidecar_id)
        await self.live.keep(r)  # NotFound there if what it names does not exist
        revision = self.revision()
        if self.on_report is not None:
            for program, environment in sorted({(a.program, a.environment) for a in r.targets}):
                self.on_report(program, environment)
        if self.on_result is not None:
            for a in sidecars.new_results(before, r):
                self.on_result(a.environment, bool(a.acked))
        # Each new NACK may end a deployment: its own transaction, since the report stands either way.
        try:
            for a in sidecars.new_nacks(before, r):
                ended = await self.deployments.nacked(
                    call, a.program, a.environment, r.sidecar_id, a.version, a.digest, a.error_message
                )
                if ended is not None:
                    revision = ended.revision
        except BaseException:
            self.live.forget(r.sidecar_id)  # its next report is a change again: the NACK is acted on then
            raise
        return revision

    async def leave(self, call: Call, sidecar_id: str, principal: str) -> int:
        """Drop `sidecar_id` from the live set now (it is shutting down)."""
        now = self.clock.now()
        before = await self.live.known(sidecar_id, now)
        owned_by(before, principal, sidecar_id)
        # What says it left must outlive what any replica said of it before: its heartbeat, from now.
        heartbeat = before.heartbeat_seconds if before is not None else sidecars.DEFAULT_HEARTBEAT_SECONDS
        await self.live.leave(
            Report(
                sidecar_id=sidecar_id,
                principal=principal,
                targets=(),
                heartbeat_seconds=heartbeat,
                time=now,
                revision=before.revision if before is not None else 0,
            )
        )
        return self.revision()

    async def serving(self, program: str, environment: str) -> list[Report]:
        """The live sidecars that hold a version of `program` in `environment`, each once."""
        async with self.store.read() as tx:
            return await self.live.serving(tx, program, environment, self.clock.now())

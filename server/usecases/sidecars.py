"""Sidecar use cases: take a sidecar's report, say which sidecars serve a target.

A report is telemetry, not registry state: it overwrites the sidecar's last
one and appends no event, so it neither moves the store's revision nor wakes
a watcher. A NACK is also a signal to the deployment it concerns (a
blue-green deployment of that version fails), acted on in its own
transaction. Liveness is judged when read (three missed heartbeats and a
sidecar is gone); maintenance deletes the rows of those long silent.
"""

from __future__ import annotations

from collections.abc import Callable

from ..calls import Call
from ..domain.clock import SYSTEM_CLOCK, Clock
from ..domain.sidecars import Report, new_results
from ..errors import NotFound
from ..store.base import Store
from .common import check_owner
from .deployments import Deployments


class Sidecars:
    def __init__(
        self,
        store: Store,
        deployments: Deployments,
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_report: Callable[[str, str], None] | None = None,
    ) -> None:
        self.store = store
        self.deployments = deployments
        self.clock = clock
        # Told (program, environment) of each committed report, as Metrics.on_report.
        self.on_report = on_report
        # Told of each ACK (True) or NACK (False) a sidecar reports anew, with its environment, once
        # the report is committed (telemetry sets it). A heartbeat repeating its results tells nothing.
        self.on_result: Callable[[str, bool], None] | None = None

    async def report(self, call: Call, r: Report) -> int:
        """Record `r` (already validated); the store's current revision."""
        async with self.store.write(call) as tx:
            await check_owner(tx, r.sidecar_id, r.principal, r.time)
            for program in sorted({a.program for a in r.targets}):
                if await tx.get_program(program) is None:
                    raise NotFound(f"programs/{program}")
            for environment in sorted({a.environment for a in r.targets}):
                if await tx.get_environment(environment) is None:
                    raise NotFound(f"environments/{environment}")
            fresh = new_results(await tx.get_sidecar(r.sidecar_id), r)
            await tx.put_sidecar(r)
            revision = tx.revision
        if self.on_report is not None:
            for program, environment in sorted({(a.program, a.environment) for a in r.targets}):
                self.on_report(program, environment)
        if self.on_result is not None:
            for a in fresh:
                self.on_result(a.environment, bool(a.acked))
        # Each NACK may end a deployment: its own transaction, since the report stands either way.
        for a in r.targets:
            if not a.acked:
                ended = await self.deployments.nacked(
                    call, a.program, a.environment, r.sidecar_id, a.version, a.digest, a.error_message
                )
                if ended is not None:
                    revision = ended.revision
        return revision

    async def leave(self, call: Call, sidecar_id: str, principal: str) -> int:
        """Drop `sidecar_id` from the live set now (it is shutting down)."""
        async with self.store.write(call) as tx:
            await check_owner(tx, sidecar_id, principal, self.clock.now())
            await tx.remove_sidecar(sidecar_id)
            return tx.revision

    async def serving(self, program: str, environment: str) -> list[Report]:
        """The live sidecars that hold a version of `program` in `environment`."""
        now = self.clock.now()
        async with self.store.read() as tx:
            found = await tx.sidecars_serving(program, environment)
        return [r for r in found if r.live_at(now)]

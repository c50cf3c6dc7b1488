"""Version checks: CI reports a check of a program version; deployments waiting for it move on.

A report is one transaction: the check's row, its `check.reported` event,
and whatever it does to the deployments of that version waiting to start
(Deployments.on_check), all at one revision.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..calls import Call
from ..domain import events
from ..domain.checks import CheckState, VersionCheck
from ..domain.events import EventKind
from ..errors import NotFound
from ..store.base import Store
from .common import Idempotency, Replay, record, replayed
from .deployments import Deployments


@dataclass(frozen=True, kw_only=True)
class CheckReport:
    """ReportVersionCheck's request, validated (domain/checks.validate_report)."""

    program: str
    version: str
    check: str
    state: CheckState
    details_url: str
    summary: str


class Checks:
    def __init__(self, store: Store, deployments: Deployments) -> None:
        self.store = store
        self.deployments = deployments
        self.clock = deployments.clock  # one clock for a report and the deployments it moves

    async def report(
        self, call: Call, report: CheckReport, idem: Idempotency[VersionCheck] | None
    ) -> VersionCheck | Replay:
        """Record `report` as `call`'s actor (audited in the same transaction), and move the
        deployments of the version waiting for it."""
        async with self.store.write(call) as tx:
            if (replay := await replayed(tx, idem)) is not None:
                return replay
            if await tx.program_version_digest(report.program, report.version) is None:
                raise NotFound(f"programs/{report.program}/versions/{report.version}")
            now = self.clock.now()
            before = await tx.get_version_check(report.program, report.version, report.check)
            check = VersionCheck(
                program=report.program,
                version=report.version,
                check=report.check,
                state=report.state,
                details_url=report.details_url,
                summary=report.summary,
                reporter=call.actor,
                create_time=before.create_time if before is not None else now,
                update_time=now,
                revision=tx.next_revision,
            )
            await tx.put_version_check(check)
            reported = events.CheckReported(
                program=check.program,
                version=check.version,
                check=check.check,
                state=check.state.name,
                actor=call.actor,
            )
            await tx.append([events.new_event(EventKind.CHECK_REPORTED, check.resource_name, reported)])
            await self.deployments.on_check(tx, check)
            return await record(tx, idem, check)

    async def of_version(self, program: str, version: str) -> list[VersionCheck]:
        """Every check reported for program@version, in name order."""
        async with self.store.read() as tx:
            return list((await tx.version_checks(program, version)).values())

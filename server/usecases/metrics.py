"""Metrics use cases: take sidecars' windows, and assess a target's versions against its environment.

Windows are telemetry, like sidecar reports: they move no revision and wake
no watcher. An assessment reads the windows received in the environment's
monitoring window (by the server's clock, so sidecar clock skew does not
matter), merges them per version and judges each (see domain.health). The
same assessment answers GetDeploymentStatus and drives the controller's
analysis, so what an operator sees is what the controller acted on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..calls import Call
from ..domain import health
from ..domain.clock import SYSTEM_CLOCK, Clock
from ..domain.deployments import Deployment, State, Target
from ..domain.environments import Environment
from ..domain.health import Health, Verdict, Window
from ..errors import NotFound, Violations
from ..store.base import Store
from ..store.records import Records
from .common import check_owner

DEFAULT_RETENTION_SECONDS = 3600.0


@dataclass(frozen=True)
class Assessed:
    """One version's health, with its role in the target."""

    role: str  # stable, candidate, previous
    health: Health
    registered: dict[str, float]


@dataclass(frozen=True, kw_only=True)
class Assessment:
    window_start: datetime
    window_end: datetime
    versions: tuple[Assessed, ...]
    subject: Assessed | None  # the version the deployment put in, while it is watched

    @property
    def verdict(self) -> Verdict:
        return health.worst(a.health.verdict for a in self.versions)


def watched(d: Deployment, t: Target, env: Environment, now: datetime) -> bool:
    """Whether analysis acts on `d` now: in progress, or succeeded within the monitoring window."""
    if t.deployment != d.id:
        return False
    if d.state is State.IN_PROGRESS:
        return True
    if not env.policy.monitoring_required:  # the contract: only then are completed ones monitored
        return False
    window = timedelta(seconds=env.policy.auto_rollback.monitoring_window_seconds)
    return d.state is State.SUCCEEDED and d.end_time is not None and now - d.end_time <= window


async def assess(
    tx: Records, t: Target, d: Deployment | None, env: Environment, now: datetime, retention: float
) -> Assessment:
    thresholds = env.policy.auto_rollback
    span = min(thresholds.monitoring_window_seconds, retention)
    start = now - timedelta(seconds=span)
    subject_version = d.version if d is not None and watched(d, t, env, now) else None
    if d is not None and subject_version is not None and d.create_time > start:
        start = d.create_time  # an earlier deployment's traffic to this version is not this one's
    roles: list[tuple[str, str]] = []
    if t.stable:
        roles.append(("stable", t.stable.version))
    if t.candidate:
        roles.append(("candidate", t.candidate.version))
    baseline_version = d.previous_stable.version if d is not None and d.previous_stable else None
    if baseline_version and baseline_version not in {v for _, v in roles}:
        roles.append(("previous", baseline_version))
    windows = await tx.metric_windows(t.program, t.environment, [v for _, v in roles], start)
    by_version: dict[str, list[Window]] = {}
    for w in windows:
        by_version.setdefault(w.version, []).append(w)
    totals = {v: health.merge(by_version.get(v, [])) for _, v in roles}
    out = []
    subject = None
    for role, version in roles:
        pv = await tx.get_program_version(t.program, version)
        registered = dict(pv.performance) if pv else {}
        baseline = registered.get("accuracy")
        if version == subject_version and baseline_version and baseline_version != version:
            measured = totals[baseline_version]  # the previous stable, measured beside it
            if measured.accuracy is not None and measured.feedback_total >= thresholds.min_requests:
                baseline = measured.accuracy
        assessed = Assessed(role, health.analyse(version, totals[version], baseline, thresholds), registered)
        out.append(assessed)
        if version == subject_version:
            subject = assessed
    return Assessment(window_start=start, window_end=now, versions=tuple(out), subject=subject)


class Metrics:
    def __init__(
        self,
        store: Store,
        clock: Clock = SYSTEM_CLOCK,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
        on_report: Callable[[str, str], None] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.retention = retention_seconds
        # Told (program, environment) of each committed report: windows commit no event for watchers,
        # and the dashboard's live view follows them (dashboard/feed.py).
        self.on_report = on_report

    async def report(
        self, call: Call, sidecar_id: str, principal: str, windows: list[Window]
    ) -> tuple[int, int]:
        """Store `windows` (already validated): (accepted, dropped).

        Refused: a window dated in the future (INVALID_ARGUMENT), or of a
        version that does not exist (NOT_FOUND). Dropped: older than the
        retention, or of a program and environment with no target. A retry is
        accepted again but stored once.
        """
        now = self.clock.now()
        oldest = now - timedelta(seconds=self.retention)
        v = Violations()
        health.check_window_times(windows, now, v)
        v.raise_if_any()
        async with self.store.write(call) as tx:
            for program, version in sorted({(w.program, w.version) for w in windows}):
                if await tx.program_version_digest(program, version) is None:
                    raise NotFound(f"programs/{program}/versions/{version}")
            await check_owner(tx, sidecar_id, principal, now)
            known: dict[tuple[str, str], bool] = {}
            for key in sorted({(w.program, w.environment) for w in windows}):
                known[key] = await tx.get_target(*key) is not None
            keep = [w for w in windows if known[(w.program, w.environment)] and w.end_time >= oldest]
            await tx.add_metric_windows(sidecar_id, keep, now)
        if self.on_report is not None:
            for program, environment in sorted({(w.program, w.environment) for w in keep}):
                self.on_report(program, environment)
        return len(keep), len(windows) - len(keep)

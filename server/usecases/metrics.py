"""Metrics use cases: take sidecars' windows, and assess a target's versions against its environment.

Windows are telemetry, like sidecar reports: they move no revision and wake
no watcher. This replica merges them in memory per version and second and
writes them in one batch per flush interval (usecases.rollups). An
assessment reads every replica's rollups received in the environment's
monitoring window (by the server's clock, so sidecar clock skew does not
matter) together with those this replica still holds, merges them per
version and judges each (see domain.health). The same assessment answers
GetDeploymentStatus and drives the controller's analysis, so what an operator
sees is what the controller acted on.
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
from .live_sidecars import LiveSidecars
from .rollups import MetricRollups

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
    tx: Records,
    rollups: MetricRollups,
    t: Target,
    d: Deployment | None,
    env: Environment,
    now: datetime,
    retention: float,
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
    windows = await rollups.merged(tx, t.program, t.environment, [v for _, v in roles], start)
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


KNOWN_LIMIT = 10_000  # (program, version) and (program, environment) pairs remembered to exist


class Metrics:
    def __init__(
        self,
        store: Store,
        live: LiveSidecars,
        rollups: MetricRollups,
        clock: Clock = SYSTEM_CLOCK,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
        on_report: Callable[[str, str], None] | None = None,
    ) -> None:
        self.store = store
        self.live = live
        self.rollups = rollups
        self.clock = clock
        self.retention = retention_seconds
        # Told (program, environment) of each report taken in: windows commit no event for watchers,
        # and the dashboard's live view follows them (dashboard/feed.py).
        self.on_report = on_report
        # Versions and targets are never deleted: once seen to exist, a report need not ask again.
        self._versions: set[tuple[str, str]] = set()
        self._targets: set[tuple[str, str]] = set()

    async def report(
        self, call: Call, sidecar_id: str, principal: str, windows: list[Window]
    ) -> tuple[int, int]:
        """Take `windows` (already validated) into this replica's rollups: (accepted, dropped).

        Refused: a window dated in the future (INVALID_ARGUMENT), or of a
        version that does not exist (NOT_FOUND). Dropped: older than the
        retention, or of a program and environment with no target. A retry is
        accepted again but counted once (see usecases.rollups).
        """
        now = self.clock.now()
        oldest = now - timedelta(seconds=self.retention)
        v = Violations()
        health.check_window_times(windows, now, v)
        v.raise_if_any()
        versions = sorted({(w.program, w.version) for w in windows} - self._versions)
        pairs = {(w.program, w.environment) for w in windows}
        known = pairs & self._targets
        targets = sorted(pairs - known)
        if versions or targets:
            async with self.store.read() as tx:
                for program, version in versions:
                    if await tx.program_version_digest(program, version) is None:
                        raise NotFound(f"programs/{program}/versions/{version}")
                found = [key for key in targets if await tx.get_target(*key) is not None]
            self._remember(self._versions, versions)
            self._remember(self._targets, found)
            known.update(found)
        self.live.check_owner(sidecar_id, principal, now)
        keep = [w for w in windows if (w.program, w.environment) in known and w.end_time >= oldest]
        self.rollups.add(principal, sidecar_id, keep, now)
        if self.on_report is not None:
            for program, environment in sorted({(w.program, w.environment) for w in keep}):
                self.on_report(program, environment)
        return len(keep), len(windows) - len(keep)

    @staticmethod
    def _remember(known: set[tuple[str, str]], pairs: list[tuple[str, str]]) -> None:
        if len(known) + len(pairs) > KNOWN_LIMIT:
            known.clear()
        known.update(pairs)

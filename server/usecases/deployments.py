"""Deployment use cases: create (with policy checks), approve, promote, abort, roll back, reconcile.

Every change to a deployment and to its target is one transaction whose
events — `deployment.<kind>` and `target.updated`, whose payloads
`domain/events.py` defines — carry the revision, so the watch streams of
the next release see targets change exactly as they committed. The controller (`reconcile`) is level-based: it re-reads each due
deployment inside its transaction and takes the one step the store says is
next, so a restart, or two replicas, never skip or repeat a step.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from ..calls import Call
from ..domain import checks as checking
from ..domain import deployments as dep
from ..domain import events, security, versions
from ..domain.access import CONTROLLER
from ..domain.clock import SYSTEM_CLOCK, Clock
from ..domain.deployments import Deployment, Kind, State, Target
from ..domain.environments import SCAN_OPTIONAL, Environment, Strategy, StrategySpec
from ..domain.events import EventKind
from ..domain.health import Health, Verdict
from ..domain.model import Event, ProgramVersion
from ..domain.names import VersionRef
from ..errors import Aborted, FailedPrecondition, NotFound, RegistryError, StoreError
from ..store.base import Store
from ..store.records import Records
from .common import Idempotency, PageOf, Replay, page_of, record, replayed
from .live_sidecars import LiveSidecars
from .metrics import DEFAULT_RETENTION_SECONDS, Assessment, assess, watched
from .registry import compatibility
from .rollups import MetricRollups

log = logging.getLogger("dspy_registry.deployments")

_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_ID_SPACE = len(_ALPHABET) ** 12

# A pure step of the state machine: (deployment, target, now, actor) -> (deployment, target).
Action = Callable[[Deployment, Target, datetime, str], tuple[Deployment, Target]]


def _new_id() -> str:
    # One draw of a number below 36**12, spelt in base 36: as uniform as twelve secrets.choice
    # calls, which cost twenty-odd os.urandom calls (every auto-deploying registration makes an id).
    n = secrets.randbelow(_ID_SPACE)
    digits = []
    for _ in range(12):
        n, digit = divmod(n, 36)
        digits.append(_ALPHABET[digit])
    return "".join(digits)


@dataclass(frozen=True, kw_only=True)
class DeploymentRequest:
    program: str
    version: str  # or "latest"
    environment: str
    # None: the environment's default; else given the default, the strategy to use.
    strategy: Callable[[StrategySpec], StrategySpec] | None
    reason: str
    expected_target_etag: str
    supersede: bool
    allow_breaking: bool


@dataclass(frozen=True)
class Status:
    target: Target | None
    deployment: Deployment | None
    assessment: (
        Assessment | None
    )  # live health of each version, with what it registered; None without a target


@dataclass(frozen=True)
class Deployed:
    """What one environment serves of a program, and the deployment moving it (GetProgram)."""

    environment: str
    target: Target | None  # None: no version of the program was ever deployed there
    deployment: Deployment | None  # pending or in progress there, if any

    @property
    def update_time(self) -> datetime | None:
        """When what this environment serves, or its deployment in progress, last changed."""
        times = [x.update_time for x in (self.target, self.deployment) if x is not None and x.update_time]
        return max(times) if times else None


def _events(d: Deployment, t: Target | None, kinds: Sequence[Kind]) -> list[Event]:
    kinds_of = [EventKind.of_deployment(k) for k in kinds]
    out = events.new_events(kinds_of, d.resource_name, events.DeploymentChanged.of(d))
    if t is not None:
        out.append(events.new_event(EventKind.TARGET_UPDATED, t.resource_name, events.TargetUpdated.of(t)))
    return out


class Deployments:
    def __init__(
        self,
        store: Store,
        *,
        metrics_retention: float = DEFAULT_RETENTION_SECONDS,
        live: LiveSidecars | None = None,
        rollups: MetricRollups | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """`live`, `rollups`: what this replica holds in memory of sidecars and metrics (the fleet as
        other replicas wrote it is read from the store beside them); none of its own by default."""
        self.store = store
        self.metrics_retention = metrics_retention
        self.live = live if live is not None else LiveSidecars(store, "", clock=clock)
        self.rollups = rollups if rollups is not None else MetricRollups(store, "", clock=clock)
        self.clock = clock
        # Told each analysis's verdict, with the deployment's environment (telemetry sets it).
        self.on_verdict: Callable[[str, Verdict], None] | None = None

    # -- writing ---------------------------------------------------------------------------

    async def _save(
        self, tx: Records, d: Deployment, before: Deployment | None, t: Target, t_before: Target | None
    ) -> tuple[Deployment, Target]:
        """Persist a deployment and (if it changed) its target, with their events, at this revision."""
        revision = tx.next_revision
        new_entries = d.timeline[len(before.timeline) if before else 0 :]
        stamped = dep.stamped(new_entries, revision)
        d = dep.evolve(
            d, timeline=d.timeline[: len(d.timeline) - len(new_entries)] + stamped, revision=revision
        )
        kinds = [e.kind for e in stamped]
        target_changed = t_before is None or (t.stable, t.candidate, t.candidate_weight, t.deployment) != (
            t_before.stable,
            t_before.candidate,
            t_before.candidate_weight,
            t_before.deployment,
        )
        # A new deployment always moves the target's etag (even one pending approval), so
        # that deployers who expected the old etag are refused.
        if target_changed or before is None:
            t = replace(t, revision=revision, update_time=self.clock.now())
            await tx.put_target(t)
        await tx.put_deployment(d)
        await tx.append(_events(d, t if target_changed else None, kinds))
        return d, t

    async def _version(self, tx: Records, program: str, version: str) -> ProgramVersion:
        ref = VersionRef("programs", program, version)
        found = (
            await tx.latest_program_version(program)
            if ref.is_latest
            else await tx.get_program_version(program, version)
        )
        if found is None:
            raise NotFound(str(ref) if not ref.is_latest else f"programs/{program}")
        return found

    async def create(
        self, call: Call, request: DeploymentRequest, idem: Idempotency[Deployment] | None
    ) -> Deployment | Replay:
        if request.version != versions.LATEST:
            versions.parse(request.version)
        async with self.store.write(call) as tx:
            if (replay := await replayed(tx, idem)) is not None:
                return replay
            return await record(tx, idem, await self.create_in(tx, request, call.actor, auto=False))

    async def create_in(self, tx: Records, r: DeploymentRequest, actor: str, *, auto: bool) -> Deployment:
        """CreateDeployment's work inside a transaction."""
        env = await tx.get_environment(r.environment)
        if env is None:
            raise NotFound(f"environments/{r.environment}")
        pv = await self._version(tx, r.program, r.version)
        active = await tx.active_deployment(r.program, r.environment)
        return await self._create(tx, r, actor, auto, env, pv, active)

    async def _create(
        self,
        tx: Records,
        r: DeploymentRequest,
        actor: str,
        auto: bool,
        env: Environment,
        pv: ProgramVersion,
        active: Deployment | None,
    ) -> Deployment:
        """create_in, given what it reads first: the environment, the version, the active deployment
        (auto-deploy has them in hand: it read the environments, and registered the version)."""
        if env.policy.security_scan:
            await self._check_scanned(tx, env, pv)
        target_before = await tx.get_target(r.program, r.environment)
        target = target_before or Target(program=r.program, environment=r.environment)
        if r.expected_target_etag and r.expected_target_etag != target.etag:
            raise Aborted(
                f"{target.resource_name} changed: etag is {target.etag}, request had {r.expected_target_etag}"
            )
        if active is not None and not r.supersede:
            raise FailedPrecondition(
                f"{active.resource_name} is still {active.state.name} on {target.resource_name}; "
                "wait for it, abort it, or ask to supersede it",
            )
        policy = env.policy
        served_compat = None
        # What check_policy reads, and only where the policy makes it read it (development, where
        # every registration auto-deploys, asks for none of it by default).
        if (
            target.stable is not None
            and policy.validation_required
            and policy.validation.require_compatible_signature
        ):
            served = await tx.get_program_version(r.program, target.stable.version)
            if served is not None:
                served_compat = await compatibility(tx, served, pv)
        required = policy.required_checks
        checks = await tx.version_checks(r.program, pv.version) if required else {}
        succeeded = (
            await tx.succeeded_environments(r.program, pv.version) if policy.required_predecessors else set()
        )
        violations = dep.check_policy(env, pv, served_compat, r.allow_breaking, succeeded, checks)
        if violations:
            raise FailedPrecondition(
                f"{env.name} refuses {pv.name}: " + "; ".join(v.description for v in violations), violations
            )
        now = self.clock.now()
        new_id = _new_id()
        if active is not None:
            superseded, target = dep.supersede(active, target, now, actor, new_id)
            # Its target change is written with the new deployment's, as one state at this revision.
            await self._save(tx, superseded, active, target, target)
        d = Deployment(
            id=new_id,
            program=r.program,
            environment=r.environment,
            version=pv.version,
            digest=pv.digest,
            strategy=r.strategy(env.policy.default_strategy) if r.strategy else env.policy.default_strategy,
            state=State.PENDING_APPROVAL,
            creator=actor,
            reason=r.reason,
            create_time=now,
            required_approvals=env.policy.required_approvals if env.policy.approval_required else 0,
            supersede=r.supersede,
            allow_breaking=r.allow_breaking,
            auto_deployed=auto,
            required_checks=required,
        )
        d = dep.created(d)
        if d.required_approvals == 0:
            d, target = dep.start_when_checked(d, target, now, actor, checking.passed(checks.values()))
        saved, _ = await self._save(tx, d, None, target, target_before)
        return saved

    async def _check_scanned(self, tx: Records, env: Environment, pv: ProgramVersion) -> None:
        """FAILED_PRECONDITION for a version holding credentials, going where the scan is on.

        Registration refuses such versions, unless development's policy turns the scan off: then a
        version may hold them, and it goes nowhere else until its stored artifact is scanned here.
        With the scan on everywhere (the default) every version was scanned already, and this
        reads nothing but the development environment.
        """
        development = env if env.name == SCAN_OPTIONAL else await tx.get_environment(SCAN_OPTIONAL)
        if development is None or development.policy.security_scan:
            return
        count = await tx.artifact_chunk_count(pv.program, pv.digest) or 0
        data = b"".join([await tx.artifact_chunk(pv.digest, seq) for seq in range(count)])
        findings = security.scan_version(data, pv.media_type, pv.metadata)
        if findings:
            raise FailedPrecondition(
                f"{env.name} refuses {pv.name}: it holds credentials ("
                + "; ".join(f"{f.path}: {f.kind}" for f in findings)
                + "), let through only because development's policy turns the credential scan off",
                security.deployment_violations(findings, f"{pv.name} -> {env.resource_name}"),
            )

    async def change(
        self,
        call: Call,
        deployment_id: str,
        etag: str,
        idem: Idempotency[Deployment] | None,
        act: Action,
    ) -> Deployment | Replay:
        """Approve, promote, abort: re-read, check the etag, apply the pure action, save."""
        async with self.store.write(call) as tx:
            if (replay := await replayed(tx, idem)) is not None:
                return replay
            d = await self._current(tx, deployment_id, etag)
            t = await tx.get_target(d.program, d.environment) or Target(
                program=d.program, environment=d.environment
            )
            after, target = act(d, t, self.clock.now(), call.actor)
            saved, _ = await self._save(tx, after, d, target, t)
            return await record(tx, idem, saved)

    async def approve(
        self,
        call: Call,
        deployment_id: str,
        comment: str,
        reject: bool,
        etag: str,
        idem: Idempotency[Deployment] | None,
    ) -> Deployment | Replay:
        """An approval; the one that starts the deployment re-checks the policy as it stands now."""
        async with self.store.write(call) as tx:
            if (replay := await replayed(tx, idem)) is not None:
                return replay
            d = await self._current(tx, deployment_id, etag)
            t = await tx.get_target(d.program, d.environment) or Target(
                program=d.program, environment=d.environment
            )
            passed = await self._passed(tx, d)
            after, target = dep.approve(d, t, self.clock.now(), call.actor, comment, reject, passed)
            if after.state is State.IN_PROGRESS or after.state is State.SUCCEEDED:
                await self._recheck(tx, after, target)
            saved, _ = await self._save(tx, after, d, target, t)
            return await record(tx, idem, saved)

    async def _passed(self, tx: Records, d: Deployment) -> frozenset[str]:
        """The checks of `d`'s version whose last report is PASSED (none read when none is required)."""
        if not d.required_checks:
            return frozenset()
        return checking.passed((await tx.version_checks(d.program, d.version)).values())

    async def on_check(self, tx: Records, check: checking.VersionCheck) -> list[Deployment]:
        """A check was reported for a version, in `tx`: the deployments of it waiting to start move.

        PASSED starts a deployment in PENDING_CHECKS once its last required check has passed (the
        policy is checked again first, as an approval does: a refusal fails it, with the reason);
        FAILED fails every deployment of the version that requires the check and has not started.
        The report's own transaction does it, so that no deployment waits on a poll. Returns the
        deployments it changed.
        """
        changed = []
        for d in await tx.waiting_deployments(check.program, check.version):
            t = await tx.get_target(d.program, d.environment) or Target(
                program=d.program, environment=d.environment
            )
            now = self.clock.now()
            acted: tuple[Deployment, Target] | None = None
            if check.state is checking.CheckState.FAILED:
                acted = dep.check_failed(d, t, now, CONTROLLER, check)
            elif check.state is checking.CheckState.PASSED:
                acted = dep.check_passed(d, t, now, CONTROLLER, check, await self._passed(tx, d))
            if acted is None:
                continue
            after, target = acted
            if after.state in (State.IN_PROGRESS, State.SUCCEEDED):
                try:
                    await self._recheck(tx, after, target)
                except FailedPrecondition as refused:
                    after, target = dep.fail(d, t, now, CONTROLLER, refused.message)
            saved, _ = await self._save(tx, after, d, target, t)
            changed.append(saved)
        return changed

    async def _recheck(self, tx: Records, d: Deployment, t: Target) -> None:
        """The policy again, against the environment, the version and the target of now."""
        env = await tx.get_environment(d.environment)
        pv = await tx.get_program_version(d.program, d.version)
        if env is None or pv is None:
            raise FailedPrecondition(f"{d.resource_name}: its environment or version is gone")
        served_compat = None
        if d.previous_stable is not None:
            served = await tx.get_program_version(d.program, d.previous_stable.version)
            if served is not None:
                served_compat = await compatibility(tx, served, pv)
        succeeded = await tx.succeeded_environments(d.program, d.version)
        violations = dep.check_policy(env, pv, served_compat, d.allow_breaking, succeeded)
        if violations:
            raise FailedPrecondition(
                f"{env.name} no longer accepts {pv.name}: " + "; ".join(v.description for v in violations),
                violations,
            )

    async def _current(self, tx: Records, deployment_id: str, etag: str) -> Deployment:
        d = await tx.get_deployment(deployment_id)
        if d is None:
            raise NotFound(f"deployments/{deployment_id}")
        if etag and etag != d.etag:
            raise Aborted(f"{d.resource_name} changed: etag is {d.etag}, request had {etag}")
        return d

    async def rollback(
        self,
        call: Call,
        deployment_id: str,
        reason: str,
        etag: str,
        idem: Idempotency[tuple[Deployment, Deployment]] | None,
    ) -> tuple[Deployment, Deployment] | Replay:
        """A rollback: the previous version back at once, the original ROLLED_BACK, both linked."""
        async with self.store.write(call) as tx:
            if (replay := await replayed(tx, idem)) is not None:
                return replay
            d = await self._current(tx, deployment_id, etag)
            return await record(tx, idem, await self._roll_back_in(tx, d, reason, call.actor))

    async def _roll_back_in(
        self, tx: Records, d: Deployment, reason: str, actor: str, auto: bool = False
    ) -> tuple[Deployment, Deployment]:
        """Roll `d` back in `tx`: (the rollback deployment, `d` ended ROLLED_BACK)."""
        env = await tx.get_environment(d.environment)
        if env is not None and not env.policy.rollback_enabled:
            raise FailedPrecondition(f"rollback is disabled in {env.name}")
        t = await tx.get_target(d.program, d.environment) or Target(
            program=d.program, environment=d.environment
        )
        now, new_id = self.clock.now(), _new_id()
        ended, target, back_to = dep.roll_back(d, t, now, actor, reason, new_id, auto)
        previous = await tx.get_program_version(d.program, back_to.version)
        if previous is not None and previous.yanked:
            raise FailedPrecondition(
                f"cannot roll back to {previous.name}: it is yanked ({previous.yank_reason})"
            )
        rolled_back, target = await self._save(tx, ended, d, target, t)
        back = dep.rollback_deployment(new_id, d, back_to, t.stable, reason, actor, now)
        saved, _ = await self._save(tx, back, None, target, target)
        return saved, rolled_back

    # -- the controller ----------------------------------------------------------------------

    async def reconcile(self, now: datetime | None = None) -> int:
        """Take every due step (canary weights, blue-green switches); returns how many were taken."""
        now = now or self.clock.now()
        async with self.store.read() as tx:
            due = await tx.due_deployments(now)
        taken = 0
        for deployment_id in due:
            try:
                taken += await self._step(deployment_id, now)
            except StoreError:
                raise  # the store is down: the whole pass is retried
            except Exception as exc:  # a bug must stop this deployment, not every deployment
                log.exception("controller step of deployments/%s failed; failing it", deployment_id)
                await self._fail(deployment_id, f"controller error: {exc!r}")
        return taken

    async def _step(self, deployment_id: str, now: datetime) -> int:
        async with self.store.write() as tx:
            d = await tx.get_deployment(deployment_id)
            if d is None or not dep.due(d, now):
                return 0  # another replica, or a person, got there first
            t = await tx.get_target(d.program, d.environment) or Target(
                program=d.program, environment=d.environment
            )
            env = await tx.get_environment(d.environment)
            if d.strategy.strategy is Strategy.CANARY and env is not None and env.policy.monitoring_required:
                return await self._gated_step(tx, d, t, env, now)
            if d.strategy.strategy is not Strategy.BLUE_GREEN:
                after, target = dep.advance(d, t, now, "controller")
            else:
                live = await self.live.serving(tx, d.program, d.environment, now)
                after, target = dep.switch_when_acked(d, t, now, "controller", live)
                if after.timeline == d.timeline:
                    # Still waiting for ACKs: only the next check moves; nothing anyone sees changed.
                    await tx.put_deployment(after)
                    return 0
            await self._save(tx, after, d, target, t)
            return 1

    async def _gated_step(
        self, tx: Records, d: Deployment, t: Target, env: Environment, now: datetime
    ) -> int:
        """A monitored canary step passes only on a HEALTHY verdict of its candidate.

        UNHEALTHY rolls back (where allowed; else the canary pauses with the
        violations). INCONCLUSIVE waits, rechecking every analysis interval,
        until the step's deadline (its pause plus the strategy's step_deadline,
        by default 10 analysis intervals), then pauses for a person to promote
        or abort.
        """
        thresholds = env.policy.auto_rollback
        found = await assess(tx, self.rollups, t, d, env, now, self.metrics_retention)
        subject = found.subject
        verdict = subject.health.verdict if subject else Verdict.INCONCLUSIVE
        if verdict is Verdict.HEALTHY:
            after, target = dep.advance(d, t, now, "controller", _passed(found))
            await self._save(tx, after, d, target, t)
            return 1
        if verdict is Verdict.UNHEALTHY and subject is not None:
            if await self._auto_roll_back_in(tx, d, env, subject.health.violations):
                return 1
            after = dep.pause(d, now, "controller", "; ".join(subject.health.violations))
        elif now >= dep.step_deadline(d, thresholds.analysis_interval_seconds):
            count = subject.health.totals.request_count if subject else 0
            reason = (
                f"analysis inconclusive: {count} of {thresholds.min_requests} requests "
                f"to {d.version} by the step's deadline"
            )
            after = dep.pause(d, now, "controller", reason)
        else:
            await tx.put_deployment(
                dep.recheck(d, now + timedelta(seconds=thresholds.analysis_interval_seconds))
            )
            return 0
        await self._save(tx, after, d, t, t)
        return 1

    async def _auto_roll_back_in(
        self, tx: Records, d: Deployment, env: Environment, violations: list[str]
    ) -> bool:
        """Roll an unhealthy `d` back by itself, where the policy allows it; whether it rolled back."""
        policy = env.policy
        if not (policy.rollback_enabled and policy.auto_rollback.enabled) or d.previous_stable is None:
            return False
        if d.rollback_of or d.previous_stable == d.pinned:
            # Rolling a rollback back returns to what just failed (or to itself): a person decides.
            log.warning("deployments/%s (a rollback) is unhealthy: %s", d.id, ", ".join(violations))
            return False
        previous = await tx.get_program_version(d.program, d.previous_stable.version)
        if previous is None or previous.yanked:
            # Nothing sound to go back to: the caller pauses (or leaves) it for a person instead.
            log.warning(
                "deployments/%s is unhealthy, and %s is yanked: not rolled back",
                d.id,
                d.previous_stable.version,
            )
            return False
        reason = "Auto-rollback: " + "; ".join(violations)
        await self._roll_back_in(tx, d, reason, "controller", auto=True)
        log.warning("Auto-rollback triggered for deployment %s: %s", d.id, ", ".join(violations))
        return True

    async def analyse(self, deployment_id: str) -> bool:
        """One analysis of a watched deployment: roll it back if its version is UNHEALTHY.

        Judged first in a read transaction (the usual answer, healthy, takes no
        write lock: on Postgres that lock is store-wide); that verdict is the one
        `on_verdict` hears. Only an UNHEALTHY verdict is acted on, judged again in
        the write transaction that acts, which re-reads the deployment, so that a
        person's rollback (or another replica's) racing this one leaves exactly one.
        """
        async with self.store.read() as tx:
            judged = await self._judge(tx, deployment_id)
        if judged is None:
            return False
        _, _, env, found = judged
        if self.on_verdict is not None:
            self.on_verdict(env.name, found.verdict)
        if found.verdict is not Verdict.UNHEALTHY:
            return False
        async with self.store.write() as tx:
            judged = await self._judge(tx, deployment_id)
            if judged is None or judged[3].verdict is not Verdict.UNHEALTHY:
                return False
            d, t, env, found = judged
            if await self._auto_roll_back_in(tx, d, env, found.violations):
                return True
            if d.state is State.IN_PROGRESS and d.strategy.strategy is Strategy.CANARY and not d.paused:
                # No rollback allowed: hold the canary for a person rather than go on.
                await self._save(
                    tx, dep.pause(d, self.clock.now(), "controller", "; ".join(found.violations)), d, t, t
                )
            return False

    async def _judge(
        self, tx: Records, deployment_id: str
    ) -> tuple[Deployment, Target, Environment, Health] | None:
        """The deployment, its target and environment, and its version's health, if it is watched and
        its version was assessed."""
        d = await tx.get_deployment(deployment_id)
        if d is None:
            return None
        t = await tx.get_target(d.program, d.environment)
        env = await tx.get_environment(d.environment)
        now = self.clock.now()
        if t is None or env is None or not watched(d, t, env, now):
            return None
        found = await assess(tx, self.rollups, t, d, env, now, self.metrics_retention)
        if found.subject is None:
            return None
        return d, t, env, found.subject.health

    async def watched_deployments(self) -> list[tuple[str, float]]:
        """(deployment id, analysis interval) of every deployment analysis watches now (two queries)."""
        now = self.clock.now()
        async with self.store.read() as tx:
            envs = {e.name: e for e in await tx.environments()}
            longest = max(
                (e.policy.auto_rollback.monitoring_window_seconds for e in envs.values()), default=0.0
            )
            shaping = await tx.shaping_deployments(now - timedelta(seconds=longest))
        out = []
        for d, t in shaping:
            env = envs.get(d.environment)
            if env is not None and watched(d, t, env, now):
                out.append((d.id, env.policy.auto_rollback.analysis_interval_seconds))
        return out

    async def _fail(self, deployment_id: str, reason: str) -> None:
        async with self.store.write() as tx:
            d = await tx.get_deployment(deployment_id)
            if d is None or d.state not in dep.ACTIVE:
                return
            t = await tx.get_target(d.program, d.environment) or Target(
                program=d.program, environment=d.environment
            )
            after, target = dep.fail(d, t, self.clock.now(), "controller", reason)
            await self._save(tx, after, d, target, t)

    async def nacked(
        self,
        call: Call,
        program: str,
        environment: str,
        sidecar_id: str,
        version: str,
        digest: str,
        error: str,
    ) -> Deployment | None:
        """Act on a sidecar's NACK (see dep.nacked); the deployment it ended, if any."""
        async with self.store.write(call) as tx:
            d = await tx.active_deployment(program, environment)
            if d is None:
                return None
            t = await tx.get_target(program, environment) or Target(program=program, environment=environment)
            acted = dep.nacked(d, t, self.clock.now(), call.actor, sidecar_id, version, digest, error)
            if acted is None:
                return None
            saved, _ = await self._save(tx, acted[0], d, acted[1], t)
            return saved

    async def next_due(self) -> datetime | None:
        async with self.store.read() as tx:
            return await tx.next_step_time()

    # -- reading -----------------------------------------------------------------------------

    async def get(self, deployment_id: str) -> Deployment:
        async with self.store.read() as tx:
            d = await tx.get_deployment(deployment_id)
        if d is None:
            raise NotFound(f"deployments/{deployment_id}")
        return d

    async def list(
        self,
        program: str,
        environment: str,
        states: tuple[State, ...],
        start: datetime | None,
        end: datetime | None,
        visible: list[str] | None,
        page_size: int,
        page_token: str,
    ) -> PageOf[Deployment]:
        return await page_of(
            self.store,
            lambda tx, page: tx.list_deployments(program, environment, states, start, end, visible, page),
            page_size,
            page_token,
            "deployments",
            program,
            environment,
            states,
            start,
            end,
            visible,
        )

    async def status(self, program: str, environment: str) -> Status:
        async with self.store.read() as tx:
            env = await tx.get_environment(environment)
            if env is None:
                raise NotFound(f"environments/{environment}")
            t = await tx.get_target(program, environment)
            d = await tx.active_deployment(program, environment)
            if d is None and t is not None and t.deployment:
                d = await tx.get_deployment(t.deployment)
            found = (
                await assess(tx, self.rollups, t, d, env, self.clock.now(), self.metrics_retention)
                if t is not None
                else None
            )
        if t is None and d is None:
            raise NotFound(f"programs/{program}/environments/{environment}/target")
        return Status(t, d, found)

    async def deployed(self, program: str) -> tuple[Deployed, ...]:
        """Which versions of `program` are deployed where: one entry per environment, in promotion
        order, read in one transaction (three queries, whatever the number of environments)."""
        async with self.store.read() as tx:
            environments = await tx.environments()
            targets = {t.environment: t for t in await tx.targets_of(program)}
            # Oldest first, so that were there ever two in one environment the newest is the one kept.
            active = {d.environment: d for d in await tx.active_deployments_of(program)}
        return tuple(Deployed(e.name, targets.get(e.name), active.get(e.name)) for e in environments)

    async def served(self, program: str, environment: str) -> ProgramVersion:
        """What `environment` serves of `program`: its target's stable version."""
        async with self.store.read() as tx:
            if await tx.get_environment(environment) is None:
                raise NotFound(f"environments/{environment}")
            t = await tx.get_target(program, environment)
            if t is None or t.stable is None:
                raise NotFound(
                    f"programs/{program}/environments/{environment}/target",
                    f"{environment} serves no version of {program}",
                )
            pv = await tx.get_program_version(program, t.stable.version)
        assert pv is not None
        return pv

    # -- auto-deploy ---------------------------------------------------------------------------

    async def auto_deploy(self, tx: Records, pv: ProgramVersion, actor: str) -> None:
        """Registering a version deploys it at once wherever the policy says auto_deploy.

        A policy that refuses the version (validation, promotion order) skips that
        environment and leaves the registration standing: the refusal is logged.
        Its checks run before anything is written, so a refusal leaves nothing behind.
        """
        for env in await tx.environments():
            if not env.policy.auto_deploy or pv.yanked:
                continue
            active = await tx.active_deployment(pv.program, env.name)
            if active is not None and not active.auto_deployed:
                log.warning(
                    "auto-deploy of %s to %s skipped: %s is in progress",
                    pv.name,
                    env.name,
                    active.resource_name,
                )
                continue
            request = DeploymentRequest(
                program=pv.program,
                version=pv.version,
                environment=env.name,
                strategy=None,
                reason=f"auto-deploy of {pv.version}",
                expected_target_etag="",
                supersede=True,
                allow_breaking=False,
            )
            try:
                await self._create(tx, request, actor, True, env, pv, active)
            except RegistryError as refused:
                log.warning("auto-deploy of %s to %s refused: %s", pv.name, env.name, refused.message)


def _passed(found: Assessment) -> str:
    h = found.subject.health if found.subject else None
    if h is None:
        return "analysis passed"
    figures = ", ".join(f"{c.metric} {c.value:.4g}" for c in h.checks if c.value is not None)
    return f"analysis passed: {h.totals.request_count} requests; {figures}"

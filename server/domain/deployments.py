"""Deployments: the state machine, the strategies' steps, and the policy checks. No I/O.

    PENDING_APPROVAL --approve (enough)--> IN_PROGRESS --advance/promote--> SUCCEEDED
          |  reject / abort    |                 |  abort -> ABORTED
          v                    |                 |  rollback -> ROLLED_BACK
       ABORTED                 |                 |  superseded -> SUPERSEDED
                               |                 |  fail -> FAILED
                               v                 ^
             PENDING_CHECKS (a required check has not passed) --last check passed--
                  |  a required check FAILED -> FAILED; abort -> ABORTED
    SUCCEEDED --rollback--> ROLLED_BACK

Every action is a pure function from (deployment, target, now, actor) to the
new deployment and target, or FailedPrecondition for an illegal transition.
A REPLACE moves the stable version at once; a BLUE_GREEN stages the new
version as candidate at weight 0 and switches in one step; a CANARY walks its
steps of increasing weight, then promotes.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from enum import IntEnum
from typing import Any, TypeVar

from ..errors import FailedPrecondition, PreconditionViolation, quote
from . import checks as checking
from . import resources
from .environments import Environment, Strategy, StrategySpec
from .model import ProgramVersion
from .sidecars import Report
from .signatures import Compatibility, Level


class State(IntEnum):
    """The numbers match the proto enum DeploymentState."""

    PENDING_APPROVAL = 1
    IN_PROGRESS = 2
    SUCCEEDED = 3
    FAILED = 4
    ROLLED_BACK = 5
    ABORTED = 6
    SUPERSEDED = 7
    PENDING_CHECKS = 8


TERMINAL = frozenset({State.FAILED, State.ROLLED_BACK, State.ABORTED, State.SUPERSEDED})
ACTIVE = frozenset({State.PENDING_APPROVAL, State.PENDING_CHECKS, State.IN_PROGRESS})
WAITING = frozenset({State.PENDING_APPROVAL, State.PENDING_CHECKS})  # created, not started


class Kind(IntEnum):
    """What happened; the numbers match the proto enum DeploymentEventKind."""

    CREATED = 1
    APPROVED = 2
    REJECTED = 3
    STEP_ADVANCED = 4
    PROMOTED = 5
    SUCCEEDED = 6
    FAILED = 7
    ABORTED = 8
    ROLLED_BACK = 9
    AUTO_ROLLBACK = 10
    SUPERSEDED = 11
    PAUSED = 12
    RESUMED = 13
    CHECKS_PENDING = 14
    CHECK_PASSED = 15


@dataclass(frozen=True)
class Pinned:
    """A version as a target holds it."""

    version: str
    digest: str


@dataclass(frozen=True, kw_only=True)
class Target:
    program: str
    environment: str
    stable: Pinned | None = None
    candidate: Pinned | None = None
    candidate_weight: int = 0
    deployment: str = ""  # the deployment that last changed it
    revision: int = 0
    update_time: datetime | None = None

    @property
    def resource_name(self) -> str:
        return f"programs/{self.program}/environments/{self.environment}/target"

    @property
    def etag(self) -> str:
        return f"rev-{self.revision}"


@dataclass(frozen=True, kw_only=True)
class Approval:
    principal: str
    rejected: bool
    comment: str
    time: datetime


@dataclass(frozen=True, kw_only=True)
class Transition:
    kind: Kind
    state: State
    step: int  # Deployment.current_step after it (steps_applied)
    actor: str
    time: datetime
    reason: str
    revision: int = 0


@dataclass(frozen=True, kw_only=True)
class Deployment:
    id: str
    program: str
    environment: str
    version: str
    digest: str
    strategy: StrategySpec
    state: State
    creator: str
    reason: str
    create_time: datetime
    required_approvals: int = 0
    approvals: tuple[Approval, ...] = ()
    step: int = 0  # the canary step in force (0-based)
    weight_percent: int = 0
    step_start_time: datetime | None = None
    next_step_time: datetime | None = None  # when the controller acts next; None: nothing to do
    paused: bool = False  # a canary held at its weight (a sidecar's NACK) until promoted
    pause_reason: str = ""
    previous_stable: Pinned | None = None
    replaced: str = ""  # the deployment whose result this one replaced
    rollback_of: str = ""  # for a rollback: the deployment it rolled back
    rolled_back_by: str = ""  # the rollback deployment that ended this one
    superseded_by: str = ""
    supersede: bool = False
    allow_breaking: bool = False
    auto_deployed: bool = False
    required_checks: tuple[str, ...] = ()  # the environment's, as it was created
    waiting_checks: tuple[str, ...] = ()  # of those, the ones not passed when it last looked
    timeline: tuple[Transition, ...] = ()
    update_time: datetime | None = None
    end_time: datetime | None = None
    revision: int = 0

    @property
    def resource_name(self) -> str:
        return f"deployments/{self.id}"

    @property
    def etag(self) -> str:
        return f"rev-{self.revision}"

    @property
    def steps_applied(self) -> int:
        """Deployment.current_step: 0 until the strategy starts, then the canary step in force
        (1-based; the last once at full weight), or 1 for blue-green and replace."""
        # Rollback deployments stored before they had a step_start_time did start.
        started = self.step_start_time is not None or bool(self.rollback_of)
        return self.step + 1 if started else 0

    @property
    def step_count(self) -> int:
        return len(self.strategy.canary_steps) if self.strategy.strategy is Strategy.CANARY else 1

    @property
    def pinned(self) -> Pinned:
        return Pinned(self.version, self.digest)


# Deployment's and Transition's fields, all plain init fields with no __post_init__: what `evolve`
# may change, and why a copy of the attributes is what dataclasses.replace() builds (`_copy`).
_DEPLOYMENT_FIELDS = frozenset(f.name for f in fields(Deployment) if f.init)
assert len(_DEPLOYMENT_FIELDS) == len(fields(Deployment)) and not hasattr(Deployment, "__post_init__")
assert all(f.init for f in fields(Transition)) and not hasattr(Transition, "__post_init__")

_T = TypeVar("_T", Deployment, Transition)


def _copy(instance: _T, changes: dict[str, Any]) -> _T:
    """`dataclasses.replace(instance, **changes)` for a dataclass of plain init fields, at a fifth of
    its cost: replace() walks the fields in Python and calls the frozen __init__, which sets each
    one through object.__setattr__."""
    new = object.__new__(type(instance))
    new.__dict__.update(
        instance.__dict__, **changes
    )  # frozen: its __setattr__ refuses, its __dict__ does not
    return new


def evolve(d: Deployment, /, **changes: Any) -> Deployment:
    """`dataclasses.replace(d, **changes)`, by `_copy`: a deployment that starts, promotes and
    succeeds within its creation (every auto-deploying registration) takes ten such steps of its 33
    fields. A name that is not a field is refused, as replace() refuses it (TypeError)."""
    if not _DEPLOYMENT_FIELDS.issuperset(changes):
        raise TypeError(f"Deployment has no field {', '.join(sorted(set(changes) - _DEPLOYMENT_FIELDS))}")
    return _copy(d, changes)


def stamped(entries: Sequence[Transition], revision: int) -> tuple[Transition, ...]:
    """`entries` at `revision`: `dataclasses.replace(e, revision=revision)` of each, by `_copy`."""
    return tuple(_copy(entry, {"revision": revision}) for entry in entries)


def _refuse(deployment: Deployment, action: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"cannot {action} {deployment.resource_name}: it is {deployment.state.name}",
        [
            PreconditionViolation(
                "STATE", deployment.resource_name, f"{action} is not allowed in {deployment.state.name}"
            )
        ],
    )


def _note(d: Deployment, kind: Kind, now: datetime, actor: str, reason: str = "") -> Deployment:
    entry = Transition(kind=kind, state=d.state, step=d.steps_applied, actor=actor, time=now, reason=reason)
    return evolve(d, timeline=d.timeline + (entry,), update_time=now)


def _finish(d: Deployment, state: State, kind: Kind, now: datetime, actor: str, reason: str) -> Deployment:
    # An ended deployment is not paused any more; why it paused stays in its timeline.
    ended = evolve(d, state=state, next_step_time=None, end_time=now, paused=False, pause_reason="")
    return _note(ended, kind, now, actor, reason)


def _promote(d: Deployment, t: Target, now: datetime, actor: str, reason: str) -> tuple[Deployment, Target]:
    """The new version becomes stable, the candidate is gone: SUCCEEDED."""
    target = replace(t, stable=d.pinned, candidate=None, candidate_weight=0, deployment=d.id)
    done = evolve(d, weight_percent=100)
    done = _note(done, Kind.PROMOTED, now, actor, reason)
    return _finish(done, State.SUCCEEDED, Kind.SUCCEEDED, now, actor, reason), target


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def created(d: Deployment) -> Deployment:
    """A new deployment's first timeline entry: who asked for it and why."""
    return _note(d, Kind.CREATED, d.create_time, d.creator, d.reason)


def start(d: Deployment, t: Target, now: datetime, actor: str) -> tuple[Deployment, Target]:
    """Begin the strategy: move the stable (REPLACE), stage the green, or take the first canary step."""
    # What this deployment replaces is what the target holds as it starts, not as it was requested.
    d = evolve(
        d,
        state=State.IN_PROGRESS,
        step=0,
        step_start_time=now,
        previous_stable=t.stable,
        replaced=t.deployment,
    )
    # The creation or approval that starts the strategy leaves the deployment in progress at its
    # first step: its entry says so (an entry holds the state after it), not the PENDING_APPROVAL
    # it was noted in an instant earlier.
    if d.timeline and d.timeline[-1].kind in (Kind.CREATED, Kind.APPROVED, Kind.CHECK_PASSED):
        started = replace(d.timeline[-1], state=State.IN_PROGRESS, step=d.steps_applied)
        d = evolve(d, timeline=d.timeline[:-1] + (started,))
    s = d.strategy
    if s.strategy is Strategy.REPLACE:
        return _promote(d, t, now, actor, d.reason)
    if s.strategy is Strategy.BLUE_GREEN:
        target = replace(t, candidate=d.pinned, candidate_weight=0, deployment=d.id)
        next_time = now + _seconds(s.promote_delay_seconds) if s.auto_promote else None
        return evolve(d, weight_percent=0, next_step_time=next_time), target
    first = s.canary_steps[0]
    target = replace(t, candidate=d.pinned, candidate_weight=first.weight_percent, deployment=d.id)
    return evolve(
        d, weight_percent=first.weight_percent, next_step_time=now + _seconds(first.pause_seconds)
    ), target


def start_when_checked(
    d: Deployment, t: Target, now: datetime, actor: str, passed: Collection[str]
) -> tuple[Deployment, Target]:
    """A deployment free to start (created with no approval to wait for, or approved): it starts
    when every required check has PASSED, else waits in PENDING_CHECKS, its timeline naming them."""
    waiting = tuple(name for name in d.required_checks if name not in passed)
    if not waiting:
        return start(evolve(d, waiting_checks=()), t, now, actor)
    held = evolve(d, state=State.PENDING_CHECKS, waiting_checks=waiting, next_step_time=None)
    return _note(
        held, Kind.CHECKS_PENDING, now, actor, checking.describe_waiting(waiting, d.required_checks)
    ), t


def check_passed(
    d: Deployment, t: Target, now: datetime, actor: str, check: checking.VersionCheck, passed: Collection[str]
) -> tuple[Deployment, Target] | None:
    """A required check of a deployment in PENDING_CHECKS passed: noted, and the last one starts it.

    `passed` is every check of the version that has PASSED now (a check re-run since it passed
    counts as not passed). None when the report changes nothing for `d`.
    """
    if d.state is not State.PENDING_CHECKS or check.check not in d.waiting_checks:
        return None
    waiting = tuple(name for name in d.required_checks if name not in passed)
    noted = evolve(d, waiting_checks=waiting)
    reason = f"required check {check.describe()}"
    reason += (
        f"; {checking.describe_waiting(waiting, d.required_checks)}" if waiting else "; every one passed"
    )
    noted = _note(noted, Kind.CHECK_PASSED, now, actor, reason)
    return (noted, t) if waiting else start(noted, t, now, actor)


def check_failed(
    d: Deployment, t: Target, now: datetime, actor: str, check: checking.VersionCheck
) -> tuple[Deployment, Target] | None:
    """A required check FAILED for the version of a deployment not started yet: it FAILS, saying
    which check and why. None for a deployment that does not require it or has started."""
    if d.state not in WAITING or check.check not in d.required_checks:
        return None
    return fail(d, t, now, actor, f"required check {check.describe()}")


def advance(
    d: Deployment, t: Target, now: datetime, actor: str, reason: str = ""
) -> tuple[Deployment, Target]:
    """One step on: the next canary weight, or the switch to stable after the last step."""
    if d.state is not State.IN_PROGRESS:
        raise _refuse(d, "promote")
    s = d.strategy
    if s.strategy is Strategy.CANARY and d.step + 1 < len(s.canary_steps):
        step = s.canary_steps[d.step + 1]
        moved = evolve(
            d,
            step=d.step + 1,
            weight_percent=step.weight_percent,
            step_start_time=now,
            next_step_time=now + _seconds(step.pause_seconds),
        )
        target = replace(t, candidate=d.pinned, candidate_weight=step.weight_percent, deployment=d.id)
        return _note(
            moved, Kind.STEP_ADVANCED, now, actor, reason or f"weight {step.weight_percent}%"
        ), target
    return _promote(d, t, now, actor, reason or "last step passed")


def promote(
    d: Deployment, t: Target, now: datetime, actor: str, full: bool, reason: str
) -> tuple[Deployment, Target]:
    """PromoteDeployment: one step now, or (`full`) straight to stable; a paused canary resumes."""
    if d.state is not State.IN_PROGRESS:
        raise _refuse(d, "promote")
    if d.paused:
        d = _note(evolve(d, paused=False, pause_reason=""), Kind.RESUMED, now, actor, reason or "resumed")
    return _promote(d, t, now, actor, reason or "promoted") if full else advance(d, t, now, actor, reason)


def _drop_candidate(d: Deployment, t: Target) -> Target:
    """The candidate gone; the target is again shaped by the deployment this one replaced."""
    if t.candidate == d.pinned and t.deployment == d.id:
        return replace(t, candidate=None, candidate_weight=0, deployment=d.replaced)
    return t


def fail(d: Deployment, t: Target, now: datetime, actor: str, reason: str) -> tuple[Deployment, Target]:
    """The deployment cannot go on (an error, a NACK): FAILED, its candidate dropped."""
    if d.state not in ACTIVE:
        raise _refuse(d, "fail")
    return _finish(d, State.FAILED, Kind.FAILED, now, actor, reason), _drop_candidate(d, t)


ACK_RECHECK_SECONDS = 1.0
DEFAULT_ACK_TIMEOUT_SECONDS = 300.0


def green_acks(d: Deployment, live: Sequence[Report]) -> tuple[int, int, int]:
    """(ACKed, live, needed): how many live sidecars ACKed the green version, and how many must."""
    acked = sum(
        any(
            a.acked
            and (a.program, a.environment, a.version, a.digest)
            == (d.program, d.environment, d.version, d.digest)
            for a in r.targets
        )
        for r in live
    )
    needed = math.ceil(len(live) * d.strategy.min_ack_percent / 100)
    return acked, len(live), needed


def switch_when_acked(
    d: Deployment, t: Target, now: datetime, actor: str, live: Sequence[Report]
) -> tuple[Deployment, Target]:
    """The blue-green switch, once `min_ack_percent` of the live sidecars run green.

    Until then the deployment waits (rechecked every second); past `ack_timeout`
    after the switch fell due it FAILS, naming the count. No live sidecar, nothing
    to wait for.
    """
    acked, count, needed = green_acks(d, live)
    if acked >= needed:
        return advance(d, t, now, actor, f"{acked} of {count} live sidecars ACKed {d.version}")
    s = d.strategy
    timeout = s.ack_timeout_seconds or DEFAULT_ACK_TIMEOUT_SECONDS  # the contract: 0 means the default
    deadline = (d.step_start_time or now) + _seconds(s.promote_delay_seconds + timeout)
    if now >= deadline:
        reason = (
            f"{acked} of {count} live sidecars ACKed {d.version} within {timeout:g}s; "
            f"{needed} needed ({s.min_ack_percent}%)"
        )
        return fail(d, t, now, actor, reason)
    return evolve(d, next_step_time=min(now + _seconds(ACK_RECHECK_SECONDS), deadline)), t


def nacked(
    d: Deployment,
    t: Target,
    now: datetime,
    actor: str,
    sidecar_id: str,
    version: str,
    digest: str,
    error: str,
) -> tuple[Deployment, Target] | None:
    """A sidecar could not apply `version`: a blue-green deployment of it FAILS, with the error.

    A canary PAUSES at its weight instead. None when the NACK changes nothing:
    another version, a deployment no longer in progress or already paused (a
    sidecar repeats its NACK each heartbeat), or REPLACE (already done).
    """
    if d.state is not State.IN_PROGRESS or (d.version, d.digest) != (version, digest):
        return None
    reason = f"sidecar {sidecar_id} could not apply {version}: {error}"
    if d.strategy.strategy is Strategy.BLUE_GREEN:
        return fail(d, t, now, actor, reason)
    if d.strategy.strategy is Strategy.CANARY and not d.paused:
        return pause(d, now, actor, reason), t
    return None


def abort(d: Deployment, t: Target, now: datetime, actor: str, reason: str) -> tuple[Deployment, Target]:
    """AbortDeployment: the candidate is dropped (weight 0); the stable version stays."""
    if d.state not in ACTIVE:
        raise _refuse(d, "abort")
    return _finish(d, State.ABORTED, Kind.ABORTED, now, actor, reason), _drop_candidate(d, t)


def supersede(d: Deployment, t: Target, now: datetime, actor: str, by: str) -> tuple[Deployment, Target]:
    if d.state not in ACTIVE:
        raise _refuse(d, "supersede")
    ended = evolve(d, superseded_by=by)
    return _finish(
        ended, State.SUPERSEDED, Kind.SUPERSEDED, now, actor, f"superseded by {by}"
    ), _drop_candidate(d, t)


def approve(
    d: Deployment,
    t: Target,
    now: datetime,
    actor: str,
    comment: str,
    reject: bool,
    passed: Collection[str] = (),
) -> tuple[Deployment, Target]:
    """An approval (or a rejection, which ends it ABORTED); enough approvals start the strategy,
    or, while a required check has not passed (`passed` names those that have), wait for it."""
    if d.state is not State.PENDING_APPROVAL:
        raise _refuse(d, "approve")
    if actor == d.creator:
        raise FailedPrecondition(
            f"{actor} requested {d.resource_name} and may not approve it",
            [
                PreconditionViolation(
                    "APPROVAL", d.resource_name, "the requester cannot approve their own deployment"
                )
            ],
        )
    if any(a.principal == actor and not a.rejected for a in d.approvals):
        raise FailedPrecondition(
            f"{actor} already approved {d.resource_name}",
            [PreconditionViolation("APPROVAL", d.resource_name, "one approval per principal")],
        )
    noted = evolve(
        d, approvals=d.approvals + (Approval(principal=actor, rejected=reject, comment=comment, time=now),)
    )
    if reject:
        noted = _note(noted, Kind.REJECTED, now, actor, comment)
        return _finish(noted, State.ABORTED, Kind.ABORTED, now, actor, f"rejected by {actor}"), t
    noted = _note(noted, Kind.APPROVED, now, actor, comment)
    if sum(not a.rejected for a in noted.approvals) < d.required_approvals:
        return noted, t
    return start_when_checked(noted, t, now, actor, passed)


def roll_back(
    d: Deployment, t: Target, now: datetime, actor: str, reason: str, by: str, auto: bool = False
) -> tuple[Deployment, Target, Pinned]:
    """RollbackDeployment on `d`: what the target goes back to, and `d` ended ROLLED_BACK.

    The previously deployed version returns at once, whatever the strategy; an in-progress canary or blue-green drops its candidate.
    An automated rollback (`auto`) is noted as AUTO_ROLLBACK first, then ends
    the same way.
    """
    if d.state not in (State.IN_PROGRESS, State.SUCCEEDED):
        raise _refuse(d, "roll back")
    if t.deployment != d.id:
        raise FailedPrecondition(
            f"{d.resource_name} no longer shapes {t.resource_name} (deployments/{t.deployment} does)",
            [
                PreconditionViolation(
                    "ROLLBACK", d.resource_name, "only the latest deployment of a target rolls back"
                )
            ],
        )
    if d.previous_stable is None:
        raise FailedPrecondition(
            f"no previous version of {d.program} in {d.environment} to roll back to",
            [PreconditionViolation("ROLLBACK", d.resource_name, "No previous version to rollback to")],
        )
    ended = evolve(d, rolled_back_by=by)
    if auto:
        ended = _note(ended, Kind.AUTO_ROLLBACK, now, actor, reason)
    ended = _finish(ended, State.ROLLED_BACK, Kind.ROLLED_BACK, now, actor, reason)
    target = replace(t, stable=d.previous_stable, candidate=None, candidate_weight=0, deployment=by)
    return ended, target, d.previous_stable


def rollback_deployment(
    new_id: str,
    original: Deployment,
    back_to: Pinned,
    stable_before: Pinned | None,
    reason: str,
    actor: str,
    now: datetime,
) -> Deployment:
    """The deployment a rollback records: `back_to` put back at once (a rollback is a
    REPLACE: nobody waits on a canary to undo a bad version), created and succeeded in one instant. What it replaced is what was stable just before
    it (for a canary in progress, still the old version), never the unfinished candidate."""
    d = Deployment(
        id=new_id,
        program=original.program,
        environment=original.environment,
        version=back_to.version,
        digest=back_to.digest,
        strategy=StrategySpec(),
        state=State.SUCCEEDED,
        creator=actor,
        reason=reason,
        create_time=now,
        weight_percent=100,
        step_start_time=now,
        previous_stable=stable_before,
        replaced=original.id,
        rollback_of=original.id,
        end_time=now,
    )
    return _note(created(d), Kind.SUCCEEDED, now, actor, f"rollback of {original.resource_name}: {reason}")


def pause(d: Deployment, now: datetime, actor: str, reason: str) -> Deployment:
    """Hold a canary at its weight, no further step, until a person promotes (resumes) or aborts it."""
    held = evolve(d, paused=True, pause_reason=reason, next_step_time=None)
    return _note(held, Kind.PAUSED, now, actor, reason)


def recheck(d: Deployment, at: datetime) -> Deployment:
    """Nothing to do yet: look again at `at` (nothing anyone sees changes)."""
    return evolve(d, next_step_time=at)


STEP_DEADLINE_INTERVALS = 10  # the contract: step_deadline 0 means 10 analysis intervals


def step_deadline(d: Deployment, analysis_interval_seconds: float) -> datetime:
    """When a gated canary step still inconclusive pauses for a person: its pause, then `step_deadline`."""
    pause_seconds = d.strategy.canary_steps[d.step].pause_seconds if d.strategy.canary_steps else 0.0
    wait = d.strategy.step_deadline_seconds or STEP_DEADLINE_INTERVALS * analysis_interval_seconds
    return (d.step_start_time or d.create_time) + _seconds(pause_seconds + wait)


def due(d: Deployment, now: datetime) -> bool:
    """Whether the controller has a step to take now."""
    return d.state is State.IN_PROGRESS and d.next_step_time is not None and d.next_step_time <= now


# -- policy -----------------------------------------------------------------------------------------


def check_policy(
    env: Environment,
    version: ProgramVersion,
    compatibility: Compatibility | None,
    allow_breaking: bool,
    succeeded_in: set[str],
    checks: Mapping[str, checking.VersionCheck] | None = None,
) -> list[PreconditionViolation]:
    """What stops `version` from going to `env`; empty when nothing does.

    With `checks` (the version's, by name), also the environment's required checks: one FAILED,
    or under `on_missing_checks = "refuse"` one not PASSED yet (domain/checks.py). Always, the
    version's resource requirements against the environment's capacity (domain/resources.py).
    """
    out: list[PreconditionViolation] = []
    subject = f"{version.name} -> {env.resource_name}"
    if version.yanked:
        out.append(PreconditionViolation("YANKED", version.name, f"yanked: {version.yank_reason}"))
    p = env.policy
    if p.validation_required:
        for metric, minimum in sorted(p.validation.min_metrics.items()):
            value = version.performance.get(metric)
            if value is None or value < minimum:
                out.append(
                    PreconditionViolation("VALIDATION", subject, f"{metric} {value} is below {minimum}")
                )
        for metric, maximum in sorted(p.validation.max_metrics.items()):
            value = version.performance.get(metric)
            if value is None or value > maximum:
                out.append(
                    PreconditionViolation("VALIDATION", subject, f"{metric} {value} is above {maximum}")
                )
        for key in p.validation.required_metadata_keys:
            if key not in version.metadata:
                out.append(
                    PreconditionViolation("VALIDATION", subject, f"metadata key {quote(key)} is required")
                )
        if (
            p.validation.require_compatible_signature
            and compatibility is not None
            and compatibility.level is Level.BREAKING
            and not allow_breaking
        ):
            changes = "; ".join(f"{c.path}: {c.description}" for c in compatibility.breaking)
            out.append(
                PreconditionViolation(
                    "COMPATIBILITY", subject, f"breaks what {env.name} serves ({changes}); set allow_breaking"
                )
            )
    for predecessor in p.required_predecessors:
        if predecessor not in succeeded_in:
            out.append(
                PreconditionViolation(
                    "PROMOTION_ORDER", subject, f"{version.version} has not succeeded in {predecessor}"
                )
            )
    if checks is not None:
        out += checking.violations(p.required_checks, p.on_missing_checks, checks, subject)
    out += resources.violations(version.metadata, p.capacity, subject, env.name)
    return out


# -- stored form -------------------------------------------------------------------------------------


def _pinned_json(p: Pinned | None) -> dict[str, str] | None:
    return {"version": p.version, "digest": p.digest} if p else None


def _pinned(d: dict[str, str] | None) -> Pinned | None:
    return Pinned(d["version"], d["digest"]) if d else None


def _time(s: str | None) -> datetime | None:
    return datetime.fromisoformat(s) if s else None


def event_step(data: Mapping[str, Any]) -> int:
    """The step (Deployment.current_step) a stored timeline entry or event holds.

    Those written before `current_step` was stored hold only `step`, the 0-based step in force,
    which was 0 before the strategy started too: pending approval then means 0.
    """
    if "current_step" in data:
        return int(data["current_step"])
    return 0 if data.get("state") == State.PENDING_APPROVAL.name else int(data["step"]) + 1


def step_json(current_step: int) -> dict[str, int]:
    """Both keys, so that a server of the previous release (a replica in a rolling upgrade, or
    after a downgrade) still reads what this one wrote: `step` was the 0-based step in force."""
    return {"current_step": current_step, "step": max(current_step - 1, 0)}


def to_json(d: Deployment) -> dict[str, object]:
    from .environments import strategy_to_json

    # A deployment's times are mostly one datetime (an auto-deploy is created, started, promoted and
    # succeeds at the same `now`): each object is written out once. By identity, not equality: equal
    # times in other offsets are written differently.
    written: dict[int, str] = {}

    def when(t: datetime | None) -> str | None:
        if t is None:
            return None
        text = written.get(id(t))
        if text is None:
            text = written[id(t)] = t.isoformat()
        return text

    return {
        "id": d.id,
        "program": d.program,
        "environment": d.environment,
        "version": d.version,
        "digest": d.digest,
        "strategy": strategy_to_json(d.strategy),
        "state": d.state.name,
        "creator": d.creator,
        "reason": d.reason,
        "create_time": when(d.create_time),
        "required_approvals": d.required_approvals,
        "approvals": [
            {
                "principal": a.principal,
                "rejected": a.rejected,
                "comment": a.comment,
                "time": when(a.time),
            }
            for a in d.approvals
        ],
        "step": d.step,
        "weight_percent": d.weight_percent,
        "step_start_time": when(d.step_start_time),
        "next_step_time": when(d.next_step_time),
        "paused": d.paused,
        "pause_reason": d.pause_reason,
        "previous_stable": _pinned_json(d.previous_stable),
        "replaced": d.replaced,
        "rollback_of": d.rollback_of,
        "rolled_back_by": d.rolled_back_by,
        "superseded_by": d.superseded_by,
        "supersede": d.supersede,
        "allow_breaking": d.allow_breaking,
        "auto_deployed": d.auto_deployed,
        "required_checks": list(d.required_checks),
        "waiting_checks": list(d.waiting_checks),
        "timeline": [
            {
                "kind": t.kind.name,
                "state": t.state.name,
                **step_json(t.step),
                "actor": t.actor,
                "time": when(t.time),
                "reason": t.reason,
                "revision": t.revision,
            }
            for t in d.timeline
        ],
        "update_time": when(d.update_time),
        "end_time": when(d.end_time),
        "revision": d.revision,
    }


def from_json(j: dict[str, Any]) -> Deployment:
    from .environments import strategy_from_json

    return Deployment(
        id=j["id"],
        program=j["program"],
        environment=j["environment"],
        version=j["version"],
        digest=j["digest"],
        strategy=strategy_from_json(j["strategy"]),
        state=State[j["state"]],
        creator=j["creator"],
        reason=j["reason"],
        create_time=datetime.fromisoformat(j["create_time"]),
        required_approvals=j["required_approvals"],
        approvals=tuple(
            Approval(
                principal=a["principal"],
                rejected=a["rejected"],
                comment=a["comment"],
                time=datetime.fromisoformat(a["time"]),
            )
            for a in j["approvals"]
        ),
        step=j["step"],
        weight_percent=j["weight_percent"],
        step_start_time=_time(j["step_start_time"]),
        next_step_time=_time(j["next_step_time"]),
        paused=j.get("paused", False),  # absent from rows written before pausing existed
        pause_reason=j.get("pause_reason", ""),
        previous_stable=_pinned(j["previous_stable"]),
        replaced=j["replaced"],
        rollback_of=j["rollback_of"],
        rolled_back_by=j["rolled_back_by"],
        superseded_by=j["superseded_by"],
        supersede=j["supersede"],
        allow_breaking=j["allow_breaking"],
        auto_deployed=j["auto_deployed"],
        # Absent from rows written before required checks existed.
        required_checks=tuple(j.get("required_checks", ())),
        waiting_checks=tuple(j.get("waiting_checks", ())),
        timeline=tuple(
            Transition(
                kind=Kind[t["kind"]],
                state=State[t["state"]],
                step=event_step(t),
                actor=t["actor"],
                time=datetime.fromisoformat(t["time"]),
                reason=t["reason"],
                revision=t["revision"],
            )
            for t in j["timeline"]
        ),
        update_time=_time(j["update_time"]),
        end_time=_time(j["end_time"]),
        revision=j["revision"],
    )

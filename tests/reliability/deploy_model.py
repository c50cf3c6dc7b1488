"""An in-memory model of deployments, targets and grants: the oracle of test_model.py.

It is written from the contract (the protos' comments, DESIGN.md, the
environments' policies), not from the server's code: for each call it
predicts the refusal (the status code's name) or, for a success, the state
that follows. Kept small on purpose: one approver besides the admin and the
second principal, no yanks, no metrics, and strategies the controller never
moves by itself (canary pauses of an hour, blue-green without auto-promote),
so that every change the model must know of is one it asked for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PENDING, IN_PROGRESS, SUCCEEDED = "PENDING_APPROVAL", "IN_PROGRESS", "SUCCEEDED"
ABORTED, ROLLED_BACK, SUPERSEDED = "ABORTED", "ROLLED_BACK", "SUPERSEDED"
ACTIVE = (PENDING, IN_PROGRESS)
ADMIN, APPROVER = "admin", "carol"  # the bootstrap admin; an approver with approve on everything
DENIED, MISSING, REFUSED = "PERMISSION_DENIED", "NOT_FOUND", "FAILED_PRECONDITION"


@dataclass(frozen=True)
class Strategy:
    kind: str  # replace | blue_green | canary
    weights: tuple[int, ...] = ()  # the canary's steps


@dataclass(frozen=True, kw_only=True)
class Policy:
    approvals: int = 0
    min_accuracy: float | None = None
    rollback: bool = True
    predecessors: tuple[str, ...] = ()
    default: Strategy = Strategy("replace")
    auto_deploy: bool = False


@dataclass
class Deployment:
    name: str
    program: str
    environment: str
    version: str
    strategy: Strategy
    creator: str
    state: str = PENDING
    approvals: list[str] = field(default_factory=list)
    step: int = 0  # the canary step in force, 0-based
    started: bool = False
    weight: int = 0
    previous_stable: str | None = None  # what the target held as it started: where a rollback returns
    replaced: str = ""  # the deployment that shaped the target as it started
    auto: bool = False

    @property
    def current_step(self) -> int:
        """Deployment.current_step: 0 until the strategy starts, then the step in force, 1-based."""
        return self.step + 1 if self.started else 0


@dataclass
class Target:
    stable: str | None = None
    candidate: str | None = None
    weight: int = 0
    deployment: str = ""


def glob_matches(glob: str, name: str) -> bool:
    return re.fullmatch(".*".join(re.escape(part) for part in glob.split("*")), name) is not None


class Model:
    def __init__(self, policies: dict[str, Policy]) -> None:
        self.policies = policies
        self.versions: dict[str, dict[str, float]] = {}  # program -> version -> accuracy
        self.targets: dict[tuple[str, str], Target] = {}
        self.deployments: dict[str, Deployment] = {}
        self.succeeded: set[tuple[str, str, str]] = set()  # (program, environment, version), ever
        self.grants: dict[str, tuple[str, str]] = {}  # the second principal's: name -> (action, resource)

    # -- who may ------------------------------------------------------------------------------

    def allows(self, actor: str, action: str, program: str) -> bool:
        if actor == ADMIN:
            return True
        if actor == APPROVER:
            return action == "approve"
        return any(a in (action, "admin") and glob_matches(r, program) for a, r in self.grants.values())

    def granted(self, action: str, resource: str) -> str | None:
        return next((n for n, g in self.grants.items() if g == (action, resource)), None)

    # -- registration --------------------------------------------------------------------------

    def register(self, program: str, version: str, accuracy: float) -> str | None:
        """A new version; the environment that auto-deploys takes it, unless a person's deployment is
        live there. Which environment a deployment will be created in, if any."""
        self.versions.setdefault(program, {})[version] = accuracy
        for env, policy in self.policies.items():
            if policy.auto_deploy and not self._violations(program, version, env):
                live = self.active(program, env)
                if live is None or live.auto:
                    return env
        return None

    # -- deployments ---------------------------------------------------------------------------

    def active(self, program: str, env: str) -> Deployment | None:
        return next(
            (
                d
                for d in self.deployments.values()
                if (d.program, d.environment) == (program, env) and d.state in ACTIVE
            ),
            None,
        )

    def target(self, program: str, env: str) -> Target:
        return self.targets.setdefault((program, env), Target())

    def refuse_deploy(self, actor: str, program: str, version: str, env: str, supersede: bool) -> str | None:
        if not self.allows(actor, "deploy", program):
            return DENIED
        if version not in self.versions.get(program, {}):
            return MISSING
        if self.active(program, env) is not None and not supersede:
            return REFUSED
        return REFUSED if self._violations(program, version, env) else None

    def _violations(self, program: str, version: str, env: str) -> bool:
        policy = self.policies[env]
        low = policy.min_accuracy is not None and self.versions[program][version] < policy.min_accuracy
        return low or any((program, p, version) not in self.succeeded for p in policy.predecessors)

    def deploy(
        self,
        name: str,
        actor: str,
        program: str,
        version: str,
        env: str,
        strategy: Strategy | None,
        auto: bool = False,
    ) -> None:
        t = self.target(program, env)
        live = self.active(program, env)
        if live is not None:
            live.state = SUPERSEDED
            self._drop_candidate(live, t)
        policy = self.policies[env]
        d = Deployment(name, program, env, version, strategy or policy.default, actor, auto=auto)
        self.deployments[name] = d
        if policy.approvals == 0:
            self._start(d, t)

    def _start(self, d: Deployment, t: Target) -> None:
        d.state, d.started, d.step = IN_PROGRESS, True, 0
        d.previous_stable, d.replaced = t.stable, t.deployment
        if d.strategy.kind == "replace":
            self._promote(d, t)
        elif d.strategy.kind == "blue_green":
            t.candidate, t.weight, t.deployment = d.version, 0, d.name
        else:
            d.weight = d.strategy.weights[0]
            t.candidate, t.weight, t.deployment = d.version, d.weight, d.name

    def _promote(self, d: Deployment, t: Target) -> None:
        d.state, d.weight = SUCCEEDED, 100
        t.stable, t.candidate, t.weight, t.deployment = d.version, None, 0, d.name
        self.succeeded.add((d.program, d.environment, d.version))

    def _drop_candidate(self, d: Deployment, t: Target) -> None:
        if t.candidate == d.version and t.deployment == d.name:
            t.candidate, t.weight, t.deployment = None, 0, d.replaced

    def refuse_approve(self, actor: str, d: Deployment) -> str | None:
        if not self.allows(actor, "approve", d.program):
            return DENIED
        if d.state != PENDING or actor == d.creator or actor in d.approvals:
            return REFUSED
        return None

    def approve(self, actor: str, d: Deployment, reject: bool) -> None:
        if reject:
            d.state = ABORTED
            return
        d.approvals.append(actor)
        if len(d.approvals) >= self.policies[d.environment].approvals:
            self._start(d, self.target(d.program, d.environment))

    def refuse_change(self, actor: str, d: Deployment, action: str) -> str | None:
        """Promote and abort (deploy), roll back (rollback)."""
        if not self.allows(actor, "rollback" if action == "rollback" else "deploy", d.program):
            return DENIED
        if action == "promote":
            return None if d.state == IN_PROGRESS else REFUSED
        if action == "abort":
            return None if d.state in ACTIVE else REFUSED
        t = self.target(d.program, d.environment)
        allowed = self.policies[d.environment].rollback and d.state in (IN_PROGRESS, SUCCEEDED)
        return None if allowed and t.deployment == d.name and d.previous_stable is not None else REFUSED

    def promote(self, d: Deployment, full: bool) -> None:
        t = self.target(d.program, d.environment)
        if d.strategy.kind == "canary" and not full and d.step + 1 < len(d.strategy.weights):
            d.step += 1
            d.weight = t.weight = d.strategy.weights[d.step]
        else:
            self._promote(d, t)

    def abort(self, d: Deployment) -> None:
        d.state = ABORTED
        self._drop_candidate(d, self.target(d.program, d.environment))

    def rollback(self, actor: str, d: Deployment, name: str) -> None:
        """`d` ends ROLLED_BACK; the rollback deployment `name` puts its previous stable version back at once."""
        t = self.target(d.program, d.environment)
        assert d.previous_stable is not None
        d.state = ROLLED_BACK
        back = Deployment(name, d.program, d.environment, d.previous_stable, Strategy("replace"), actor)
        back.started, back.previous_stable, back.replaced = True, t.stable, d.name
        self.deployments[name] = back
        self._promote(back, t)

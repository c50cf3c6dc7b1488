"""Deployments, approvals and grants against a model: Hypothesis drives a real server, the model predicts.

A RuleBasedStateMachine registers versions, deploys them (replace,
blue-green, canary, or the environment's default; by the admin or by a second
principal), approves or rejects, promotes, aborts, rolls back, grants and
revokes the second principal's permissions, through the gRPC API of a real
server process. Before each call the model (deploy_model.py) predicts the
refusal, or the state a success leads to; after each step every target,
every deployment's state, weight and step, and the second principal's grants
and what they allow are compared with the server's.

Inside `make test` the examples are derandomized (the same on every run);
under `make soak` they are random and run until the test's share is spent.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
from google.protobuf import text_format
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import access_pb2_grpc as apb_grpc
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc
from tests.e2e.conftest import ServerProcess
from tests.factories import dspy_state, spec_proto
from tests.reliability.conftest import Tally, budget, soaking
from tests.reliability.deploy_model import (
    ACTIVE,
    ADMIN,
    APPROVER,
    IN_PROGRESS,
    MISSING,
    PENDING,
    Model,
    Policy,
    Strategy,
)

SECONDS = budget(30, 0.1)
EXAMPLES = 30  # inside make test, the same every run: about 15 s on this machine, 25 s when it is busy
STEPS = 50
HOUR_MS = 3_600_000  # a canary step's pause: the controller never moves the model's deployments
POLICIES = {
    "development": Policy(auto_deploy=True),  # the default environment, as it is
    "m-free": Policy(),
    "m-gated": Policy(approvals=2, min_accuracy=0.85, default=Strategy("canary", (20, 60))),
    "m-locked": Policy(rollback=False, predecessors=("m-free",), default=Strategy("blue_green")),
}
ACTIONS = {
    "read": apb.ACTION_READ,
    "deploy": apb.ACTION_DEPLOY,
    "approve": apb.ACTION_APPROVE,
    "rollback": apb.ACTION_ROLLBACK,
    "admin": apb.ACTION_ADMIN,
}
MUTATIONS = (
    "RegisterProgram",
    "CreateDeployment",
    "ApproveDeployment",
    "PromoteDeployment",
    "AbortDeployment",
    "RollbackDeployment",
    "GrantPermission",
    "RevokePermission",
)
STUBS: dict[str, Any] = {
    "registry": pb_grpc.RegistryServiceStub,
    "deployment": dpb_grpc.DeploymentServiceStub,
    "access": apb_grpc.AccessServiceStub,
}


def strategy_proto(s: Strategy) -> dpb.DeploymentStrategy:
    out = dpb.DeploymentStrategy(strategy=f"STRATEGY_{s.kind.upper()}")
    if s.kind == "blue_green":
        out.blue_green.SetInParent()  # present, so auto_promote is false, not the default's true
        out.blue_green.auto_promote = False
    for weight in s.weights:
        out.canary.steps.add(weight_percent=weight).pause.FromMilliseconds(HOUR_MS)
    return out


def environment_proto(name: str, position: int, p: Policy) -> dpb.Environment:
    e = dpb.Environment(name=f"environments/{name}", description="the model's", position=position)
    e.policy.approval_required = p.approvals > 0
    e.policy.required_approvals = p.approvals
    if p.min_accuracy is not None:
        e.policy.validation_required = True
        e.policy.validation.min_metrics["accuracy"] = p.min_accuracy
    e.policy.rollback_enabled = p.rollback
    e.policy.required_predecessors.extend(p.predecessors)
    e.policy.default_strategy.CopyFrom(strategy_proto(p.default))
    return e


@st.composite
def strategies(draw: st.DrawFn) -> Strategy | None:
    kind = draw(st.sampled_from(("default", "replace", "blue_green", "canary")))
    if kind == "default":
        return None
    if kind != "canary":
        return Strategy(kind)
    weights = draw(st.lists(st.integers(1, 100), min_size=1, max_size=3, unique=True))
    return Strategy("canary", tuple(sorted(weights)))


@dataclass
class World:
    """What every example shares: the server, the admin's and the approver's channels."""

    server: ServerProcess
    channels: dict[str, grpc.Channel]
    examples: Iterator[int] = field(default_factory=itertools.count)
    codes: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (method, code)
    calls: int = 0


class DeploymentMachine(RuleBasedStateMachine):
    world: ClassVar[World]

    def __init__(self) -> None:
        super().__init__()
        n = next(self.world.examples)
        self.programs = (f"x{n}a", f"x{n}b")
        self.bob = f"bob{n}"  # the second principal, with no grant to begin with
        self.model = Model(POLICIES)
        self.revoked: list[str] = []
        self.next_minor = dict.fromkeys(self.programs, 0)
        access = apb_grpc.AccessServiceStub(self.world.channels[ADMIN])
        access.CreatePrincipal(apb.CreatePrincipalRequest(principal_id=self.bob, principal=apb.Principal()))
        secret = access.CreateToken(apb.CreateTokenRequest(parent=f"principals/{self.bob}")).secret
        self.channels = {**self.world.channels, self.bob: self.world.server.channel(secret)}

    def teardown(self) -> None:
        self.channels[self.bob].close()

    def call(self, actor: str, service: str, method: str, request: Any, predicted: str | None) -> Any:
        """The server's answer, which must be the model's prediction: a refusal's code, or success (None)."""
        what = f"{method} as {actor} ({text_format.MessageToString(request, as_one_line=True)[:200]})"
        self.world.calls += 1
        try:
            response = getattr(STUBS[service](self.channels[actor]), method)(request, timeout=30)
        except grpc.RpcError as err:
            code = err.code().name
            self.world.codes[code] += 1
            self.world.outcomes[(method, code)] += 1
            assert code == predicted, f"{what}: {code} {err.details()!r}; the model: {predicted or 'OK'}"
            return None
        self.world.codes["OK"] += 1
        self.world.outcomes[(method, "OK")] += 1
        assert predicted is None, f"{what}: OK; the model: {predicted}"
        return response

    # -- the rules ---------------------------------------------------------------------------

    @initialize(accuracies=st.tuples(st.sampled_from((0.8, 0.9)), st.sampled_from((0.8, 0.9))))
    def first_versions(self, accuracies: tuple[float, float]) -> None:
        for program, accuracy in zip(self.programs, accuracies, strict=True):
            self._register(program, accuracy)

    @precondition(lambda self: sum(map(len, self.model.versions.values())) < 8)  # each auto-deploys
    @rule(data=st.data(), accuracy=st.sampled_from((0.8, 0.9)))
    def register(self, data: st.DataObject, accuracy: float) -> None:
        self._register(data.draw(st.sampled_from(self.programs)), accuracy)

    def _register(self, program: str, accuracy: float) -> None:
        version = f"1.{self.next_minor[program]}.0"
        self.next_minor[program] += 1
        spec = pb.ProgramVersionSpec(
            program=program,
            version=version,
            signature="signatures/msig/versions/1.0.0",
            performance={"accuracy": accuracy},
        )
        request = pb.RegisterProgramRequest(spec=spec, artifact=dspy_state(f"{program} {version}"))
        self.call(ADMIN, "registry", "RegisterProgram", request, None)
        auto = self.model.register(program, version, accuracy)
        # An auto-deploy's id is the server's to choose: the newest deployment there, if it is new.
        newest = {}
        for env in POLICIES:
            listed = dpb_grpc.DeploymentServiceStub(self.channels[ADMIN]).ListDeployments(
                dpb.ListDeploymentsRequest(program=program, environment=env, page_size=1)
            )
            for d in listed.deployments:
                if d.name not in self.model.deployments:
                    newest[env] = d
        assert list(newest) == ([auto] if auto else []), (
            f"{program} {version}: auto-deployed to {list(newest)}, the model: {auto}"
        )
        if auto:
            self.model.deploy(newest[auto].name, ADMIN, program, version, auto, None, auto=True)

    @rule(data=st.data(), strategy=strategies(), supersede=st.booleans())
    def deploy(self, data: st.DataObject, strategy: Strategy | None, supersede: bool) -> None:
        program = data.draw(st.sampled_from(self.programs))
        versions = sorted(self.model.versions[program])
        version = data.draw(st.sampled_from(versions)) if data.draw(st.integers(0, 9)) else "9.9.9"
        env = data.draw(st.sampled_from(sorted(POLICIES)))
        actor = data.draw(st.sampled_from((ADMIN, ADMIN, ADMIN, self.bob)))
        self._deploy(actor, program, version, env, strategy, supersede)

    def _deploy(
        self, actor: str, program: str, version: str, env: str, strategy: Strategy | None, supersede: bool
    ) -> None:
        request = dpb.CreateDeploymentRequest(
            program=program, version=version, environment=env, supersede=supersede, reason="model"
        )
        if strategy is not None:
            request.strategy.CopyFrom(strategy_proto(strategy))
        predicted = self.model.refuse_deploy(actor, program, version, env, supersede)
        if (answer := self.call(actor, "deployment", "CreateDeployment", request, predicted)) is not None:
            self.model.deploy(answer.deployment.name, actor, program, version, env, strategy)

    @rule(data=st.data(), canary=st.booleans())
    def deploy_gradually(self, data: st.DataObject, canary: bool) -> None:
        """A canary or blue-green deployment where no approval holds it: one in progress, to promote."""
        program = data.draw(st.sampled_from(self.programs))
        version = data.draw(st.sampled_from(list(self.model.versions[program])))
        env = data.draw(st.sampled_from(("development", "m-free", "m-locked")))
        strategy = Strategy("canary", (10, 50, 90)) if canary else Strategy("blue_green")
        self._deploy(ADMIN, program, version, env, strategy, supersede=True)

    @rule(data=st.data(), strategy=strategies())
    def deploy_for_approval(self, data: st.DataObject, strategy: Strategy | None) -> None:
        """A deployment that waits for approvals: m-gated, of a version accurate enough if there is one."""
        program = data.draw(st.sampled_from(self.programs))
        accurate = [v for v, accuracy in self.model.versions[program].items() if accuracy >= 0.85]
        version = data.draw(st.sampled_from(accurate or list(self.model.versions[program])))
        actor = data.draw(st.sampled_from((ADMIN, ADMIN, ADMIN, self.bob)))
        self._deploy(actor, program, version, "m-gated", strategy, supersede=True)

    def _any(self, *states: str) -> bool:
        return any(d.state in states for d in self.model.deployments.values())

    def _pick(self, data: st.DataObject, *states: str) -> str:
        """A deployment, mostly one in `states` (else one that shapes its target): where a call does something."""
        names = list(self.model.deployments)  # in creation order: ids are random, replays must pick the same
        if states:
            likely = [n for n in names if self.model.deployments[n].state in states]
        else:
            shaping = {t.deployment for t in self.model.targets.values()}
            likely = [n for n in names if n in shaping]
        mostly = bool(likely) and data.draw(st.integers(0, 3)) > 0
        return data.draw(st.sampled_from(likely if mostly else names))

    @precondition(lambda self: self._any(PENDING))
    @rule(data=st.data(), reject=st.sampled_from((False, False, False, True)))
    def approve(self, data: st.DataObject, reject: bool) -> None:
        d = self.model.deployments[self._pick(data, PENDING)]
        actor = data.draw(st.sampled_from((ADMIN, APPROVER, APPROVER, self.bob)))
        request = dpb.ApproveDeploymentRequest(name=d.name, reject=reject, comment="model")
        if (
            self.call(actor, "deployment", "ApproveDeployment", request, self.model.refuse_approve(actor, d))
            is not None
        ):
            self.model.approve(actor, d, reject)

    @precondition(lambda self: self._any(IN_PROGRESS))
    @rule(data=st.data(), full=st.booleans())
    def promote(self, data: st.DataObject, full: bool) -> None:
        d = self.model.deployments[self._pick(data, IN_PROGRESS)]
        actor = data.draw(st.sampled_from((ADMIN, ADMIN, ADMIN, self.bob)))
        request = dpb.PromoteDeploymentRequest(name=d.name, full=full, reason="model")
        if (
            self.call(
                actor,
                "deployment",
                "PromoteDeployment",
                request,
                self.model.refuse_change(actor, d, "promote"),
            )
            is not None
        ):
            self.model.promote(d, full)

    def _stepping(self) -> list[str]:
        return [
            n
            for n, d in self.model.deployments.items()
            if d.state == IN_PROGRESS and d.strategy.kind == "canary" and d.step + 1 < len(d.strategy.weights)
        ]

    @precondition(lambda self: bool(self._stepping()))
    @rule(data=st.data())
    def promote_one_step(self, data: st.DataObject) -> None:
        """The next weight of a canary that has one: the transition a canary makes most."""
        d = self.model.deployments[data.draw(st.sampled_from(self._stepping()))]
        request = dpb.PromoteDeploymentRequest(name=d.name, reason="model")
        if self.call(ADMIN, "deployment", "PromoteDeployment", request, None) is not None:
            self.model.promote(d, full=False)

    @precondition(lambda self: self._any(*ACTIVE))
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        d = self.model.deployments[self._pick(data, *ACTIVE)]
        actor = data.draw(st.sampled_from((ADMIN, ADMIN, ADMIN, self.bob)))
        request = dpb.AbortDeploymentRequest(name=d.name, reason="model")
        if (
            self.call(
                actor, "deployment", "AbortDeployment", request, self.model.refuse_change(actor, d, "abort")
            )
            is not None
        ):
            self.model.abort(d)

    @precondition(lambda self: bool(self.model.deployments))
    @rule(data=st.data())
    def rollback(self, data: st.DataObject) -> None:
        d = self.model.deployments[self._pick(data)]
        actor = data.draw(st.sampled_from((ADMIN, ADMIN, ADMIN, self.bob)))
        request = dpb.RollbackDeploymentRequest(name=d.name, reason="model")
        predicted = self.model.refuse_change(actor, d, "rollback")
        if (answer := self.call(actor, "deployment", "RollbackDeployment", request, predicted)) is not None:
            self.model.rollback(actor, d, answer.deployment.name)

    @rule(action=st.sampled_from(sorted(ACTIONS)), data=st.data())
    def grant(self, action: str, data: st.DataObject) -> None:
        resource = data.draw(st.sampled_from((*self.programs, self.programs[0][:-1] + "*", "*")))
        request = apb.GrantPermissionRequest(
            principal=f"principals/{self.bob}", action=ACTIONS[action], resource=resource
        )
        answer = self.call(ADMIN, "access", "GrantPermission", request, None)
        existing = self.model.granted(action, resource)
        assert answer.created == (existing is None) and answer.permission.name == (
            existing or answer.permission.name
        )
        self.model.grants[answer.permission.name] = (action, resource)
        self._permissions_agree()

    @precondition(lambda self: bool(self.model.grants or self.revoked))
    @rule(data=st.data())
    def revoke(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from([*self.model.grants, *self.revoked]))  # in the order granted
        predicted = None if name in self.model.grants else MISSING
        request = apb.RevokePermissionRequest(name=name)
        if self.call(ADMIN, "access", "RevokePermission", request, predicted) is not None:
            del self.model.grants[name]
            self.revoked.append(name)
        self._permissions_agree()

    @precondition(lambda self: bool(self.model.deployments))
    @rule(data=st.data())
    def bob_reads(self, data: st.DataObject) -> None:
        d = self.model.deployments[self._pick(data)]
        predicted = None if self.model.allows(self.bob, "read", d.program) else "PERMISSION_DENIED"
        request = dpb.GetDeploymentRequest(name=d.name)
        if (answer := self.call(self.bob, "deployment", "GetDeployment", request, predicted)) is not None:
            assert (
                dpb.DeploymentState.Name(answer.deployment.state).removeprefix("DEPLOYMENT_STATE_") == d.state
            )

    # -- what must hold after every step ----------------------------------------------------------

    @invariant()
    def the_server_agrees_with_the_model(self) -> None:
        deploy = dpb_grpc.DeploymentServiceStub(self.channels[ADMIN])
        for program in self.programs:
            listed = deploy.ListDeployments(dpb.ListDeploymentsRequest(program=program, page_size=1000))
            got = {
                d.name: (
                    dpb.DeploymentState.Name(d.state).removeprefix("DEPLOYMENT_STATE_"),
                    d.weight_percent,
                    d.current_step,
                )
                for d in listed.deployments
            }
            want = {
                d.name: (d.state, d.weight, d.current_step)
                for d in self.model.deployments.values()
                if d.program == program
            }
            assert got == want, (
                f"{program}'s deployments (state, weight, step): the server's {got}, the model's {want}"
            )
        # Every target of this example's programs at once: a snapshot of the targets they select.
        request = dpb.WatchTargetsRequest(selectors=[dpb.TargetSelector(program=self.programs[0][:-1] + "*")])
        stream = deploy.WatchTargets(request, timeout=30)
        try:
            snapshot = next(stream).snapshot
        finally:
            stream.cancel()
        targets = {
            (t.program, t.environment): (
                t.stable.version or None,
                t.candidate.version or None,
                t.candidate.weight_percent,
                t.deployment,
            )
            for t in snapshot.targets
        }
        modelled = {k: (t.stable, t.candidate, t.weight, t.deployment) for k, t in self.model.targets.items()}
        assert targets == modelled, (
            f"targets (stable, candidate, weight, deployment): the server's {targets}, the model's {modelled}"
        )
        access = apb_grpc.AccessServiceStub(self.channels[ADMIN])
        principal = f"principals/{self.bob}"
        listed_grants = access.ListPermissions(
            apb.ListPermissionsRequest(principal=principal, page_size=1000)
        )
        grants = {
            g.name: (apb.Action.Name(g.action).removeprefix("ACTION_").lower(), g.resource)
            for g in listed_grants.permissions
        }
        assert grants == self.model.grants, f"{principal}'s grants: the server's {grants}, the model's"

    def _permissions_agree(self) -> None:
        """What the grants allow, by the server's own check, after each change to them."""
        access = apb_grpc.AccessServiceStub(self.channels[ADMIN])
        for program in self.programs:
            for action in ("read", "deploy", "approve", "rollback"):
                check = apb.CheckPermissionRequest(
                    principal=f"principals/{self.bob}", action=ACTIONS[action], resource=program
                )
                allowed = access.CheckPermission(check).allowed
                assert allowed == self.model.allows(self.bob, action, program), (self.bob, action, program)


def _setup(server: ServerProcess) -> dict[str, grpc.Channel]:
    """The model's environments, the approver and the signature every version implements."""
    admin = server.channel()
    deploy = dpb_grpc.DeploymentServiceStub(admin)
    for position, (name, policy) in enumerate(POLICIES.items(), start=10):
        if name != "development":
            environment = environment_proto(name, position, policy)
            deploy.UpdateEnvironment(
                dpb.UpdateEnvironmentRequest(environment=environment, allow_missing=True)
            )
    access = apb_grpc.AccessServiceStub(admin)
    access.CreatePrincipal(apb.CreatePrincipalRequest(principal_id=APPROVER, principal=apb.Principal()))
    access.GrantPermission(
        apb.GrantPermissionRequest(
            principal=f"principals/{APPROVER}", action=apb.ACTION_APPROVE, resource="*"
        )
    )
    secret = access.CreateToken(apb.CreateTokenRequest(parent=f"principals/{APPROVER}")).secret
    pb_grpc.RegistryServiceStub(admin).RegisterSignature(
        pb.RegisterSignatureRequest(signature="msig", version="1.0.0", spec=spec_proto())
    )
    return {ADMIN: admin, APPROVER: server.channel(secret)}


@pytest.mark.timeout(int(SECONDS * 3 + 120))
def test_deployments_approvals_and_grants_do_what_the_model_predicts(tmp_path: Path, tally: Tally) -> None:
    server = ServerProcess(f"sqlite:///{tmp_path / 'model.db'}", tmp_path / "server.log").start()
    world = World(server, {})
    try:
        world.channels = _setup(server)
        DeploymentMachine.world = world
        common = settings(
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            # Shrinking replays a failing run step by step over the network for minutes; the failing
            # run's own steps are printed whole instead.
            phases=(Phase.explicit, Phase.reuse, Phase.generate),
        )
        if soaking():  # random examples, batch after batch, until the share is spent
            began = time.monotonic()
            while time.monotonic() - began < SECONDS:
                run_state_machine_as_test(DeploymentMachine, settings=settings(common, max_examples=10))
        else:  # the same examples on every run: a CI failure is a failure on a laptop too
            run_state_machine_as_test(
                DeploymentMachine, settings=settings(common, max_examples=EXAMPLES, derandomize=True)
            )
    finally:
        for channel in world.channels.values():
            channel.close()
        server.stop()
    tally.operations += world.calls
    tally.codes.update(world.codes)
    # The examples reached every transition, not only refusals.
    for method in MUTATIONS:
        assert world.outcomes[(method, "OK")] > 0, f"no {method} succeeded: {sorted(world.outcomes.items())}"

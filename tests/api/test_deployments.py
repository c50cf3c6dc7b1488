"""Deployments over a real channel, on SQLite and Postgres: each strategy end to end, approvals,
promotion order, auto-deploy, rollback, supersede, yanked versions, concurrent deployers."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import field_mask_pb2

from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import access_pb2_grpc as apb_grpc
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from tests.api.conftest import Running, register_signature
from tests.calls import canary_strategy, code_of
from tests.eventually import until as _eventually
from tests.factories import dspy_state

PROGRAM = "sentiment"


async def _register(server: Running, version: str, accuracy: float = 0.9) -> None:
    await server.registry.RegisterProgram(
        pb.RegisterProgramRequest(
            spec=pb.ProgramVersionSpec(
                program=PROGRAM,
                version=version,
                signature="signatures/sig/versions/1.0.0",
                performance={"accuracy": accuracy},
            ),
            artifact=dspy_state(f"v{version}"),
        )
    )


@pytest.fixture
async def ready(server: Running) -> Running:
    await register_signature(server.registry, name="sig")
    await _register(server, "1.0.0")
    await _register(server, "1.1.0", accuracy=0.93)
    return server


async def _served(server: Running, environment: str) -> str:
    response = await server.registry.GetProgramVersion(
        pb.GetProgramVersionRequest(name=f"programs/{PROGRAM}", environment=environment)
    )
    return str(response.program_version.version)


async def test_registration_auto_deploys_to_development(ready: Running) -> None:
    assert await _served(ready, "development") == "1.1.0"
    listed = await ready.deployments.ListDeployments(
        dpb.ListDeploymentsRequest(program=PROGRAM, environment="development")
    )
    assert [d.version for d in listed.deployments] == ["1.1.0", "1.0.0"]
    assert all(d.auto_deployed and d.state == dpb.DEPLOYMENT_STATE_SUCCEEDED for d in listed.deployments)
    in_dev = await ready.registry.ListPrograms(pb.ListProgramsRequest(environment="development"))
    assert [p.name for p in in_dev.programs] == [f"programs/{PROGRAM}"]
    assert (await ready.registry.ListPrograms(pb.ListProgramsRequest(environment="staging"))).total_size == 0


async def test_replace_blue_green_and_canary_end_to_end(ready: Running) -> None:
    deploy = ready.deployments
    replace = await deploy.CreateDeployment(
        dpb.CreateDeploymentRequest(
            program=PROGRAM,
            version="1.0.0",
            environment="staging",
            strategy=dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE),
        )
    )
    assert (
        replace.deployment.state == dpb.DEPLOYMENT_STATE_SUCCEEDED
        and await _served(ready, "staging") == "1.0.0"
    )
    green = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_BLUE_GREEN)
    green.blue_green.auto_promote = True
    blue_green = await deploy.CreateDeployment(
        dpb.CreateDeploymentRequest(program=PROGRAM, version="1.1.0", environment="staging", strategy=green)
    )

    async def switched() -> bool:
        got = await deploy.GetDeployment(dpb.GetDeploymentRequest(name=blue_green.deployment.name))
        return bool(got.deployment.state == dpb.DEPLOYMENT_STATE_SUCCEEDED)

    await _eventually(switched)
    assert await _served(ready, "staging") == "1.1.0"
    await _register(ready, "1.2.0", accuracy=0.95)
    canary = await deploy.CreateDeployment(
        dpb.CreateDeploymentRequest(
            program=PROGRAM,
            version="1.2.0",
            environment="staging",
            strategy=canary_strategy((10, 0.2), (50, 0.2)),
        )
    )
    status = await deploy.GetDeploymentStatus(
        dpb.GetDeploymentStatusRequest(program=PROGRAM, environment="staging")
    )
    assert status.target.candidate.version == "1.2.0" and status.target.candidate.weight_percent == 10
    assert status.target.stable.version == "1.1.0"

    async def promoted() -> bool:
        got = await deploy.GetDeployment(dpb.GetDeploymentRequest(name=canary.deployment.name))
        return bool(got.deployment.state == dpb.DEPLOYMENT_STATE_SUCCEEDED)

    await _eventually(promoted)
    done = (await deploy.GetDeployment(dpb.GetDeploymentRequest(name=canary.deployment.name))).deployment
    entries = [(t.kind, t.state, t.step) for t in done.timeline]
    assert entries == [
        (dpb.DEPLOYMENT_EVENT_KIND_CREATED, dpb.DEPLOYMENT_STATE_IN_PROGRESS, 1),  # and started: step 1
        (dpb.DEPLOYMENT_EVENT_KIND_STEP_ADVANCED, dpb.DEPLOYMENT_STATE_IN_PROGRESS, 2),
        (dpb.DEPLOYMENT_EVENT_KIND_PROMOTED, dpb.DEPLOYMENT_STATE_IN_PROGRESS, 2),
        (dpb.DEPLOYMENT_EVENT_KIND_SUCCEEDED, dpb.DEPLOYMENT_STATE_SUCCEEDED, 2),
    ]
    assert done.timeline[0].actor == "principals/admin" and done.current_step == done.step_count == 2
    assert all(t.actor == "controller" for t in done.timeline[1:])
    assert await _served(ready, "staging") == "1.2.0"
    # Each step is one revision whose events carry the target's weight, in order.
    async with ready.app.store.read() as tx:
        weights = [
            e.data["weight_percent"]
            for e in await tx.events_after(canary.deployment.revision - 1)
            if e.kind == "target.updated"
        ]
    assert weights == [10, 50, 0]  # 0: promoted, the candidate is gone


async def test_approvals_promotion_order_and_the_requester(ready: Running) -> None:
    deploy = ready.deployments
    early = dpb.CreateDeploymentRequest(program=PROGRAM, version="1.1.0", environment="production")
    assert (
        await code_of(deploy.CreateDeployment(early)) == grpc.StatusCode.FAILED_PRECONDITION
    )  # not in staging yet
    await deploy.CreateDeployment(
        dpb.CreateDeploymentRequest(
            program=PROGRAM,
            version="1.1.0",
            environment="staging",
            strategy=dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE),
        )
    )
    pending = (await deploy.CreateDeployment(early)).deployment
    assert pending.state == dpb.DEPLOYMENT_STATE_PENDING_APPROVAL and pending.required_approvals == 1
    assert pending.current_step == 0  # nothing applied yet
    [created] = pending.timeline
    assert (created.kind, created.state, created.step) == (
        dpb.DEPLOYMENT_EVENT_KIND_CREATED,
        dpb.DEPLOYMENT_STATE_PENDING_APPROVAL,
        0,
    )
    mine = dpb.ApproveDeploymentRequest(name=pending.name)
    assert (
        await code_of(deploy.ApproveDeployment(mine)) == grpc.StatusCode.FAILED_PRECONDITION
    )  # self-approval
    admin = apb_grpc.AccessServiceStub(ready.channel)
    await admin.CreatePrincipal(apb.CreatePrincipalRequest(principal_id="carol", principal=apb.Principal()))
    await admin.GrantPermission(
        apb.GrantPermissionRequest(principal="principals/carol", action=apb.ACTION_APPROVE, resource=PROGRAM)
    )
    secret = (await admin.CreateToken(apb.CreateTokenRequest(parent="principals/carol"))).secret
    channel = ready.channel_for(secret)
    try:
        approved = await dpb_grpc.DeploymentServiceStub(channel).ApproveDeployment(
            dpb.ApproveDeploymentRequest(name=pending.name, comment="looks good")
        )
    finally:
        await channel.close(None)
    assert approved.deployment.state == dpb.DEPLOYMENT_STATE_IN_PROGRESS  # production's default: blue-green
    assert [a.principal for a in approved.deployment.approvals] == ["principals/carol"]
    # The approval started the blue-green: its entry holds the state after it, the green staged.
    assert approved.deployment.current_step == 1 and approved.deployment.weight_percent == 0
    entry = approved.deployment.timeline[-1]
    assert (entry.kind, entry.state, entry.step, entry.actor, entry.reason) == (
        dpb.DEPLOYMENT_EVENT_KIND_APPROVED,
        dpb.DEPLOYMENT_STATE_IN_PROGRESS,
        1,
        "principals/carol",
        "looks good",
    )
    again = dpb.ApproveDeploymentRequest(name=pending.name)
    assert (
        await code_of(deploy.ApproveDeployment(again)) == grpc.StatusCode.FAILED_PRECONDITION
    )  # not pending


async def test_validation_yanked_versions_and_unknown_environments(ready: Running) -> None:
    deploy = ready.deployments
    await _register(ready, "1.3.0", accuracy=0.80)  # below production's 0.85, but staging does not care
    to_staging = dpb.CreateDeploymentRequest(
        program=PROGRAM, version="1.3.0", environment="staging", strategy=canary_strategy((10, 60))
    )
    await deploy.CreateDeployment(to_staging)
    await deploy.AbortDeployment(
        dpb.AbortDeploymentRequest(
            name=(
                await deploy.ListDeployments(
                    dpb.ListDeploymentsRequest(program=PROGRAM, environment="staging")
                )
            )
            .deployments[0]
            .name
        )
    )
    await ready.registry.YankProgramVersion(
        pb.YankProgramVersionRequest(name=f"programs/{PROGRAM}/versions/1.3.0", reason="bad demos")
    )
    assert await code_of(deploy.CreateDeployment(to_staging)) == grpc.StatusCode.FAILED_PRECONDITION
    nowhere = dpb.CreateDeploymentRequest(program=PROGRAM, version="1.0.0", environment="nowhere")
    assert await code_of(deploy.CreateDeployment(nowhere)) == grpc.StatusCode.NOT_FOUND
    missing = dpb.CreateDeploymentRequest(program=PROGRAM, version="9.9.9", environment="staging")
    assert await code_of(deploy.CreateDeployment(missing)) == grpc.StatusCode.NOT_FOUND


async def test_one_deployment_in_progress_per_target_unless_superseded(ready: Running) -> None:
    deploy = ready.deployments
    slow = canary_strategy((10, 60), (50, 60))
    first = await deploy.CreateDeployment(
        dpb.CreateDeploymentRequest(program=PROGRAM, version="1.0.0", environment="staging", strategy=slow)
    )
    second = dpb.CreateDeploymentRequest(
        program=PROGRAM, version="1.1.0", environment="staging", strategy=slow
    )
    assert await code_of(deploy.CreateDeployment(second)) == grpc.StatusCode.FAILED_PRECONDITION
    second.supersede = True
    replacing = await deploy.CreateDeployment(second)
    old = (await deploy.GetDeployment(dpb.GetDeploymentRequest(name=first.deployment.name))).deployment
    assert old.state == dpb.DEPLOYMENT_STATE_SUPERSEDED and old.superseded_by == replacing.deployment.name
    status = await deploy.GetDeploymentStatus(
        dpb.GetDeploymentStatusRequest(program=PROGRAM, environment="staging")
    )
    assert status.target.candidate.version == "1.1.0"
    full = await deploy.PromoteDeployment(
        dpb.PromoteDeploymentRequest(name=replacing.deployment.name, full=True)
    )
    assert (
        full.deployment.state == dpb.DEPLOYMENT_STATE_SUCCEEDED and await _served(ready, "staging") == "1.1.0"
    )


async def test_rollback_as_the_seed_does_it(ready: Running) -> None:
    deploy = ready.deployments
    replace = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE)
    first = await deploy.CreateDeployment(
        dpb.CreateDeploymentRequest(program=PROGRAM, version="1.0.0", environment="staging", strategy=replace)
    )
    nothing = dpb.RollbackDeploymentRequest(name=first.deployment.name, reason="try")
    assert (
        await code_of(deploy.RollbackDeployment(nothing)) == grpc.StatusCode.FAILED_PRECONDITION
    )  # no previous
    second = await deploy.CreateDeployment(
        dpb.CreateDeploymentRequest(program=PROGRAM, version="1.1.0", environment="staging", strategy=replace)
    )
    rolled = await deploy.RollbackDeployment(
        dpb.RollbackDeploymentRequest(
            name=second.deployment.name, reason="Error rate 0.12 exceeds threshold 0.05"
        )
    )
    assert rolled.rolled_back.state == dpb.DEPLOYMENT_STATE_ROLLED_BACK
    assert rolled.rolled_back.rollback_deployment == rolled.deployment.name
    assert rolled.deployment.rolled_back_deployment == second.deployment.name
    assert rolled.deployment.version == "1.0.0" and await _served(ready, "staging") == "1.0.0"
    # Rollback disabled: refused.
    env = dpb.Environment(name="environments/staging")
    env.policy.rollback_enabled = False
    await deploy.UpdateEnvironment(
        dpb.UpdateEnvironmentRequest(
            environment=env, update_mask=field_mask_pb2.FieldMask(paths=["policy.rollback_enabled"])
        )
    )
    third = await deploy.CreateDeployment(
        dpb.CreateDeploymentRequest(program=PROGRAM, version="1.1.0", environment="staging", strategy=replace)
    )
    refused = dpb.RollbackDeploymentRequest(name=third.deployment.name)
    assert await code_of(deploy.RollbackDeployment(refused)) == grpc.StatusCode.FAILED_PRECONDITION


async def test_of_sixteen_deployers_with_one_expected_etag_exactly_one_wins(ready: Running) -> None:
    deploy = ready.deployments
    status = await deploy.GetDeploymentStatus(
        dpb.GetDeploymentStatusRequest(program=PROGRAM, environment="development")
    )
    etag = status.target.etag
    replace = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE)
    calls = [
        deploy.CreateDeployment(
            dpb.CreateDeploymentRequest(
                program=PROGRAM,
                version="1.0.0",
                environment="development",
                strategy=replace,
                expected_target_etag=etag,
            )
        )
        for _ in range(16)
    ]
    codes = await asyncio.gather(*(code_of(c) for c in calls))
    assert sorted(c.name for c in codes) == ["ABORTED"] * 15 + ["OK"]
    unguarded = [
        deploy.CreateDeployment(
            dpb.CreateDeploymentRequest(
                program=PROGRAM, version="1.1.0", environment="development", strategy=replace
            )
        )
        for _ in range(4)
    ]
    assert {c.name for c in await asyncio.gather(*(code_of(c) for c in unguarded))} == {
        "OK"
    }  # they serialize


async def test_deploy_rollback_and_approve_need_their_own_actions(ready: Running) -> None:
    deploy = ready.deployments
    slow = canary_strategy((10, 60), (50, 60))
    d = (
        await deploy.CreateDeployment(
            dpb.CreateDeploymentRequest(
                program=PROGRAM, version="1.0.0", environment="staging", strategy=slow
            )
        )
    ).deployment
    admin = apb_grpc.AccessServiceStub(ready.channel)
    await admin.CreatePrincipal(apb.CreatePrincipalRequest(principal_id="reader", principal=apb.Principal()))
    await admin.GrantPermission(
        apb.GrantPermissionRequest(principal="principals/reader", action=apb.ACTION_READ, resource=PROGRAM)
    )
    secret = (await admin.CreateToken(apb.CreateTokenRequest(parent="principals/reader"))).secret
    channel = ready.channel_for(secret)
    try:
        reader = dpb_grpc.DeploymentServiceStub(channel)
        assert (await reader.GetDeployment(dpb.GetDeploymentRequest(name=d.name))).deployment.name == d.name
        denied = grpc.StatusCode.PERMISSION_DENIED
        assert await code_of(reader.PromoteDeployment(dpb.PromoteDeploymentRequest(name=d.name))) == denied
        assert await code_of(reader.AbortDeployment(dpb.AbortDeploymentRequest(name=d.name))) == denied
        assert await code_of(reader.RollbackDeployment(dpb.RollbackDeploymentRequest(name=d.name))) == denied
        assert await code_of(reader.ApproveDeployment(dpb.ApproveDeploymentRequest(name=d.name))) == denied
        create = dpb.CreateDeploymentRequest(program=PROGRAM, version="1.1.0", environment="staging")
        assert await code_of(reader.CreateDeployment(create)) == denied
    finally:
        await channel.close(None)
    listed = await admin.ListAuditEvents(
        apb.ListAuditEventsRequest(principal="principals/reader", outcomes=[apb.AUDIT_OUTCOME_DENIED])
    )
    assert listed.total_size == 5


async def test_a_refused_auto_deploy_leaves_the_registration_standing(ready: Running) -> None:
    deploy = ready.deployments
    env = dpb.Environment(name="environments/development")
    env.policy.validation_required = True
    env.policy.validation.min_metrics["accuracy"] = 0.99
    await deploy.UpdateEnvironment(
        dpb.UpdateEnvironmentRequest(
            environment=env,
            update_mask=field_mask_pb2.FieldMask(
                paths=["policy.validation_required", "policy.validation.min_metrics"]
            ),
        )
    )
    await _register(ready, "1.5.0", accuracy=0.5)  # registered, though development refuses it
    got = await ready.registry.GetProgramVersion(
        pb.GetProgramVersionRequest(name=f"programs/{PROGRAM}/versions/1.5.0")
    )
    assert got.program_version.version == "1.5.0"
    assert await _served(ready, "development") == "1.1.0"


async def test_review_cases_rollbacks_after_aborts_and_of_rollbacks(ready: Running) -> None:
    deploy = ready.deployments
    replace = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE)
    first = (
        await deploy.CreateDeployment(
            dpb.CreateDeploymentRequest(
                program=PROGRAM, version="1.0.0", environment="staging", strategy=replace
            )
        )
    ).deployment
    second = (
        await deploy.CreateDeployment(
            dpb.CreateDeploymentRequest(
                program=PROGRAM, version="1.1.0", environment="staging", strategy=replace
            )
        )
    ).deployment
    canary = (
        await deploy.CreateDeployment(
            dpb.CreateDeploymentRequest(
                program=PROGRAM,
                version="1.0.0",
                environment="staging",
                strategy=canary_strategy((10, 60), (50, 60)),
            )
        )
    ).deployment
    await deploy.AbortDeployment(dpb.AbortDeploymentRequest(name=canary.name, reason="changed my mind"))
    # The aborted canary handed the target back: the stable deployment can still be rolled back.
    rolled = await deploy.RollbackDeployment(dpb.RollbackDeploymentRequest(name=second.name, reason="worse"))
    assert rolled.deployment.version == "1.0.0" and await _served(ready, "staging") == "1.0.0"
    # Rolling back the rollback returns to what was stable before it, 1.1.0 — never a candidate.
    again = await deploy.RollbackDeployment(dpb.RollbackDeploymentRequest(name=rolled.deployment.name))
    assert again.deployment.version == "1.1.0" and await _served(ready, "staging") == "1.1.0"
    assert first.state == dpb.DEPLOYMENT_STATE_SUCCEEDED


async def test_review_cases_bad_strategies_masks_and_stale_approvals(ready: Running) -> None:
    deploy = ready.deployments
    forever = canary_strategy((10, 1e11))
    huge = dpb.CreateDeploymentRequest(
        program=PROGRAM, version="1.0.0", environment="staging", strategy=forever
    )
    assert await code_of(deploy.CreateDeployment(huge)) == grpc.StatusCode.INVALID_ARGUMENT
    kindless = dpb.DeploymentStrategy()
    kindless.canary.steps.add(weight_percent=10)
    vague = dpb.CreateDeploymentRequest(
        program=PROGRAM, version="1.0.0", environment="staging", strategy=kindless
    )
    assert await code_of(deploy.CreateDeployment(vague)) == grpc.StatusCode.INVALID_ARGUMENT
    through_list = dpb.UpdateEnvironmentRequest(
        environment=dpb.Environment(name="environments/staging"),
        update_mask=field_mask_pb2.FieldMask(paths=["policy.default_strategy.canary.steps.weight_percent"]),
    )
    assert await code_of(deploy.UpdateEnvironment(through_list)) == grpc.StatusCode.INVALID_ARGUMENT
    # Production, pending approval; the version is yanked meanwhile: the approval is refused.
    replace = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE)
    await deploy.CreateDeployment(
        dpb.CreateDeploymentRequest(program=PROGRAM, version="1.1.0", environment="staging", strategy=replace)
    )
    first = (
        await deploy.CreateDeployment(
            dpb.CreateDeploymentRequest(
                program=PROGRAM, version="1.1.0", environment="production", strategy=replace
            )
        )
    ).deployment
    seen = await deploy.GetDeploymentStatus(
        dpb.GetDeploymentStatusRequest(program=PROGRAM, environment="production")
    )
    guarded = dpb.CreateDeploymentRequest(
        program=PROGRAM,
        version="1.1.0",
        environment="production",
        strategy=replace,
        supersede=True,
        expected_target_etag=seen.target.etag,
    )
    pending = (await deploy.CreateDeployment(guarded)).deployment
    assert pending.state == dpb.DEPLOYMENT_STATE_PENDING_APPROVAL and first.name != pending.name
    # A pending deployment moves the target's etag too: the same expectation now loses.
    assert await code_of(deploy.CreateDeployment(guarded)) == grpc.StatusCode.ABORTED
    await ready.registry.YankProgramVersion(
        pb.YankProgramVersionRequest(name=f"programs/{PROGRAM}/versions/1.1.0", reason="found a bug")
    )
    admin = apb_grpc.AccessServiceStub(ready.channel)
    await admin.CreatePrincipal(apb.CreatePrincipalRequest(principal_id="dana", principal=apb.Principal()))
    await admin.GrantPermission(
        apb.GrantPermissionRequest(principal="principals/dana", action=apb.ACTION_APPROVE, resource="*")
    )
    channel = ready.channel_for(
        (await admin.CreateToken(apb.CreateTokenRequest(parent="principals/dana"))).secret
    )
    try:
        approve = dpb_grpc.DeploymentServiceStub(channel).ApproveDeployment(
            dpb.ApproveDeploymentRequest(name=pending.name)
        )
        assert await code_of(approve) == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await channel.close(None)


async def test_what_an_environment_serves_is_read_anew_after_each_change_of_its_target(
    ready: Running,
) -> None:
    """The by-environment read is cached (the serving path): every change of the target drops it."""
    assert await _served(ready, "development") == "1.1.0"
    assert await _served(ready, "development") == "1.1.0"  # now from the cache
    await _register(ready, "1.2.0")  # auto-deploys
    assert await _served(ready, "development") == "1.2.0"
    back = dpb.CreateDeploymentRequest(
        program=PROGRAM,
        version="1.0.0",
        environment="development",
        strategy=dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE),
    )
    await ready.deployments.CreateDeployment(back)
    assert await _served(ready, "development") == "1.0.0"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _served(ready, "staging")  # serves nothing yet: NOT_FOUND, and nothing cached
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    await ready.deployments.CreateDeployment(
        dpb.CreateDeploymentRequest(
            program=PROGRAM,
            version="1.1.0",
            environment="staging",
            strategy=dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE),
        )
    )
    assert await _served(ready, "staging") == "1.1.0"


async def test_the_serving_path_sees_every_change_of_its_target_at_once(ready: Running) -> None:
    """GetProgramVersion by environment answers from a cache of encoded answers: a deploy, a rollback,
    a new version auto-deployed and a yank must each show in the very next read through the same
    server, cached answer or not (each read comes twice, so the second is a cache hit)."""
    deploy = ready.deployments
    replace = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE)

    async def served_twice(environment: str) -> pb.GetProgramVersionResponse:
        request = pb.GetProgramVersionRequest(name=f"programs/{PROGRAM}", environment=environment)
        first: pb.GetProgramVersionResponse = await ready.registry.GetProgramVersion(request)
        assert await ready.registry.GetProgramVersion(request) == first
        return first

    async def deploy_to_staging(version: str) -> dpb.Deployment:
        created: dpb.CreateDeploymentResponse = await deploy.CreateDeployment(
            dpb.CreateDeploymentRequest(
                program=PROGRAM, version=version, environment="staging", strategy=replace
            )
        )
        return created.deployment

    await deploy_to_staging("1.0.0")
    assert (await served_twice("staging")).program_version.version == "1.0.0"
    second = await deploy_to_staging("1.1.0")
    assert (await served_twice("staging")).program_version.version == "1.1.0"
    await deploy.RollbackDeployment(dpb.RollbackDeploymentRequest(name=second.name, reason="regressed"))
    assert (await served_twice("staging")).program_version.version == "1.0.0"
    assert (await served_twice("development")).program_version.version == "1.1.0"
    await _register(ready, "1.2.0")  # auto-deployed to development
    latest = await served_twice("development")
    assert latest.program_version.version == "1.2.0"
    explicit = await ready.registry.GetProgramVersion(
        pb.GetProgramVersionRequest(name=f"programs/{PROGRAM}/versions/1.2.0")
    )
    assert latest == explicit  # the same answer, field for field
    yanked = await ready.registry.YankProgramVersion(
        pb.YankProgramVersionRequest(name=f"programs/{PROGRAM}/versions/1.0.0", reason="bad")
    )
    assert yanked.program_version.yanked
    assert (await served_twice("staging")).program_version == yanked.program_version

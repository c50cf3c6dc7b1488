"""Which versions are deployed where (GetProgram), required checks and capacity, over a real channel
and through the client, on SQLite and Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2

from dspy_registry.client import FailedPreconditionError, InvalidArgumentError, Registry
from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import access_pb2_grpc as apb_grpc
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from tests.api.conftest import Running, details, register_signature, start, violations
from tests.calls import canary_strategy, code_of, refusal
from tests.factories import dspy_state

PROGRAM = "triage"


async def _register(server: Running, version: str, accuracy: float = 0.9, **metadata: Any) -> None:
    spec = pb.ProgramVersionSpec(
        program=PROGRAM,
        version=version,
        signature="signatures/sig/versions/1.0.0",
        performance={"accuracy": accuracy},
    )
    if metadata:
        spec.metadata.update(metadata)
    await server.registry.RegisterProgram(pb.RegisterProgramRequest(spec=spec, artifact=dspy_state(version)))


@pytest.fixture
async def rest_server(database_url: str) -> AsyncIterator[Running]:
    running = await start(database_url, http_listen="127.0.0.1:0")
    await register_signature(running.registry, name="sig")
    await _register(running, "1.0.0")
    await _register(running, "1.1.0", accuracy=0.93)
    yield running
    await running.channel.close(None)
    await running.app.stop(grace=0)


async def test_deployed_where_after_a_canary_step(rest_server: Running) -> None:
    server, deploy = rest_server, rest_server.deployments
    replace = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE)
    await deploy.CreateDeployment(
        dpb.CreateDeploymentRequest(program=PROGRAM, version="1.0.0", environment="staging", strategy=replace)
    )
    # A canary held at its first step (a pause of an hour): 1.1.0 takes 10 % of staging.
    canary = await deploy.CreateDeployment(
        dpb.CreateDeploymentRequest(
            program=PROGRAM,
            version="1.1.0",
            environment="staging",
            strategy=canary_strategy((10, 3600), (50, 3600)),
            supersede=True,
        )
    )

    program = (await server.registry.GetProgram(pb.GetProgramRequest(name=f"programs/{PROGRAM}"))).program
    where = {e.environment: e for e in program.environments}
    assert [e.environment for e in program.environments] == ["development", "staging", "production"]
    development, staging, production = where["development"], where["staging"], where["production"]
    assert development.target.stable.version == "1.1.0"  # auto-deployed, done
    assert not development.target.HasField("candidate") and not development.HasField("deployment")
    assert staging.target.stable.version == "1.0.0"
    assert (staging.target.candidate.version, staging.target.candidate.weight_percent) == ("1.1.0", 10)
    assert staging.deployment.name == canary.deployment.name
    assert staging.deployment.state == dpb.DEPLOYMENT_STATE_IN_PROGRESS
    assert (staging.deployment.current_step, staging.deployment.step_count) == (1, 2)
    assert staging.update_time.ToDatetime() >= staging.target.update_time.ToDatetime()
    assert not production.HasField("target") and not production.HasField("deployment")
    assert not production.HasField("update_time")
    # ListPrograms stays a summary.
    listed = await server.registry.ListPrograms(pb.ListProgramsRequest())
    assert not listed.programs[0].environments

    # The same through the client ...
    async with Registry.connect(server.target, token=server.admin_token) as client:
        got = await client.get_program(PROGRAM)
    assert [(e.environment, e.target.stable.version) for e in got.environments] == [
        ("development", "1.1.0"),
        ("staging", "1.0.0"),
        ("production", ""),
    ]
    # ... and over REST.
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    url = f"http://127.0.0.1:{server.app.http_port}/api/registry/programs/{PROGRAM}"
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as r:
        assert r.status == 200
        body = await r.json()
    rest_staging = [e for e in body["environments"] if e["environment"] == "staging"][0]
    assert rest_staging["target"]["candidate"] == {
        "version": "1.1.0",
        "digest": staging.target.candidate.digest,
        "weight_percent": 10,
    }
    assert rest_staging["deployment"]["state"] == "DEPLOYMENT_STATE_IN_PROGRESS"
    assert rest_staging["deployment"]["current_step"] == 1


# -- required checks ---------------------------------------------------------------------------------

GATED = """
[environments.development]
auto_deploy = true
default_strategy = "replace"

[environments.staging]
default_strategy = "replace"
required_checks = ["integration_tests"]
on_missing_checks = "refuse"

[environments.production]
default_strategy = "replace"
approval_required = true
required_checks = ["integration_tests", "load_test"]
"""


async def _principal(server: Running, name: str, *grants: tuple[int, str]) -> str:
    access = apb_grpc.AccessServiceStub(server.channel)
    await access.CreatePrincipal(apb.CreatePrincipalRequest(principal_id=name, principal=apb.Principal()))
    for action, resource in grants:
        await access.GrantPermission(
            apb.GrantPermissionRequest(principal=f"principals/{name}", action=action, resource=resource)  # type: ignore[arg-type]
        )
    return str((await access.CreateToken(apb.CreateTokenRequest(parent=f"principals/{name}"))).secret)


@dataclass
class Gated:
    server: Running
    ci: str  # the token of a service account holding `check` on every program
    carol: str  # an approver's token


@pytest.fixture
async def gated(database_url: str, tmp_path: Path) -> AsyncIterator[Gated]:
    config = tmp_path / "registry.toml"
    config.write_text(GATED)
    running = await start(database_url, config=str(config))
    await register_signature(running.registry, name="sig")
    await _register(running, "1.0.0")
    ci = await _principal(running, "ci", (apb.ACTION_CHECK, "*"))
    carol = await _principal(running, "carol", (apb.ACTION_APPROVE, "*"))
    yield Gated(running, ci, carol)
    await running.channel.close(None)
    await running.app.stop(grace=0)


async def _deployment(server: Running, name: str) -> dpb.Deployment:
    found: dpb.Deployment = (
        await server.deployments.GetDeployment(dpb.GetDeploymentRequest(name=name))
    ).deployment
    return found


async def test_required_checks_hold_a_production_deployment_until_ci_reports(gated: Gated) -> None:
    server = gated.server
    async with Registry.connect(server.target, token=gated.ci) as ci:
        first = await ci.report_version_check(
            PROGRAM, "1.0.0", "integration_tests", state="passed", details_url="https://ci.example/runs/7"
        )
        assert first.name == f"programs/{PROGRAM}/versions/1.0.0/checks/integration_tests"
        assert first.reporter == "principals/ci" and first.state == dpb.CHECK_STATE_PASSED

        created = await server.deployments.CreateDeployment(
            dpb.CreateDeploymentRequest(program=PROGRAM, version="1.0.0", environment="production")
        )
        assert created.deployment.state == dpb.DEPLOYMENT_STATE_PENDING_APPROVAL
        assert list(created.deployment.required_checks) == ["integration_tests", "load_test"]
        approver = dpb_grpc.DeploymentServiceStub(server.channel_for(gated.carol))
        approved = await approver.ApproveDeployment(
            dpb.ApproveDeploymentRequest(name=created.deployment.name, comment="ok")
        )
        waiting = approved.deployment
        assert waiting.state == dpb.DEPLOYMENT_STATE_PENDING_CHECKS
        assert list(waiting.waiting_checks) == ["load_test"] and waiting.current_step == 0
        last = waiting.timeline[-1]
        assert last.kind == dpb.DEPLOYMENT_EVENT_KIND_CHECKS_PENDING
        assert last.reason == "waiting for load_test; passed: integration_tests"
        # Deployed where: production serves nothing yet; its deployment waits.
        program = (await server.registry.GetProgram(pb.GetProgramRequest(name=f"programs/{PROGRAM}"))).program
        production = [e for e in program.environments if e.environment == "production"][0]
        assert production.deployment.state == dpb.DEPLOYMENT_STATE_PENDING_CHECKS
        assert not production.target.HasField("stable")  # a target, created with the deployment

        await ci.report_version_check(PROGRAM, "1.0.0", "load_test", state="running")
        still = await _deployment(server, waiting.name)
        assert still.state == dpb.DEPLOYMENT_STATE_PENDING_CHECKS and still.revision == waiting.revision

        await ci.report_version_check(PROGRAM, "1.0.0", "load_test", state="passed", summary="p95 140 ms")
    # The report's own transaction started it (no poll): already done when the call returns.
    done = await _deployment(server, waiting.name)
    assert done.state == dpb.DEPLOYMENT_STATE_SUCCEEDED and not done.waiting_checks
    kinds = [t.kind for t in done.timeline]
    assert kinds[-3:] == [
        dpb.DEPLOYMENT_EVENT_KIND_CHECK_PASSED,
        dpb.DEPLOYMENT_EVENT_KIND_PROMOTED,
        dpb.DEPLOYMENT_EVENT_KIND_SUCCEEDED,
    ]
    passed = done.timeline[-3]
    assert passed.actor == "controller" and passed.state == dpb.DEPLOYMENT_STATE_IN_PROGRESS
    # One revision: the report's event, and the deployment's (WatchEvents and webhooks carry those).
    async with server.app.store.read() as tx:
        events = [(e.revision, e.kind) for e in await tx.events_after(passed.revision - 1)]
    assert [kind for revision, kind in events if revision == passed.revision] == [
        "check.reported",
        "deployment.check_passed",
        "deployment.promoted",
        "deployment.succeeded",
        "target.updated",
    ]
    assert passed.reason == "required check load_test PASSED: p95 140 ms; every one passed"
    served = await server.registry.GetProgramVersion(
        pb.GetProgramVersionRequest(name=f"programs/{PROGRAM}", environment="production")
    )
    assert served.program_version.version == "1.0.0"
    # GetProgramVersion shows the version's checks (the cached answer was dropped by each report).
    version = (
        await server.registry.GetProgramVersion(
            pb.GetProgramVersionRequest(name=f"programs/{PROGRAM}/versions/1.0.0")
        )
    ).program_version
    assert [(c.check, c.state, c.summary) for c in version.checks] == [
        ("integration_tests", dpb.CHECK_STATE_PASSED, ""),
        ("load_test", dpb.CHECK_STATE_PASSED, "p95 140 ms"),
    ]
    assert version.checks[0].details_url == "https://ci.example/runs/7"


async def test_a_failed_required_check_refuses_the_deployment_or_fails_the_waiting_one(gated: Gated) -> None:
    server = gated.server
    ci = dpb_grpc.DeploymentServiceStub(server.channel_for(gated.ci))

    async def report(version: str, check: str, state: int, summary: str = "") -> None:
        await ci.ReportVersionCheck(
            dpb.ReportVersionCheckRequest(
                program_version=f"programs/{PROGRAM}/versions/{version}",
                check=check,
                state=state,  # type: ignore[arg-type]
                summary=summary,
            )
        )

    await report("1.0.0", "integration_tests", dpb.CHECK_STATE_FAILED, "3 of 120 failed")
    to_production = dpb.CreateDeploymentRequest(program=PROGRAM, version="1.0.0", environment="production")
    refused = await refusal(server.deployments.CreateDeployment(to_production))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    failure = details(refused)["PreconditionFailure"]
    assert isinstance(failure, error_details_pb2.PreconditionFailure)
    assert [(v.type, v.description) for v in failure.violations] == [
        ("REQUIRED_CHECK", "required check integration_tests FAILED: 3 of 120 failed")
    ]
    # Staging refuses what has not passed yet (on_missing_checks = "refuse"), naming it.
    to_staging = dpb.CreateDeploymentRequest(program=PROGRAM, version="1.0.0", environment="staging")
    refused = await refusal(server.deployments.CreateDeployment(to_staging))
    assert "integration_tests FAILED" in str(refused.details())
    await _register(server, "1.1.0")
    refused = await refusal(
        server.deployments.CreateDeployment(
            dpb.CreateDeploymentRequest(program=PROGRAM, version="1.1.0", environment="staging")
        )
    )
    assert "required check integration_tests has not passed (not reported)" in str(refused.details())

    # A re-run passes; the deployment waits for load_test, which fails: the deployment FAILS, saying why.
    await report("1.0.0", "integration_tests", dpb.CHECK_STATE_PASSED)
    created = await server.deployments.CreateDeployment(to_production)
    approver = dpb_grpc.DeploymentServiceStub(server.channel_for(gated.carol))
    await approver.ApproveDeployment(dpb.ApproveDeploymentRequest(name=created.deployment.name))
    assert (await _deployment(server, created.deployment.name)).state == dpb.DEPLOYMENT_STATE_PENDING_CHECKS
    await report("1.0.0", "load_test", dpb.CHECK_STATE_FAILED, "p95 2.4 s")
    failed = await _deployment(server, created.deployment.name)
    assert failed.state == dpb.DEPLOYMENT_STATE_FAILED
    assert failed.timeline[-1].reason == "required check load_test FAILED: p95 2.4 s"
    assert failed.timeline[-1].actor == "controller"


async def test_reporting_a_check_needs_the_check_action_and_good_input(gated: Gated) -> None:
    server = gated.server
    deployer = await _principal(server, "dave", (apb.ACTION_DEPLOY, "*"), (apb.ACTION_READ, "*"))
    good = dpb.ReportVersionCheckRequest(
        program_version=f"programs/{PROGRAM}/versions/1.0.0", check="load_test", state=dpb.CHECK_STATE_PASSED
    )
    as_deployer = dpb_grpc.DeploymentServiceStub(server.channel_for(deployer))
    assert await code_of(as_deployer.ReportVersionCheck(good)) == grpc.StatusCode.PERMISSION_DENIED
    ci = dpb_grpc.DeploymentServiceStub(server.channel_for(gated.ci))
    bad = dpb.ReportVersionCheckRequest(
        program_version=f"programs/{PROGRAM}/versions/1.0.0",
        check="Load Test",
        details_url="javascript:alert(1)",
        summary="bad\x00",
    )
    assert violations(await refusal(ci.ReportVersionCheck(bad))) == {
        "check",
        "state",
        "details_url",
        "summary",
    }
    latest = dpb.ReportVersionCheckRequest()
    latest.CopyFrom(good)
    latest.program_version = f"programs/{PROGRAM}/versions/latest"
    assert violations(await refusal(ci.ReportVersionCheck(latest))) == {"program_version"}
    missing = dpb.ReportVersionCheckRequest()
    missing.CopyFrom(good)
    missing.program_version = f"programs/{PROGRAM}/versions/9.9.9"
    assert await code_of(ci.ReportVersionCheck(missing)) == grpc.StatusCode.NOT_FOUND
    # A retry with the same request id is answered once.
    once = dpb.ReportVersionCheckRequest()
    once.CopyFrom(good)
    once.request_id = "ci-run-7"
    first, again = await ci.ReportVersionCheck(once), await ci.ReportVersionCheck(once)
    assert first == again
    # Audited, as every mutation: who reported which version's check.
    audit = await apb_grpc.AccessServiceStub(server.channel).ListAuditEvents(
        apb.ListAuditEventsRequest(principal="principals/ci")
    )
    reported = [e for e in audit.audit_events if e.method.endswith("/ReportVersionCheck")]
    assert reported and reported[0].resource == f"programs/{PROGRAM}/versions/1.0.0"
    # The environment shows its required checks.
    production = await server.deployments.GetEnvironment(
        dpb.GetEnvironmentRequest(name="environments/production")
    )
    assert list(production.environment.policy.required_checks) == ["integration_tests", "load_test"]
    staging = await server.deployments.GetEnvironment(dpb.GetEnvironmentRequest(name="environments/staging"))
    assert staging.environment.policy.on_missing_checks == dpb.MISSING_CHECKS_REFUSE


# -- resource requirements and capacity ------------------------------------------------------------


async def test_capacity_refuses_a_version_that_does_not_fit(rest_server: Running) -> None:
    server = rest_server
    # Requirements that do not read as NAME OP QUANTITY are refused at registration, each named.
    bad = pb.ProgramVersionSpec(program=PROGRAM, version="2.0.0", signature="signatures/sig/versions/1.0.0")
    bad.metadata.update({"deployment": {"requirements": ["memory >= 1GB", "gpu >= lots"]}})
    refused = await refusal(
        server.registry.RegisterProgram(pb.RegisterProgramRequest(spec=bad, artifact=b"{}"))
    )
    assert violations(refused) == {"spec.metadata.deployment.requirements[1]"}
    async with Registry.connect(server.target, token=server.admin_token) as client:
        with pytest.raises(InvalidArgumentError) as err:
            await client.register_program(
                PROGRAM,
                program=dspy_state("2.0.0"),
                signature_name="sig",
                version="2.0.0",
                metadata={"deployment": {"requirements": {"cpu": "many"}}},
            )
        assert [f for f, _ in err.value.field_violations] == ["spec.metadata.deployment.requirements['cpu']"]

        await _register(
            server, "2.0.0", deployment={"requirements": ["memory >= 1GB", "gpu >= 1", "cpu >= 2"]}
        )
        staging = await client.get_environment("staging")
        await client.update_environment(
            {"name": "staging", "policy": {"capacity": {"memory": "512MiB", "gpu": "0"}}},
            update_mask=["policy.capacity"],
            etag=staging.etag,
        )
        with pytest.raises(FailedPreconditionError) as err2:
            await client.create_deployment(PROGRAM, "2.0.0", "staging", strategy="replace")
        assert [(t, d) for t, _, d in err2.value.precondition_violations] == [
            ("CAPACITY", "requires memory >= 1GB; staging offers memory = 512MiB"),
            ("CAPACITY", "requires gpu >= 1; staging offers gpu = 0"),
        ]  # cpu: staging declares none, so does not limit it
        # Over REST, the same refusal (409, the gRPC code's name and details).
        headers = {"Authorization": f"Bearer {server.admin_token}"}
        url = f"http://127.0.0.1:{server.app.http_port}/api/registry/programs/{PROGRAM}/deploy"
        body = {"version": "2.0.0", "environment": "staging", "strategy": "replace"}
        async with aiohttp.ClientSession() as session, session.post(url, json=body, headers=headers) as r:
            assert r.status == 409
            answer = await r.json()
        assert answer["error"]["code"] == "FAILED_PRECONDITION"
        assert "requires memory >= 1GB; staging offers memory = 512MiB" in answer["error"]["message"]

        # Room enough: it deploys. A version that declares nothing fits anywhere.
        staging = await client.get_environment("staging")
        await client.update_environment(
            {"name": "staging", "policy": {"capacity": {"memory": "16GiB", "gpu": "2"}}},
            update_mask=["policy.capacity"],
            etag=staging.etag,
        )
        done = await client.create_deployment(PROGRAM, "2.0.0", "staging", strategy="replace")
        assert done.state == dpb.DEPLOYMENT_STATE_SUCCEEDED
        # A capacity that does not read is refused, naming it.
        with pytest.raises(InvalidArgumentError) as err3:
            await client.update_environment(
                {"name": "staging", "policy": {"capacity": {"memory": "a lot"}}},
                update_mask=["policy.capacity"],
            )
        assert [f for f, _ in err3.value.field_violations] == ["environment.policy.capacity['memory']"]

"""ReportSidecarStatus over a real channel, on SQLite and Postgres: what a sidecar reports shows in
GetDeploymentStatus while it is live; leaving or three missed heartbeats drop it; bad reports and
reports beyond the caller's read permission change nothing."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import access_pb2_grpc as apb_grpc
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from tests.api.conftest import Running, register_signature, violations
from tests.clock import FakeClock
from tests.factories import dspy_state

PROGRAM = "sentiment"


async def _with_program(server: Running) -> Running:
    await register_signature(server.registry, name="sig")
    spec = pb.ProgramVersionSpec(program=PROGRAM, version="1.0.0", signature="signatures/sig/versions/1.0.0")
    await server.registry.RegisterProgram(pb.RegisterProgramRequest(spec=spec, artifact=dspy_state("v1")))
    return server


@pytest.fixture
async def ready(server: Running) -> Running:
    """`sentiment` 1.0.0 registered, and so auto-deployed to development."""
    return await _with_program(server)


@pytest.fixture
async def clocked(clocked_server: Running) -> Running:
    """The same, on a server whose time moves only with the test's `clock`."""
    return await _with_program(clocked_server)


async def _status(stub: dpb_grpc.DeploymentServiceStub) -> dpb.GetDeploymentStatusResponse:
    response: dpb.GetDeploymentStatusResponse = await stub.GetDeploymentStatus(
        dpb.GetDeploymentStatusRequest(program=PROGRAM, environment="development")
    )
    return response


def _report(
    sidecar_id: str, *entries: dpb.SidecarTargetStatus, heartbeat: float = 0.0, leaving: bool = False
) -> dpb.ReportSidecarStatusRequest:
    r = dpb.ReportSidecarStatusRequest(sidecar_id=sidecar_id, targets=entries, revision=7, leaving=leaving)
    r.heartbeat_interval.FromNanoseconds(int(heartbeat * 1e9))
    return r


def _ack(digest: str, environment: str = "development", program: str = PROGRAM) -> dpb.SidecarTargetStatus:
    return dpb.SidecarTargetStatus(
        program=program,
        environment=environment,
        version="1.0.0",
        digest=digest,
        result=dpb.APPLY_RESULT_ACK,
        revision=7,
    )


async def test_a_live_sidecar_shows_in_the_status_of_each_target_it_serves(ready: Running) -> None:
    stub = dpb_grpc.DeploymentServiceStub(ready.channel)
    before = await _status(stub)
    digest = before.target.stable.digest
    assert list(before.sidecars) == []
    nack = dpb.SidecarTargetStatus(
        program=PROGRAM,
        environment="staging",
        version="1.0.0",
        digest=digest,
        result=dpb.APPLY_RESULT_NACK,
        revision=7,
    )
    nack.error_detail.code = grpc.StatusCode.DATA_LOSS.value[0]
    nack.error_detail.message = "digest mismatch"
    answer = await stub.ReportSidecarStatus(_report("pod-a", _ack(digest), nack))
    assert answer.heartbeat_interval.ToNanoseconds() == 10 * 10**9  # the default, for 0
    assert answer.revision == before.revision  # telemetry moves no revision

    after = await _status(stub)
    assert after.revision == before.revision
    [sidecar] = after.sidecars
    assert sidecar.sidecar_id == "pod-a"
    assert sidecar.principal == "principals/admin"
    assert sidecar.revision == 7
    assert [(t.environment, t.version, t.digest, t.result) for t in sidecar.targets] == [
        ("development", "1.0.0", digest, dpb.APPLY_RESULT_ACK)
    ]  # only this target's entries

    # The next report replaces the last whole: pod-a now serves nothing in development.
    await stub.ReportSidecarStatus(_report("pod-a", nack))
    assert list((await _status(stub)).sidecars) == []


async def test_leaving_or_three_missed_heartbeats_drop_a_sidecar(clocked: Running, clock: FakeClock) -> None:
    stub = dpb_grpc.DeploymentServiceStub(clocked.channel)
    digest = (await _status(stub)).target.stable.digest
    await stub.ReportSidecarStatus(_report("pod-quick", _ack(digest), heartbeat=0.5))
    await stub.ReportSidecarStatus(_report("pod-leaving", _ack(digest)))
    await stub.ReportSidecarStatus(_report("pod-steady", _ack(digest)))
    assert [s.sidecar_id for s in (await _status(stub)).sidecars] == [
        "pod-leaving",
        "pod-quick",
        "pod-steady",
    ]

    await stub.ReportSidecarStatus(_report("pod-leaving", leaving=True))
    clock.advance(0.5 * 3 + 0.5)  # pod-quick misses three heartbeats
    assert [s.sidecar_id for s in (await _status(stub)).sidecars] == ["pod-steady"]

    # Maintenance deletes what is no longer live; a sidecar that comes back is live again.
    await clocked.app.maintenance.run_once()
    await stub.ReportSidecarStatus(_report("pod-quick", _ack(digest), heartbeat=30))
    assert [s.sidecar_id for s in (await _status(stub)).sidecars] == ["pod-quick", "pod-steady"]


async def test_a_bad_report_names_every_bad_field_and_changes_nothing(ready: Running) -> None:
    stub = dpb_grpc.DeploymentServiceStub(ready.channel)
    digest = (await _status(stub)).target.stable.digest
    unset = dpb.SidecarTargetStatus(
        program=PROGRAM, environment="development", version="3.0.0", digest=digest
    )
    silent_nack = dpb.SidecarTargetStatus(
        program=PROGRAM,
        environment="development",
        version="2.0.0",
        digest=digest,
        result=dpb.APPLY_RESULT_NACK,
    )
    bad_names = dpb.SidecarTargetStatus(
        program="Bad Name", environment="", version="one", digest="md5:00", result=dpb.APPLY_RESULT_ACK
    )
    request = _report("Pod A!", unset, silent_nack, bad_names, _ack(digest), _ack(digest), heartbeat=0.001)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ReportSidecarStatus(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(caught.value) == {
        "sidecar_id",
        "heartbeat_interval",
        "targets[0].result",
        "targets[1].error_detail",
        "targets[2].program",
        "targets[2].environment",
        "targets[2].version",
        "targets[2].digest",
        "targets[4]",  # the same version twice
    }
    assert list((await _status(stub)).sidecars) == []

    for unknown in (_ack(digest, program="nonesuch"), _ack(digest, environment="nowhere")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ReportSidecarStatus(_report("pod-a", _ack(digest), unknown))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert list((await _status(stub)).sidecars) == []


async def test_reporting_needs_read_on_each_program_and_an_id_stays_with_its_principal(
    ready: Running,
) -> None:
    admin = apb_grpc.AccessServiceStub(ready.channel)
    channels = []
    stubs = []
    for name in ("pod-identity-a", "pod-identity-b"):
        await admin.CreatePrincipal(apb.CreatePrincipalRequest(principal_id=name, principal=apb.Principal()))
        await admin.GrantPermission(
            apb.GrantPermissionRequest(
                principal=f"principals/{name}", action=apb.ACTION_READ, resource=PROGRAM
            )
        )
        secret = (await admin.CreateToken(apb.CreateTokenRequest(parent=f"principals/{name}"))).secret
        channels.append(ready.channel_for(secret))
        stubs.append(dpb_grpc.DeploymentServiceStub(channels[-1]))
    a, b = stubs
    try:
        digest = (await _status(a)).target.stable.digest
        await a.ReportSidecarStatus(_report("pod-1", _ack(digest)))
        for call in (
            a.ReportSidecarStatus(_report("pod-2", _ack(digest, program="other"))),  # no read on `other`
            b.ReportSidecarStatus(_report("pod-1", _ack(digest))),  # pod-1 reports as a, and is live
            b.ReportSidecarStatus(_report("pod-1", leaving=True)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        [sidecar] = (await _status(a)).sidecars
        assert (sidecar.sidecar_id, sidecar.principal) == ("pod-1", "principals/pod-identity-a")
    finally:
        for channel in channels:
            await channel.close(None)


async def test_a_nack_of_the_green_version_fails_a_blue_green_deployment(ready: Running) -> None:
    stub = dpb_grpc.DeploymentServiceStub(ready.channel)
    spec = pb.ProgramVersionSpec(program=PROGRAM, version="1.1.0", signature="signatures/sig/versions/1.0.0")
    await ready.registry.RegisterProgram(pb.RegisterProgramRequest(spec=spec, artifact=dspy_state("v2")))
    replace = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE)
    await stub.CreateDeployment(
        dpb.CreateDeploymentRequest(program=PROGRAM, version="1.0.0", environment="staging", strategy=replace)
    )
    blue_green = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_BLUE_GREEN)
    blue_green.blue_green.auto_promote = False
    green = (
        await stub.CreateDeployment(
            dpb.CreateDeploymentRequest(
                program=PROGRAM, version="1.1.0", environment="staging", strategy=blue_green
            )
        )
    ).deployment
    assert green.state == dpb.DEPLOYMENT_STATE_IN_PROGRESS

    def nack(version: str, digest: str) -> dpb.SidecarTargetStatus:
        entry = dpb.SidecarTargetStatus(
            program=PROGRAM,
            environment="staging",
            version=version,
            digest=digest,
            result=dpb.APPLY_RESULT_NACK,
            revision=7,
        )
        entry.error_detail.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
        entry.error_detail.message = "unknown module class"
        return entry

    # A NACK of another version (or digest) is reported, and changes no deployment.
    await stub.ReportSidecarStatus(_report("pod-a", nack("1.0.0", green.digest)))
    got = (await stub.GetDeployment(dpb.GetDeploymentRequest(name=green.name))).deployment
    assert got.state == dpb.DEPLOYMENT_STATE_IN_PROGRESS

    answer = await stub.ReportSidecarStatus(_report("pod-a", nack("1.1.0", green.digest)))
    got = (await stub.GetDeployment(dpb.GetDeploymentRequest(name=green.name))).deployment
    assert got.state == dpb.DEPLOYMENT_STATE_FAILED
    last = got.timeline[-1]
    assert last.kind == dpb.DEPLOYMENT_EVENT_KIND_FAILED
    assert last.reason == "sidecar pod-a could not apply 1.1.0: unknown module class"
    assert answer.revision == got.revision  # the answer reflects the failure it caused
    status = await stub.GetDeploymentStatus(
        dpb.GetDeploymentStatusRequest(program=PROGRAM, environment="staging")
    )
    assert (status.target.stable.version, status.target.HasField("candidate")) == ("1.0.0", False)
    [sidecar] = status.sidecars
    assert [t.error_detail.message for t in sidecar.targets] == ["unknown module class"]

    # Said again at the next heartbeat, the NACK changes nothing more.
    await stub.ReportSidecarStatus(_report("pod-a", nack("1.1.0", green.digest)))
    again = (await stub.GetDeployment(dpb.GetDeploymentRequest(name=green.name))).deployment
    assert again.revision == got.revision


async def _blue(ready: Running) -> str:
    """1.0.0 stable in staging, 1.1.0 registered; the blue digest."""
    stub = dpb_grpc.DeploymentServiceStub(ready.channel)
    spec = pb.ProgramVersionSpec(program=PROGRAM, version="1.1.0", signature="signatures/sig/versions/1.0.0")
    await ready.registry.RegisterProgram(pb.RegisterProgramRequest(spec=spec, artifact=dspy_state("v2")))
    replace = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE)
    request = dpb.CreateDeploymentRequest(
        program=PROGRAM, version="1.0.0", environment="staging", strategy=replace
    )
    return str((await stub.CreateDeployment(request)).deployment.digest)


async def _green(ready: Running, min_ack_percent: int, ack_timeout: float) -> dpb.Deployment:
    """1.1.0 staged green in staging, auto-promoted once enough sidecars ACK it."""
    blue_green = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_BLUE_GREEN)
    blue_green.blue_green.auto_promote = True
    blue_green.blue_green.min_ack_percent = min_ack_percent
    blue_green.blue_green.ack_timeout.FromMilliseconds(int(ack_timeout * 1000))
    request = dpb.CreateDeploymentRequest(
        program=PROGRAM, version="1.1.0", environment="staging", strategy=blue_green
    )
    created: dpb.CreateDeploymentResponse = await dpb_grpc.DeploymentServiceStub(
        ready.channel
    ).CreateDeployment(request)
    return created.deployment


async def _state_after(stub: dpb_grpc.DeploymentServiceStub, name: str, seconds: float) -> dpb.Deployment:
    """The deployment once it left IN_PROGRESS, or as it is after `seconds`."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        got: dpb.GetDeploymentResponse = await stub.GetDeployment(dpb.GetDeploymentRequest(name=name))
        d = got.deployment
        if d.state != dpb.DEPLOYMENT_STATE_IN_PROGRESS or asyncio.get_running_loop().time() > deadline:
            return d
        await asyncio.sleep(0.05)


async def test_blue_green_switches_once_every_live_sidecar_acked_green(ready: Running) -> None:
    stub = dpb_grpc.DeploymentServiceStub(ready.channel)
    blue = _ack(await _blue(ready), environment="staging")
    await stub.ReportSidecarStatus(_report("pod-a", blue, heartbeat=30))
    await stub.ReportSidecarStatus(_report("pod-b", blue, heartbeat=30))
    green = await _green(ready, min_ack_percent=100, ack_timeout=120)
    assert (await _state_after(stub, green.name, 1.5)).state == dpb.DEPLOYMENT_STATE_IN_PROGRESS

    green_ack = _ack(green.digest, environment="staging")
    green_ack.version = "1.1.0"
    await stub.ReportSidecarStatus(_report("pod-a", blue, green_ack, heartbeat=30))
    assert (await _state_after(stub, green.name, 1.5)).state == dpb.DEPLOYMENT_STATE_IN_PROGRESS  # 1 of 2

    await stub.ReportSidecarStatus(_report("pod-b", blue, green_ack, heartbeat=30))
    done = await _state_after(stub, green.name, 10)
    assert done.state == dpb.DEPLOYMENT_STATE_SUCCEEDED
    assert done.timeline[-1].reason == "2 of 2 live sidecars ACKed 1.1.0"


async def test_blue_green_fails_when_too_few_sidecars_ack_in_time(ready: Running) -> None:
    stub = dpb_grpc.DeploymentServiceStub(ready.channel)
    blue = _ack(await _blue(ready), environment="staging")
    for pod in ("pod-a", "pod-b", "pod-c"):
        await stub.ReportSidecarStatus(_report(pod, blue, heartbeat=30))
    green = await _green(ready, min_ack_percent=50, ack_timeout=1)
    done = await _state_after(stub, green.name, 10)
    assert done.state == dpb.DEPLOYMENT_STATE_FAILED
    assert done.timeline[-1].reason == "0 of 3 live sidecars ACKed 1.1.0 within 1s; 2 needed (50%)"
    after = await stub.GetDeploymentStatus(
        dpb.GetDeploymentStatusRequest(program=PROGRAM, environment="staging")
    )
    assert (after.target.stable.version, after.target.HasField("candidate")) == ("1.0.0", False)


async def test_a_nack_pauses_a_canary_at_its_weight_until_promoted(
    clocked: Running, clock: FakeClock
) -> None:
    stub = dpb_grpc.DeploymentServiceStub(clocked.channel)
    await _blue(clocked)
    canary = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_CANARY)
    canary.canary.steps.add(weight_percent=10).pause.FromSeconds(1)
    canary.canary.steps.add(weight_percent=50).pause.FromSeconds(600)
    request = dpb.CreateDeploymentRequest(
        program=PROGRAM, version="1.1.0", environment="staging", strategy=canary
    )
    d = (await stub.CreateDeployment(request)).deployment
    entry = dpb.SidecarTargetStatus(
        program=PROGRAM,
        environment="staging",
        version="1.1.0",
        digest=d.digest,
        result=dpb.APPLY_RESULT_NACK,
        revision=7,
    )
    entry.error_detail.code = grpc.StatusCode.INTERNAL.value[0]
    entry.error_detail.message = "out of memory loading demos"
    await stub.ReportSidecarStatus(_report("pod-a", entry))
    await stub.ReportSidecarStatus(_report("pod-a", entry))  # the next heartbeat says it again

    clock.advance(1.5)  # past the first step's pause: a running canary would be at 50 % by now
    assert clocked.app.controller is not None
    assert await clocked.app.controller.run_once() == 0  # a controller pass at that time takes no step
    paused = (await stub.GetDeployment(dpb.GetDeploymentRequest(name=d.name))).deployment
    assert (paused.state, paused.paused, paused.weight_percent) == (
        dpb.DEPLOYMENT_STATE_IN_PROGRESS,
        True,
        10,
    )
    assert paused.pause_reason == "sidecar pod-a could not apply 1.1.0: out of memory loading demos"
    assert [e.kind for e in paused.timeline].count(dpb.DEPLOYMENT_EVENT_KIND_PAUSED) == 1

    resumed = (await stub.PromoteDeployment(dpb.PromoteDeploymentRequest(name=d.name))).deployment
    assert (resumed.paused, resumed.weight_percent) == (False, 50)
    assert [e.kind for e in resumed.timeline][-2:] == [
        dpb.DEPLOYMENT_EVENT_KIND_RESUMED,
        dpb.DEPLOYMENT_EVENT_KIND_STEP_ADVANCED,
    ]

"""Live metrics over a real channel, on SQLite and Postgres: reported windows in the status beside their
thresholds, automated rollback in the seed's words, monitored canary steps gated on the verdict, and a
manual rollback racing the automatic one."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import field_mask_pb2

from dspy_registry.server.domain.health import STANDARD_BOUNDS_MS
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from tests.api.conftest import Running, details, register_signature
from tests.calls import canary_strategy
from tests.clock import FakeClock
from tests.eventually import until as _eventually
from tests.factories import dspy_state

PROGRAM = "sentiment"
MIN_REQUESTS = 20


async def _register(server: Running, version: str, accuracy: float) -> None:
    spec = pb.ProgramVersionSpec(
        program=PROGRAM,
        version=version,
        signature="signatures/sig/versions/1.0.0",
        performance={"accuracy": accuracy},
    )
    await server.registry.RegisterProgram(
        pb.RegisterProgramRequest(spec=spec, artifact=dspy_state(f"v{version}"))
    )


# On the machine's clock the monitoring window is a deadline on CPU time: a window counts only while
# it was received within the last `monitoring_window` when analysis runs, and a deployment done is
# watched only that long after it ended. A 2 s window lost its report on a loaded machine (load 30:
# "never: the first rollback" after 20 s, the analysis loop's pass more than 2 s after the report),
# so the tests on the machine's clock get a window longer than any wait of theirs (`until`'s 20 s)
# and count on the deployment's start, not the window's end, to leave older traffic out.
WINDOW_SECONDS = 60
# On the test's own clock nothing passes unless the test moves it: the window is as short as the
# tests that step through it want (a canary starved of traffic is due its pause plus the window).
CLOCKED_WINDOW_SECONDS = 2


@pytest.fixture
async def ready(server: Running) -> Running:
    """Staging, monitored, with thresholds a test can reach in a second or two; 1.0.0 stable there."""
    return await _monitored(server, WINDOW_SECONDS)


@pytest.fixture
async def clocked(clocked_server: Running) -> Running:
    """The same, on a server whose time moves only with the test's `clock`."""
    return await _monitored(clocked_server, CLOCKED_WINDOW_SECONDS)


async def _monitored(server: Running, window_seconds: int) -> Running:
    await register_signature(server.registry, name="sig")
    for version, accuracy in (("1.0.0", 0.9), ("1.1.0", 0.92), ("1.2.0", 0.95)):
        await _register(server, version, accuracy)
    env = dpb.Environment(name="environments/staging")
    env.policy.monitoring_required = True
    rules = env.policy.auto_rollback
    rules.enabled = True
    rules.min_requests = MIN_REQUESTS
    rules.analysis_interval.FromMilliseconds(200)
    rules.monitoring_window.FromSeconds(window_seconds)
    paths = ["policy.monitoring_required", "policy.auto_rollback"]
    await server.deployments.UpdateEnvironment(
        dpb.UpdateEnvironmentRequest(environment=env, update_mask=field_mask_pb2.FieldMask(paths=paths))
    )
    await _deploy(server, "1.0.0", dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE))
    return server


async def _deploy(server: Running, version: str, strategy: dpb.DeploymentStrategy) -> dpb.Deployment:
    reply: dpb.CreateDeploymentResponse = await server.deployments.CreateDeployment(
        dpb.CreateDeploymentRequest(
            program=PROGRAM, version=version, environment="staging", strategy=strategy
        )
    )
    return reply.deployment


def window(
    version: str,
    requests: int,
    errors: int = 0,
    slow_ms: float | None = None,
    correct: int = 0,
    labelled: int = 0,
    start: datetime | None = None,
) -> dpb.MetricWindow:
    """`requests` answered in under 5 ms, or all at `slow_ms` when given."""
    start = start or datetime.now(UTC)
    out = dpb.MetricWindow(
        program=PROGRAM,
        environment="staging",
        version=version,
        request_count=requests,
        error_count=errors,
        feedback_correct=correct,
        feedback_total=labelled,
    )
    out.start_time.FromDatetime(start)
    out.end_time.FromDatetime(start + timedelta(seconds=1))
    counts = [0] * (len(STANDARD_BOUNDS_MS) + 1)
    bucket = 0 if slow_ms is None else next(i for i, b in enumerate(STANDARD_BOUNDS_MS) if slow_ms <= b)
    counts[bucket] = requests
    out.latency.counts.extend(counts)
    out.latency.sum_ms = requests * (slow_ms or 2.0)
    return out


async def _report(
    server: Running, *windows: dpb.MetricWindow, sidecar: str = "pod-0"
) -> dpb.ReportMetricsResponse:
    reply: dpb.ReportMetricsResponse = await server.deployments.ReportMetrics(
        dpb.ReportMetricsRequest(sidecar_id=sidecar, windows=windows)
    )
    return reply


async def _get(server: Running, name: str) -> dpb.Deployment:
    reply: dpb.GetDeploymentResponse = await server.deployments.GetDeployment(
        dpb.GetDeploymentRequest(name=name)
    )
    return reply.deployment


async def _status(server: Running) -> dpb.GetDeploymentStatusResponse:
    reply: dpb.GetDeploymentStatusResponse = await server.deployments.GetDeploymentStatus(
        dpb.GetDeploymentStatusRequest(program=PROGRAM, environment="staging")
    )
    return reply


async def test_reported_windows_show_in_the_status_beside_their_thresholds(ready: Running) -> None:
    start = datetime.now(UTC)
    first = window("1.0.0", 60, 3, correct=45, labelled=50, start=start)
    second = window("1.0.0", 40, 0, slow_ms=300, start=start)
    assert (await _report(ready, first)).accepted_count == 1
    assert (await _report(ready, second, sidecar="pod-1")).accepted_count == 1
    assert (await _report(ready, first)).accepted_count == 1  # a retry: accepted, stored once
    status = await _status(ready)
    [stable] = status.health
    assert (stable.version, stable.role) == ("1.0.0", dpb.TRAFFIC_ROLE_STABLE)
    assert (stable.request_count, stable.error_count) == (100, 3)  # merged across the two sidecars
    assert stable.error_rate == pytest.approx(0.03)
    assert 250 < stable.latency_p95_ms <= 500  # 40 % of the requests took 300 ms
    assert stable.accuracy == pytest.approx(0.9) and stable.baseline_accuracy == pytest.approx(0.9)
    checks = {c.metric: c for c in stable.checks}
    assert checks["error_rate"].threshold == pytest.approx(0.05)
    assert checks["latency_p95_ms"].threshold == 2000
    assert checks["accuracy_drop"].value == pytest.approx(0.0, abs=1e-9)
    assert {c.verdict for c in stable.checks} == {dpb.HEALTH_VERDICT_HEALTHY}
    assert stable.verdict == status.verdict == dpb.HEALTH_VERDICT_HEALTHY
    assert stable.registered_performance["accuracy"] == pytest.approx(0.9)


async def test_bad_windows_are_refused_by_field_and_unknown_targets_dropped(ready: Running) -> None:
    bad = window("1.0.0", 10, 11)
    bad.latency.counts[0] = 3  # no longer adds up to request_count
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _report(ready, window("1.0.0", 10), bad)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {v.field for v in details(refused.value)["BadRequest"].field_violations}  # type: ignore[attr-defined]
    assert {"windows[1].error_count", "windows[1].latency.counts"} <= fields
    assert (await _status(ready)).health[0].request_count == 0  # nothing of the refused call was kept
    far = window("1.0.0", 10)
    far.start_time.seconds = 10**13  # past year 9999: not a time the server can hold
    far.ClearField("end_time")
    with pytest.raises(grpc.aio.AioRpcError) as bad_times:
        await _report(ready, far)
    fields = {v.field for v in details(bad_times.value)["BadRequest"].field_violations}  # type: ignore[attr-defined]
    assert fields >= {"windows[0].start_time", "windows[0].end_time"}
    with pytest.raises(grpc.aio.AioRpcError) as too_many:
        await _report(ready, *[window("1.0.0", 1) for _ in range(1001)])
    assert too_many.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    ahead = window("1.0.0", 10, start=datetime.now(UTC) + timedelta(days=365))  # a broken clock
    with pytest.raises(grpc.aio.AioRpcError) as future:
        await _report(ready, window("1.0.0", 10), ahead)
    assert future.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {v.field for v in details(future.value)["BadRequest"].field_violations}  # type: ignore[attr-defined]
    assert fields == {"windows[1].end_time"}
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await _report(ready, window("1.0.0", 10), window("9.9.9", 10))  # no such version
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "programs/sentiment/versions/9.9.9" in (unknown.value.details() or "")
    assert (await _status(ready)).health[0].request_count == 0  # nothing of the refused calls was kept
    elsewhere = window("1.0.0", 10)
    elsewhere.environment = "production"  # no target there
    old = window("1.0.0", 10, start=datetime.now(UTC) - timedelta(days=1))
    reply = await _report(ready, window("1.0.0", 10), elsewhere, old)
    assert (reply.accepted_count, reply.dropped_count) == (1, 2)


async def test_a_regression_during_a_canary_rolls_back_by_itself_in_the_seeds_words(ready: Running) -> None:
    events = ready.deployments.WatchEvents(
        dpb.WatchEventsRequest(kinds=[dpb.DEPLOYMENT_EVENT_KIND_AUTO_ROLLBACK])
    )
    await events.read()  # the snapshot: the stream is live
    canary = await _deploy(ready, "1.1.0", canary_strategy((20, 30)))
    await _report(ready, window("1.0.0", 80), window("1.1.0", MIN_REQUESTS, errors=4))  # 20 % errors
    await _eventually(lambda: _state_is(ready, canary.name, dpb.DEPLOYMENT_STATE_ROLLED_BACK), "the rollback")
    ended = await _get(ready, canary.name)
    kinds = [e.kind for e in ended.timeline]
    assert kinds[-2:] == [dpb.DEPLOYMENT_EVENT_KIND_AUTO_ROLLBACK, dpb.DEPLOYMENT_EVENT_KIND_ROLLED_BACK]
    assert ended.timeline[-1].reason == "Auto-rollback: Error rate 0.2 exceeds threshold 0.05"
    assert ended.timeline[-1].actor == "controller"
    status = await _status(ready)
    assert status.target.stable.version == "1.0.0" and not status.target.HasField("candidate")
    message = await asyncio.wait_for(events.read(), 5)
    [event] = message.events.events
    assert (event.kind, event.deployment, event.version) == (
        dpb.DEPLOYMENT_EVENT_KIND_AUTO_ROLLBACK,
        canary.name,
        "1.1.0",
    )
    events.cancel()


async def test_latency_and_accuracy_regressions_roll_back_a_completed_deployment_too(ready: Running) -> None:
    done = await _deploy(ready, "1.1.0", dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE))
    assert done.state == dpb.DEPLOYMENT_STATE_SUCCEEDED  # watched for the monitoring window from now
    await _report(ready, window("1.1.0", MIN_REQUESTS, slow_ms=2300))
    await _eventually(
        lambda: _state_is(ready, done.name, dpb.DEPLOYMENT_STATE_ROLLED_BACK), "latency rollback"
    )
    reason = (await _get(ready, done.name)).timeline[-1].reason
    assert reason.startswith("Auto-rollback: P95 latency ") and reason.endswith("ms exceeds threshold 2000ms")

    # Accuracy against the previous stable measured beside the canary: 0.9 live, 0.7 for 1.2.0.
    canary = await _deploy(ready, "1.2.0", canary_strategy((50, 30)))
    await _report(
        ready,
        window("1.0.0", MIN_REQUESTS, correct=18, labelled=20),
        window("1.2.0", MIN_REQUESTS, correct=14, labelled=20),
        sidecar="pod-2",
    )
    await _eventually(
        lambda: _state_is(ready, canary.name, dpb.DEPLOYMENT_STATE_ROLLED_BACK), "accuracy rollback"
    )
    reason = (await _get(ready, canary.name)).timeline[-1].reason
    assert reason == "Auto-rollback: Accuracy dropped by 0.2 (threshold: 0.1)"


async def _state_is(server: Running, name: str, state: int) -> bool:
    return (await _get(server, name)).state == state


async def test_a_monitored_canary_step_passes_only_on_a_healthy_verdict(
    clocked: Running, clock: FakeClock
) -> None:
    assert clocked.app.controller is not None
    controller = clocked.app.controller
    canary = await _deploy(clocked, "1.1.0", canary_strategy((30, 0.3)))
    clock.advance(0.6)  # past the pause, but no traffic yet: a pass at that time waits
    assert await controller.run_once() == 0
    waiting = await _get(clocked, canary.name)
    assert waiting.state == dpb.DEPLOYMENT_STATE_IN_PROGRESS and waiting.weight_percent == 30
    now = clock.now()
    await _report(
        clocked, window("1.1.0", MIN_REQUESTS, errors=1, start=now), window("1.0.0", 50, start=now)
    )  # 5 %: at the edge, passes
    clock.advance(0.2)  # the next analysis interval: the step is due again
    await controller.run_once()
    await _eventually(
        lambda: _state_is(clocked, canary.name, dpb.DEPLOYMENT_STATE_SUCCEEDED), "the canary passed"
    )
    passed = await _get(clocked, canary.name)
    promoted = [e for e in passed.timeline if e.kind == dpb.DEPLOYMENT_EVENT_KIND_PROMOTED]
    assert promoted[0].reason.startswith(f"analysis passed: {MIN_REQUESTS} requests; error_rate 0.05")


async def test_a_canary_with_too_little_traffic_pauses_for_a_person(
    clocked: Running, clock: FakeClock
) -> None:
    assert clocked.app.controller is not None
    canary = await _deploy(clocked, "1.1.0", canary_strategy((10, 0.2)))
    # A request every 0.3 s of the server's time: about 7 in the 2 s window, never 20. The step's
    # deadline is its pause (0.2 s) plus the monitoring window (2 s): a pass after it pauses the canary.
    for _ in range(10):
        await _report(clocked, window("1.1.0", 1, start=clock.now()))
        clock.advance(0.3)
        await clocked.app.controller.run_once()
        if await _paused(clocked, canary.name):
            break
    held = await _get(clocked, canary.name)
    found = re.fullmatch(
        rf"analysis inconclusive: (\d+) of {MIN_REQUESTS} requests to 1.1.0 by the step's deadline",
        held.pause_reason,
    )
    assert found and 0 < int(found[1]) < MIN_REQUESTS, held.pause_reason
    assert held.state == dpb.DEPLOYMENT_STATE_IN_PROGRESS and held.weight_percent == 10
    assert (await _status(clocked)).verdict == dpb.HEALTH_VERDICT_INCONCLUSIVE
    # A person decides: promote resumes it (to 100 %, the last step).
    await clocked.deployments.PromoteDeployment(dpb.PromoteDeploymentRequest(name=canary.name))
    assert (await _get(clocked, canary.name)).state == dpb.DEPLOYMENT_STATE_SUCCEEDED


async def _paused(server: Running, name: str) -> bool:
    return (await _get(server, name)).paused


async def test_a_manual_rollback_racing_the_automatic_one_makes_exactly_one(ready: Running) -> None:
    assert ready.app.controller is not None
    analysis = ready.app.controller.deployments
    for attempt in range(6):
        version = "1.1.0" if attempt % 2 == 0 else "1.2.0"
        canary = await _deploy(ready, version, canary_strategy((50, 30)))
        await _report(ready, window(version, MIN_REQUESTS, errors=MIN_REQUESTS), sidecar=f"race-{attempt}")
        # Both at once: the controller's analysis (called directly, so it surely races) and a person.
        manual = ready.deployments.RollbackDeployment(
            dpb.RollbackDeploymentRequest(name=canary.name, reason="by hand")
        )
        results: list[object] = await asyncio.gather(
            analysis.analyse(canary.name.removeprefix("deployments/")), manual, return_exceptions=True
        )
        automatic, by_hand = results
        ended = await _get(ready, canary.name)
        if isinstance(by_hand, grpc.aio.AioRpcError):  # an automatic one (this or the loop's) was first
            assert by_hand.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert ended.timeline[-1].actor == "controller"
        else:
            assert automatic is False and ended.timeline[-1].reason == "by hand"
        assert ended.state == dpb.DEPLOYMENT_STATE_ROLLED_BACK
        assert [e.kind for e in ended.timeline].count(dpb.DEPLOYMENT_EVENT_KIND_ROLLED_BACK) == 1
        rollbacks = await ready.deployments.ListDeployments(
            dpb.ListDeploymentsRequest(program=PROGRAM, environment="staging", page_size=100)
        )
        assert [d.rolled_back_deployment for d in rollbacks.deployments].count(canary.name) == 1
        assert (await _status(ready)).target.stable.version == "1.0.0"


async def test_an_unhealthy_canary_whose_old_version_is_yanked_pauses_and_others_go_on(
    ready: Running,
) -> None:
    await ready.registry.YankProgramVersion(
        pb.YankProgramVersionRequest(name=f"programs/{PROGRAM}/versions/1.0.0", reason="leaks data")
    )
    stuck = await _deploy(ready, "1.1.0", canary_strategy((50, 0.1)))
    await _report(ready, window("1.1.0", MIN_REQUESTS, errors=MIN_REQUESTS))
    await _eventually(lambda: _paused(ready, stuck.name), "paused instead of rolled back")
    assert (await _get(ready, stuck.name)).pause_reason.startswith("Error rate 1 exceeds threshold 0.05")
    # The controller still takes other deployments' steps.
    other = await ready.deployments.CreateDeployment(
        dpb.CreateDeploymentRequest(
            program=PROGRAM, version="1.2.0", environment="development", strategy=canary_strategy((50, 0.1))
        )
    )
    await _eventually(
        lambda: _state_is(ready, other.deployment.name, dpb.DEPLOYMENT_STATE_SUCCEEDED), "the other"
    )


async def test_a_redeployed_version_is_judged_only_on_traffic_since_its_deployment(ready: Running) -> None:
    first = await _deploy(ready, "1.1.0", canary_strategy((50, 30)))
    await _report(ready, window("1.1.0", MIN_REQUESTS, errors=MIN_REQUESTS))
    await _eventually(
        lambda: _state_is(ready, first.name, dpb.DEPLOYMENT_STATE_ROLLED_BACK), "the first rollback"
    )
    again = await _deploy(ready, "1.1.0", dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE))  # fixed, say
    # Watched, and analysed four times (as four intervals would) with the old failures still in the window.
    assert await _analysed_four_times(ready, again.name, watched=True) == [False] * 4
    assert (await _get(ready, again.name)).state == dpb.DEPLOYMENT_STATE_SUCCEEDED
    [stable, previous] = (await _status(ready)).health
    assert (stable.version, stable.request_count) == ("1.1.0", 0)


async def _analysed_four_times(server: Running, name: str, *, watched: bool) -> list[bool]:
    """The controller's analysis of deployment `name`, called four times here rather than slept for
    (the loop's passes may come late on a busy machine): whether each rolled it back. `watched`:
    whether the analysis loop must be watching it (else it must not be)."""
    assert server.app.controller is not None
    analysis = server.app.controller.deployments
    deployment_id = name.removeprefix("deployments/")
    assert (deployment_id in {i for i, _ in await analysis.watched_deployments()}) is watched
    return [await analysis.analyse(deployment_id) for _ in range(4)]


async def test_reporting_metrics_takes_the_right_to_roll_back(ready: Running) -> None:
    from dspy_registry.v1 import access_pb2 as apb
    from dspy_registry.v1 import access_pb2_grpc as apb_grpc

    access = apb_grpc.AccessServiceStub(ready.channel)
    await access.CreatePrincipal(apb.CreatePrincipalRequest(principal_id="dashboard"))
    await access.GrantPermission(
        apb.GrantPermissionRequest(principal="principals/dashboard", action=apb.ACTION_READ, resource=PROGRAM)
    )
    token = (await access.CreateToken(apb.CreateTokenRequest(parent="principals/dashboard"))).secret
    channel = ready.channel_for(token)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await dpb_grpc.DeploymentServiceStub(channel).ReportMetrics(
                dpb.ReportMetricsRequest(
                    sidecar_id="pod-0", windows=[window("1.0.0", MIN_REQUESTS, errors=20)]
                )
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED  # read alone could force rollbacks
    finally:
        await channel.close(None)
    assert (await _status(ready)).health[0].request_count == 0


async def test_without_monitoring_required_a_completed_deployment_is_not_watched(ready: Running) -> None:
    env = dpb.Environment(name="environments/staging")
    env.policy.monitoring_required = False
    await ready.deployments.UpdateEnvironment(
        dpb.UpdateEnvironmentRequest(
            environment=env, update_mask=field_mask_pb2.FieldMask(paths=["policy.monitoring_required"])
        )
    )
    done = await _deploy(ready, "1.1.0", dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE))
    await _report(ready, window("1.1.0", MIN_REQUESTS, errors=MIN_REQUESTS))
    assert await _analysed_four_times(ready, done.name, watched=False) == [False] * 4
    assert (await _get(ready, done.name)).state == dpb.DEPLOYMENT_STATE_SUCCEEDED
    assert (await _status(ready)).verdict == dpb.HEALTH_VERDICT_UNHEALTHY  # shown, not acted on


async def test_a_rollback_is_not_itself_rolled_back_when_the_old_version_is_unhealthy_too(
    ready: Running,
) -> None:
    canary = await _deploy(ready, "1.1.0", canary_strategy((50, 30)))
    await _report(ready, window("1.1.0", MIN_REQUESTS, errors=MIN_REQUESTS))
    await _eventually(lambda: _state_is(ready, canary.name, dpb.DEPLOYMENT_STATE_ROLLED_BACK), "the rollback")
    rollback = (await _get(ready, canary.name)).rollback_deployment
    await _report(ready, window("1.0.0", MIN_REQUESTS, errors=MIN_REQUESTS), sidecar="pod-9")  # bad as well
    assert await _analysed_four_times(ready, rollback, watched=True) == [False] * 4
    assert (await _get(ready, rollback)).state == dpb.DEPLOYMENT_STATE_SUCCEEDED  # a person decides now
    status = await _status(ready)
    assert status.target.stable.version == "1.0.0" and status.verdict == dpb.HEALTH_VERDICT_UNHEALTHY

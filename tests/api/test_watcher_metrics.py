"""The client runtime measures what it routes and reports it; a canary regression it measured is rolled
back by the server, and the watcher is back on the old version at once. Real server, real channel."""

from __future__ import annotations

import asyncio
import random

import pytest
from google.protobuf import field_mask_pb2

from dspy_registry.client.watcher import ProgramWatcher
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import registry_pb2 as pb
from tests.api.conftest import Running, register_signature
from tests.factories import dspy_state

PROGRAM = "sentiment"


@pytest.fixture
async def ready(server: Running) -> Running:
    await register_signature(server.registry, name="sig")
    for version in ("1.0.0", "1.1.0"):
        spec = pb.ProgramVersionSpec(
            program=PROGRAM, version=version, signature="signatures/sig/versions/1.0.0"
        )
        await server.registry.RegisterProgram(
            pb.RegisterProgramRequest(spec=spec, artifact=dspy_state(version))
        )
    env = dpb.Environment(name="environments/staging")
    env.policy.auto_rollback.enabled = True
    env.policy.auto_rollback.min_requests = 50
    env.policy.auto_rollback.analysis_interval.FromMilliseconds(200)
    await server.deployments.UpdateEnvironment(
        dpb.UpdateEnvironmentRequest(
            environment=env, update_mask=field_mask_pb2.FieldMask(paths=["policy.auto_rollback"])
        )
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


async def test_measured_calls_and_feedback_reach_the_status(ready: Running) -> None:
    watcher = ProgramWatcher(ready.channel, [(PROGRAM, "staging")], sidecar_id="pod-1", metrics_interval=0.1)
    await watcher.start()
    try:
        await watcher.wait_for(lambda w: w.serving(PROGRAM).stable is not None)
        for i in range(30):
            try:
                with watcher.route(PROGRAM, routing_key=f"user-{i}"):
                    if i % 10 == 0:
                        raise RuntimeError("the model answered nonsense")
            except RuntimeError:
                pass
            watcher.feedback(PROGRAM, correct=i % 3 != 0, routing_key=f"user-{i}")
        assert await watcher.report_metrics()

        status = await ready.deployments.GetDeploymentStatus(
            dpb.GetDeploymentStatusRequest(program=PROGRAM, environment="staging")
        )
        [stable] = status.health
        assert (stable.request_count, stable.error_count) == (30, 3)
        assert (stable.feedback_correct, stable.feedback_total) == (20, 30)
        assert stable.verdict == dpb.HEALTH_VERDICT_INCONCLUSIVE  # 30 of min_requests 50
        canary = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_CANARY)
        canary.canary.steps.add(weight_percent=50).pause.FromSeconds(60)
        await _deploy(ready, "1.1.0", canary)
        await watcher.wait_for(lambda w: w.serving(PROGRAM).candidate is not None)
        with pytest.raises(ValueError, match="say which version"):
            watcher.feedback(PROGRAM, correct=True)  # with a candidate serving: which version answered?
        watcher.feedback(PROGRAM, correct=True, version="1.1.0")
    finally:
        await watcher.stop()


async def test_a_regression_the_watcher_measured_is_rolled_back_and_it_serves_the_old_version(
    ready: Running,
) -> None:
    watcher = ProgramWatcher(ready.channel, [(PROGRAM, "staging")], sidecar_id="pod-1", metrics_interval=0.1)
    await watcher.start()
    rng = random.Random(7)
    stop = asyncio.Event()
    served: list[str] = []

    async def traffic() -> None:
        while not stop.is_set():
            try:
                with watcher.route(PROGRAM, routing_key=str(rng.random())) as program:
                    served.append(program.version)
                    if program.version == "1.1.0" and rng.random() < 0.2:  # the injected regression
                        raise RuntimeError("timeout talking to the model")
            except RuntimeError:
                pass
            await asyncio.sleep(0.002)

    try:
        await watcher.wait_for(lambda w: w.serving(PROGRAM).stable is not None)
        running = asyncio.create_task(traffic())
        canary = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_CANARY)
        canary.canary.steps.add(weight_percent=50).pause.FromSeconds(60)
        rollout = await _deploy(ready, "1.1.0", canary)
        await watcher.wait_for(lambda w: w.serving(PROGRAM).candidate is not None)
        # Rolled back by the server, and the watcher is on 1.0.0 alone again.
        await watcher.wait_for(lambda w: w.serving(PROGRAM).candidate is None, timeout=15)
        stop.set()
        await running
        ended = await ready.deployments.GetDeployment(dpb.GetDeploymentRequest(name=rollout.name))
        assert ended.deployment.state == dpb.DEPLOYMENT_STATE_ROLLED_BACK
        assert ended.deployment.timeline[-1].reason.startswith("Auto-rollback: Error rate 0.")
        assert "1.1.0" in served and watcher.get(PROGRAM).version == "1.0.0"
    finally:
        stop.set()
        await watcher.stop()

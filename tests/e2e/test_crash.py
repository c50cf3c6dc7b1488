"""SIGKILL the server again and again during a canary: every step is taken exactly once."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from tests.e2e.conftest import PROCESSES_TIMEOUT, ServerProcess

pytestmark = PROCESSES_TIMEOUT

WEIGHTS = [5, 10, 20, 35, 50, 65, 80, 90]


async def test_a_canary_survives_ten_sigkills_with_each_step_applied_once(
    serve: type[ServerProcess], tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'r.db'}"
    server = serve(database, tmp_path / "server.log").start()
    server.register("p", ["1.0.0", "1.1.0"])
    with server.channel() as channel:
        deploy = dpb_grpc.DeploymentServiceStub(channel)
        replace = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE)
        deploy.CreateDeployment(
            dpb.CreateDeploymentRequest(program="p", version="1.0.0", environment="staging", strategy=replace)
        )
        canary = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_CANARY)
        for weight in WEIGHTS:
            canary.canary.steps.add(weight_percent=weight).pause.FromMilliseconds(150)
        name = deploy.CreateDeployment(
            dpb.CreateDeploymentRequest(program="p", version="1.1.0", environment="staging", strategy=canary)
        ).deployment.name
    rng = random.Random(20261127)
    kills = 0
    state = dpb.DEPLOYMENT_STATE_IN_PROGRESS
    while kills < 10 or state == dpb.DEPLOYMENT_STATE_IN_PROGRESS:
        time.sleep(rng.uniform(0.05, 0.35))
        if kills < 10:
            assert server.stop(signal.SIGKILL) == -signal.SIGKILL
            kills += 1
            server = serve(database, tmp_path / "server.log").start()
        with server.channel() as channel:
            got = dpb_grpc.DeploymentServiceStub(channel).GetDeployment(
                dpb.GetDeploymentRequest(name=name), timeout=10
            )
            state = got.deployment.state
    assert kills == 10 and state == dpb.DEPLOYMENT_STATE_SUCCEEDED
    with server.channel() as channel:
        done = (
            dpb_grpc.DeploymentServiceStub(channel)
            .GetDeployment(dpb.GetDeploymentRequest(name=name))
            .deployment
        )
    kinds = [t.kind for t in done.timeline]
    assert kinds == [dpb.DEPLOYMENT_EVENT_KIND_CREATED] + [dpb.DEPLOYMENT_EVENT_KIND_STEP_ADVANCED] * (
        len(WEIGHTS) - 1
    ) + [dpb.DEPLOYMENT_EVENT_KIND_PROMOTED, dpb.DEPLOYMENT_EVENT_KIND_SUCCEEDED]
    revisions = [t.revision for t in done.timeline]
    # One revision for the creation (the first step), one per further step, one for the promotion
    # (its SUCCEEDED shares it): none twice.
    assert revisions == sorted(revisions) and len(set(revisions)) == len(WEIGHTS) + 1
    assert [t.step for t in done.timeline[: len(WEIGHTS)]] == list(range(1, len(WEIGHTS) + 1))
    server.stop(signal.SIGTERM)

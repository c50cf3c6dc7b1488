"""Which versions are deployed where (GetProgram), required checks and capacity, over a real channel
and through the client, on SQLite and Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from dspy_registry.client import Registry
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import registry_pb2 as pb
from tests.api.conftest import Running, register_signature, start
from tests.calls import canary_strategy
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

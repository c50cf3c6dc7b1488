"""Two server processes on one PostgreSQL; SIGKILL the one the sidecars report to. Its sidecars, which
the other replica saw join, report again to the survivor and are counted once; the metric windows the
dead replica held unwritten are lost, and the verdict is INCONCLUSIVE, not another one."""

from __future__ import annotations

import signal
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from tests.api.test_fleet_telemetry import _window
from tests.api.test_sidecars import _report
from tests.conftest import SKIP_POSTGRES, PostgresDatabases
from tests.e2e.conftest import ServerProcess

pytestmark = pytest.mark.postgres
PODS = [f"pod-{i}" for i in range(5)]
# No timer flushes during the test: what the survivor knows is what was written when it happened.
FLUSH = ["--telemetry-flush", "3600"]


def _status(server: ServerProcess) -> dpb.GetDeploymentStatusResponse:
    with server.channel() as channel:
        response: dpb.GetDeploymentStatusResponse = dpb_grpc.DeploymentServiceStub(
            channel
        ).GetDeploymentStatus(dpb.GetDeploymentStatusRequest(program="sentiment", environment="development"))
        return response


def _heartbeats(server: ServerProcess, digest: str) -> None:
    ack = dpb.SidecarTargetStatus(
        program="sentiment",
        environment="development",
        version="1.0.0",
        digest=digest,
        result=dpb.APPLY_RESULT_ACK,
        revision=1,
    )
    with server.channel() as channel:
        stub = dpb_grpc.DeploymentServiceStub(channel)
        for pod in PODS:
            stub.ReportSidecarStatus(_report(pod, ack, heartbeat=1.0), timeout=10)


async def test_a_killed_replicas_sidecars_report_to_the_other_and_count_once(
    serve: type[ServerProcess], tmp_path: Path, pg_databases: PostgresDatabases
) -> None:
    if SKIP_POSTGRES:
        pytest.skip("DSPY_REGISTRY_SKIP_POSTGRES=1")
    url = await pg_databases.create()
    doomed = serve(url, tmp_path / "doomed.log", FLUSH).start()
    survivor = serve(url, tmp_path / "survivor.log", FLUSH).start()
    doomed.register("sentiment", ["1.0.0"])  # auto-deployed to development
    digest = _status(doomed).target.stable.digest
    _heartbeats(doomed, digest)  # the sidecars join the doomed replica
    _heartbeats(doomed, digest)  # and heartbeat there: held in its memory
    with doomed.channel() as channel:
        dpb_grpc.DeploymentServiceStub(channel).ReportMetrics(
            dpb.ReportMetricsRequest(
                sidecar_id="pod-0", windows=[_window(datetime.now(UTC), 500, errors=500)]
            )
        )
    assert _status(doomed).health[0].request_count == 500
    before = _status(survivor)
    assert [s.sidecar_id for s in before.sidecars] == PODS  # joins are written before they are answered
    assert before.health[0].request_count == 0  # the windows were held, not yet written

    assert doomed.stop(signal.SIGKILL) == -signal.SIGKILL
    # Until they report again, the dead replica's word stands (three heartbeats and two flushes).
    assert [s.sidecar_id for s in _status(survivor).sidecars] == PODS
    _heartbeats(survivor, digest)  # they reconnect to the survivor: each joins it
    after = _status(survivor)
    assert [s.sidecar_id for s in after.sidecars] == PODS  # once each
    [stable] = after.health
    # 500 failed requests lost with the replica: no verdict on what nobody can read, rather than
    # a wrong one.
    assert stable.request_count == 0
    assert after.verdict == dpb.HEALTH_VERDICT_INCONCLUSIVE

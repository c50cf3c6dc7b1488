"""The fan-out and fleet benchmarks run end to end (small, for their plumbing; the figures come from
`make bench` and `python -m bench fleet`)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import SKIP_POSTGRES
from tests.e2e.conftest import ROOT

OPERATIONS = ROOT / "docs" / "operations.md"


def _bench(*args: str) -> tuple[list[dict[str, Any]], str]:
    """`python -m bench *args`: its JSON lines, and its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")], done.stderr


async def test_the_fanout_benchmark_prints_its_figures() -> None:
    [line], _ = _bench("--only", "fanout", "--streams", "40", "--open-seconds", "0")
    assert (line["figure"], line["streams"], line["deployments"]) == ("fanout", 40, 20)
    # From the reply can be about zero (the change may reach 40 streams before the reply
    # does); from the call's start it cannot.
    assert line["p50_ms"] <= line["p99_ms"]
    assert 0 < line["from_call_start_p50_ms"] <= line["from_call_start_p99_ms"]
    assert line["create_deployment_p50_ms"] > 0
    # With 40 streams the RSS growth is noise; that it is measured and printed is what is checked.
    assert isinstance(line["server_kib_per_idle_stream"], float)
    assert line["server_cpu_us_per_delivered_event"] >= 0
    assert line["clients_cpu_us_per_received_event"] > 0


@pytest.mark.postgres
async def test_the_fleet_simulator_prints_its_figures() -> None:
    if SKIP_POSTGRES:
        pytest.skip("DSPY_REGISTRY_SKIP_POSTGRES=1")
    # The command docs/operations.md shows, made small by the flags after it (the last one wins).
    (shown,) = re.findall(r"<!-- tested: fleet -->\n```sh\n(.*?)\n```", OPERATIONS.read_text(), flags=re.S)
    python, dash_m, module, *args = shlex.split(shown)
    assert (python, dash_m, module) == ("python", "-m", "bench")
    lines, stderr = _bench(
        *args,
        *("--pods", "20", "--processes", "2", "--deployments", "4"),
        *("--settle", "6", "--seconds", "4", "--open-seconds", "1"),
    )
    by = {x["figure"]: x for x in lines}
    seen = (lines, stderr[-3000:])  # what a failure shows
    assert set(by) == {
        "fleet_writes",
        "fleet_create_deployment",
        "fleet_replica",
        "fleet_converge",
        "fleet_canary_rollback",
    }, seen
    replicas = [x for x in lines if x["figure"] == "fleet_replica"]
    # Every pod holds a stream to one of the three replicas; exactly one replica leads.
    assert len(replicas) == 3 and sum(x["watch_streams"] for x in replicas) == 20, seen
    assert [x["leader"] for x in replicas].count(True) == 1, seen
    # Heartbeats and metric windows reached the store through the replicas' telemetry.
    writes = by["fleet_writes"]["write_rpcs_per_s"]
    assert writes["ReportSidecarStatus"] > 0 and writes["ReportMetrics"] > 0, seen
    assert 0 < by["fleet_create_deployment"]["idle_p50_ms"] <= by["fleet_create_deployment"]["idle_p99_ms"], (
        seen
    )
    assert by["fleet_converge"]["seconds"] > 0 and by["fleet_canary_rollback"]["seconds"] > 0, seen
    assert "fleet: 20 pods, 3 replicas" in stderr

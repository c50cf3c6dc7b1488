"""The fan-out benchmark runs end to end (small, for its plumbing; the figures come from `make bench`)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.e2e.conftest import ROOT


async def test_the_fanout_benchmark_prints_its_figures() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "fanout", "--streams", "40", "--open-seconds", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
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

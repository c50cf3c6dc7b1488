"""The fan-out and fleet benchmarks run end to end (small, for their plumbing; the figures come from
`make bench` and `python -m bench fleet`)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
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
    # Heartbeats and windows are held and batched: telemetry transactions, fewer than the reports.
    stored = by["fleet_writes"]["store_write_transactions_per_s"]
    assert 0 < stored["telemetry"] < writes["ReportSidecarStatus"] + writes["ReportMetrics"], seen
    assert 0 < by["fleet_create_deployment"]["idle_p50_ms"] <= by["fleet_create_deployment"]["idle_p99_ms"], (
        seen
    )
    assert by["fleet_converge"]["seconds"] > 0 and by["fleet_canary_rollback"]["seconds"] > 0, seen
    assert "fleet: 20 pods, 3 replicas" in stderr


async def test_the_peers_benchmark_fans_out_on_etcd_the_registry_and_the_ceiling(tmp_path: Path) -> None:
    """`make bench-peers`'s plumbing, tiny: the same clients on all three servers, each change seen."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.peers", "--streams", "20", "--rounds", "2", "--changes", "3"]
        + ["--open-seconds", "0", "--docs", str(tmp_path), "--replicas", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    fanouts = [line for line in lines if line["figure"] == "fanout"]
    # Two rounds, the peers' order reversed in the second.
    assert [(f["round"], f["peer"]) for f in fanouts] == [
        (1, "etcd"),
        (1, "registry"),
        (1, "echo"),
        (2, "echo"),
        (2, "registry"),
        (2, "etcd"),
    ]
    for f in fanouts:
        assert (f["streams"], f["changes"]) == (20, 3)
        assert 0 < f["from_call_start_p50_ms"] <= f["from_call_start_p99_ms"]
        # CPU time moves in clock ticks (10 ms): 60 deliveries may take less than one.
        assert f["server_cpu_us_per_delivered_event"] >= 0 and f["clients_cpu_us_per_received_event"] >= 0
    assert fanouts[0]["server"].startswith("etcd 3.4")
    page = (tmp_path / "benchmarks.md").read_text()
    assert "| 20 | etcd 3.4" in page and "dspy-registry against etcd" in page
    assert (tmp_path / "benchmarks-fanout.png").read_bytes().startswith(b"\x89PNG")
    # The page again from the printed lines alone (`--from`), as from a saved run: the same page.
    saved, again = tmp_path / "run.jsonl", tmp_path / "again"
    saved.write_text(done.stdout)
    again.mkdir()
    rendered = subprocess.run(
        [sys.executable, "-m", "bench.peers", "--from", str(saved), "--docs", str(again)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    assert (again / "benchmarks.md").read_text() == page


@pytest.mark.postgres
@pytest.mark.timeout(240)
async def test_the_peers_benchmark_spreads_the_watchers_over_postgresql_replicas(tmp_path: Path) -> None:
    """`bench.peers --replicas`, tiny: the streams dealt over two replicas of one PostgreSQL database,
    each replica handing the change to its own watchers, every change seen by all."""
    if SKIP_POSTGRES:
        pytest.skip("DSPY_REGISTRY_SKIP_POSTGRES=1")
    done = subprocess.run(
        [sys.executable, "-m", "bench.peers", "--peers", "etcd", "--replicas", "2"]
        + [
            "--streams",
            "20",
            "--rounds",
            "1",
            "--changes",
            "3",
            "--open-seconds",
            "0",
            "--docs",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    spread = [line for line in lines if line["figure"] == "fanout_replicas"]
    # After the peers; the CPU read from both servers. Each client says a revision reached all its
    # streams only once every one of them had it: the change made through the first replica reached
    # the watchers of the second through it.
    assert [(f["replicas"], f["servers"], f["streams"]) for f in spread] == [(2, 2, 20)]
    assert all(0 < f["from_call_start_p50_ms"] <= f["from_call_start_p99_ms"] for f in spread)
    page = (tmp_path / "benchmarks.md").read_text()
    assert "## Watch fan-out over PostgreSQL replicas" in page
    assert re.search(r"^\| 2 \| [0-9.]+ / [0-9.]+ ms \|", page, flags=re.M), page

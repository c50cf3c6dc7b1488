"""The fan-out benchmark runs end to end (small, for its plumbing; the figures come from `make bench`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


async def test_the_peers_benchmark_fans_out_on_etcd_the_registry_and_the_ceiling(tmp_path: Path) -> None:
    """`make bench-peers`'s plumbing, tiny: the same clients on all three servers, each change seen."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.peers", "--streams", "20", "--rounds", "2", "--changes", "3"]
        + ["--open-seconds", "0", "--docs", str(tmp_path)],
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

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
README = ROOT / "README.md"


def _python_m(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m module *args` from the repository's root, which must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _json_lines(output: str) -> list[dict[str, Any]]:
    """The figures a benchmark printed, one JSON object a line."""
    return [json.loads(x) for x in output.splitlines() if x.startswith("{")]


def _bench(*args: str) -> tuple[list[dict[str, Any]], str]:
    """`python -m bench *args`: its JSON lines, and its stderr."""
    done = _python_m("bench", *args)
    return _json_lines(done.stdout), done.stderr


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
@pytest.mark.timeout(180)  # the run, then a replica killed and its rows left to run out
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
        *("--settle", "4", "--seconds", "4", "--open-seconds", "1", "--kill-replica", "follower"),
        # Heartbeats of 2 s and the replicas' batches every second: the killed replica's rows run out
        # 9 s after it died, not 45 s (or 21 s with the default flush of 5 s); metric windows every
        # 2 s, analysed every second, so that the canary's rollback is not 2 intervals of 5 s. The
        # settle still takes every pod through two heartbeats and two windows before the measured one.
        *(
            "--heartbeat",
            "2",
            "--telemetry-flush",
            "1",
            "--metrics-interval",
            "2",
            "--analysis-interval",
            "1",
        ),
        "--loop-lag",
    )
    by = {x["figure"]: x for x in lines}
    seen = (lines, stderr[-3000:])  # what a failure shows
    assert set(by) == {
        "fleet_writes",
        "fleet_create_deployment",
        "fleet_replica",
        "fleet_converge",
        "fleet_canary_rollback",
        "fleet_replica_killed",
        "fleet_loop_lag",
    }, seen
    replicas = [x for x in lines if x["figure"] == "fleet_replica"]
    # Each replica's event loop was timed over the window (bench/looplag, on the replicas' path).
    lags = [x for x in lines if x["figure"] == "fleet_loop_lag"]
    assert sorted(x["replica"] for x in lags) == ["replica-0", "replica-1", "replica-2"], seen
    assert all(x["ticks"] > 0 and 0 <= x["lag_p50_ms"] <= x["lag_p99_ms"] for x in lags), seen
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
    # A replica that does not lead, SIGKILLed: its pods' streams resume on the others, and every
    # replica left counts each pod once, before its rows run out and after.
    killed = by["fleet_replica_killed"]
    assert not killed["leader"] and killed["streams_resumed"] == killed["streams_on_it"], seen
    assert killed["sidecars_counted_before"] == [20, 20, 20], seen
    # Every broken stream is counted by its status: at least the dead replica's, each UNAVAILABLE.
    broken = killed["streams_broken_by_code"]
    assert sum(broken.values()) >= killed["streams_on_it"], seen
    assert (
        sum(n for why, n in broken.items() if why.startswith("UNAVAILABLE: ")) >= killed["streams_on_it"]
    ), seen
    # Once: never a pod twice (the dead replica's rows beside the survivor's). Right after the move a
    # survivor may not have read another's batch yet (it can be a pod short, as in docs/operations.md);
    # once the dead replica's rows have run out, every survivor counts every pod.
    after = killed["sidecars_counted_after"] + killed["sidecars_counted_after_rows_ran_out"]
    assert killed["distinct_after"] == after and max(after) <= 20, seen
    assert killed["sidecars_counted_after_rows_ran_out"] == [20, 20], seen
    assert 0 < by["fleet_writes"]["replicas_cpu_s_per_s"], seen
    assert by["fleet_create_deployment"]["idle_after_p99_ms"] > 0, seen
    assert "fleet: 20 pods, 3 replicas" in stderr


@pytest.mark.postgres
async def test_the_fleet_stretches_benchmark_times_a_flush_and_the_gauge_read() -> None:
    if SKIP_POSTGRES:
        pytest.skip("DSPY_REGISTRY_SKIP_POSTGRES=1")
    [line], _ = _bench("fleet", "--stretches", "--pods", "60", "--rounds", "2")
    assert (line["figure"], line["pods"], line["replicas"]) == ("fleet_stretches", 60, 3), line
    # A sixth of the sidecars heard again between two flushes: only those are written.
    assert line["flush_rows_written"] == [10] and line["gauge_sidecars_counted"] == [60], line
    for figure in ("flush_cpu_ms", "flush_longest_stretch_ms", "gauge_cpu_ms", "gauge_longest_stretch_ms"):
        assert 0 < line[figure]["median"] <= line[figure]["max"], line


async def test_the_peers_benchmark_fans_out_on_etcd_the_registry_and_the_ceiling(tmp_path: Path) -> None:
    """`make bench-peers`'s plumbing, tiny: the same clients on all three servers, each change seen."""
    readme = tmp_path / "README.md"
    readme.write_text(README.read_text())
    done = _python_m(
        "bench.peers",
        *("--only", "fanout", "--streams", "20", "--rounds", "2", "--changes", "3"),
        *("--open-seconds", "0", "--docs", str(tmp_path), "--replicas", "0", "--readme", str(readme)),
    )
    lines = _json_lines(done.stdout)
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
    _python_m("bench.peers", "--from", str(saved), "--docs", str(again), timeout=120)
    assert (again / "benchmarks.md").read_text() == page
    # The README's fan-out block: this run's largest fan-out, etcd beside ours; the MLflow block and
    # the rest of the README as they were.
    blocks = _readme_blocks(readme.read_text())
    assert blocks["fanout"].startswith("| Watch fan-out to 20 watchers (20"), blocks
    assert (
        "| server CPU per delivery |" in blocks["fanout"]
        and "| server memory per watcher |" in blocks["fanout"]
    )
    assert blocks["mlflow"] == _readme_blocks(README.read_text())["mlflow"]
    assert _outside_blocks(readme.read_text()) == _outside_blocks(README.read_text())


def test_registrations_are_unique_and_gapless_only_when_numbered_one_to_n() -> None:
    from bench.peer_load import versions_check

    assert versions_check(["2", "1", "3"]) == {
        "versions_assigned": 3,
        "versions_unique": True,
        "versions_gapless": True,
    }
    assert versions_check(["0.0.1", "0.0.3"])["versions_gapless"] is False  # 2 is missing
    twice = versions_check(["1", "2", "2"])
    assert (twice["versions_unique"], twice["versions_gapless"]) == (False, False)
    assert versions_check(["0.0.2", "0.0.1"])["versions_gapless"] is True  # the registry's patch bumps


def _mlflow_records() -> list[dict[str, Any]]:
    """A made-up MLflow section: two rounds, every peer, every workload."""
    from bench import mlflow_peer

    records: list[dict[str, Any]] = []
    speed = {"mlflow:workers-1": 1.0, "mlflow:default": 2.0, "registry": 40.0, "echo": 45.0}
    for round_ in (1, 2):
        for peer, x in speed.items():
            base = {"figure": "mlflow", "peer": peer, "round": round_}
            records.append(base | {"workload": "start", "seconds_to_healthy": 10.0 / x})
            for workload in ("memory_idle", "memory_load"):
                rss = 1000.0 / x
                records.append(
                    base | {"workload": workload, "rss_mib": rss, "pss_mib": rss / 2, "jobs_rss_mib": 0.0}
                )
            if peer != "echo":
                for workload, clients in (("register_sequential", 1), ("register_concurrent", 16)):
                    records.append(
                        base
                        | {
                            "workload": workload,
                            "clients": clients,
                            "versions": 1000,
                            "versions_assigned": 1000,
                        }
                        | {"versions_unique": True, "versions_gapless": True, "stored": 1000, "errors": 0}
                        | {"throughput_per_s": 10.0 * x, "p50_ms": 100 / x, "p99_ms": 200 / x}
                    )
            for n in mlflow_peer.RESOLVE_CONCURRENCY:
                records.append(
                    base
                    | {"workload": "resolve", "concurrency": n, "throughput_per_s": 50.0 * x}
                    | {"p50_ms": 100 / x, "p99_ms": 300 / x, "errors": 0}
                )
    return records


def test_the_mlflow_section_compares_ours_with_mlflows_better_setting(tmp_path: Path) -> None:
    from bench import mlflow_section, page

    machine = {"cpu": "test CPU", "cpus": 2, "load_average_1m": 1.0}
    lines = mlflow_section.render(_mlflow_records(), machine, machine, 120.0)
    text = "\n".join(lines)
    # The default workers are twice as fast here: each ratio is against them, and says so.
    assert "| 16 clients | 20.0 versions/s" in text and "(MLflow, default workers (4)" in text
    assert "| 20.0× (≥ 10×) |" in text  # registrations: 400 / 20
    assert "| 16 | 100.0 req/s" in text and "| 20.0× | 0.89 |" in text  # resolve: 2000 / 100, 2000 / 2250
    assert "unique and gapless" in text and "NOT unique" not in text
    # Memory and start: the lower of MLflow's two, divided by ours (500 / 25 MiB, 5 / 0.25 s).
    assert text.count("| 20.0× |") >= 3
    # A run of one section leaves the other as it was, and writing it again changes nothing.
    path = tmp_path / "benchmarks.md"
    page.write(path, "fanout", ["the fan-out, measured earlier"])
    page.write(path, "mlflow", lines)
    first = path.read_text()
    page.write(path, "mlflow", lines)
    assert path.read_text() == first
    assert page.sections(first) == {
        "fanout": "the fan-out, measured earlier\n",
        "mlflow": "\n".join(lines).strip() + "\n",
    }
    assert first.startswith(page.TITLE) and first.index("fan-out, measured") < first.index("## MLflow")


def test_the_page_is_written_again_from_the_mlflow_sections_lines_alone(tmp_path: Path) -> None:
    """`--from` with a run of `--only mlflow`: its section is written, the fan-out's is kept."""
    machine = {"figure": "machine", "section": "mlflow", "cpu": "test CPU", "cpus": 2, "load_average_1m": 1.0}
    saved = tmp_path / "run.jsonl"
    lines = [machine, *_mlflow_records(), machine, {"figure": "section", "section": "mlflow", "seconds": 60}]
    saved.write_text("".join(json.dumps(x) + "\n" for x in lines))
    page = tmp_path / "benchmarks.md"
    page.write_text(
        "# Benchmarks against the peers\n\n<!-- bench-peers: fanout -->\nkept\n<!-- /bench-peers: fanout -->\n"
    )
    readme = tmp_path / "README.md"
    readme.write_text(README.read_text())
    _python_m(
        "bench.peers", "--from", str(saved), "--docs", str(tmp_path), "--readme", str(readme), timeout=120
    )
    text = page.read_text()
    assert "<!-- bench-peers: fanout -->\nkept\n<!-- /bench-peers: fanout -->" in text
    assert "## MLflow's model registry" in text and "The section took\n1.0 min;" in text
    # The README's MLflow block has this run's figures against MLflow's better setting (here its
    # default workers); the rest of the README, the fan-out's block included, is as it was.
    blocks = _readme_blocks(readme.read_text())
    assert (
        "| resolve, 64 in flight: alias lookup / GetProgramVersion by environment | 100.0 req/s | 2 000.0 req/s | 20.0× the rate |"
        in blocks["mlflow"]
    )
    assert "| memory, idle | 500.0 MiB | 25.0 MiB | 20.0× less |" in blocks["mlflow"]
    assert blocks["fanout"] == _readme_blocks(README.read_text())["fanout"]
    assert _outside_blocks(readme.read_text()) == _outside_blocks(README.read_text())


def _readme_blocks(text: str) -> dict[str, str]:
    """The README's bench-peers blocks, by section."""
    found = re.findall(
        r"<!-- bench-peers: readme-(\w+) -->\n(.*?)<!-- /bench-peers: readme-\1 -->", text, re.S
    )
    return dict(found)


def _outside_blocks(text: str) -> str:
    return re.sub(r"(<!-- bench-peers: readme-\w+ -->\n).*?(<!-- /bench-peers)", r"\1\2", text, flags=re.S)


def test_the_readmes_performance_figures_are_a_bench_peers_run() -> None:
    """The README's figures are the blocks `make bench-peers` writes: both there, each a table with
    the date and load of the run that wrote it."""
    blocks = _readme_blocks(README.read_text())
    assert set(blocks) == {"fanout", "mlflow"}
    for text in blocks.values():
        rows = [x for x in text.splitlines() if x.startswith("|")]
        assert len(rows) >= 5 and re.search(r"\(20\d\d-\d\d-\d\d, load [0-9.]+ → [0-9.]+\)", rows[0]), text


@pytest.mark.postgres
@pytest.mark.timeout(240)
async def test_the_peers_benchmark_spreads_the_watchers_over_postgresql_replicas(tmp_path: Path) -> None:
    """`bench.peers --replicas`, tiny: the streams dealt over two replicas of one PostgreSQL database,
    each replica handing the change to its own watchers, every change seen by all."""
    if SKIP_POSTGRES:
        pytest.skip("DSPY_REGISTRY_SKIP_POSTGRES=1")
    done = _python_m(
        "bench.peers",
        *("--only", "fanout", "--peers", "etcd", "--replicas", "2"),
        *(
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
        ),
        timeout=230,
    )
    lines = _json_lines(done.stdout)
    spread = [line for line in lines if line["figure"] == "fanout_replicas"]
    # After the peers; the CPU read from both servers. Each client says a revision reached all its
    # streams only once every one of them had it: the change made through the first replica reached
    # the watchers of the second through it.
    assert [(f["replicas"], f["servers"], f["streams"]) for f in spread] == [(2, 2, 20)]
    assert all(0 < f["from_call_start_p50_ms"] <= f["from_call_start_p99_ms"] for f in spread)
    page = (tmp_path / "benchmarks.md").read_text()
    assert "## Watch fan-out over PostgreSQL replicas" in page
    assert re.search(r"^\| 2 \| [0-9.]+ / [0-9.]+ ms \|", page, flags=re.M), page


def test_the_registration_parts_benchmark_measures_each_part() -> None:
    """`python -m bench.register_parts`, tiny: it reaches into the SQLite store (its COMMITs, its
    pragmas), so a renamed internal fails here, not in the next engineer's profile."""
    done = _python_m("bench.register_parts", "--registrations", "64", "--seconds", "0.5")
    lines = {line["part"]: line for line in _json_lines(done.stdout)}
    assert list(lines) == ["servicer", "floor", "grpc", "wal"], done.stdout
    assert lines["servicer"]["registrations"] == 64 and lines["servicer"]["batch"] >= 1
    for part in ("floor", "grpc", "wal"):
        assert lines[part]["calls"] > 0 and lines[part]["cpu_us_per_call"] > 0, lines[part]
    assert lines["wal"]["frames_per_call"] > 0 and lines["wal"]["frames_by_btree"], lines["wal"]

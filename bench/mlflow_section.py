"""The MLflow section of docs/benchmarks.md (`python -m bench.peers --only mlflow` measures it alone).

`section` measures it (bench/mlflow_peer.py: the servers, the workloads, the rounds), printing
one JSON line per figure, and writes it; `write_from` writes it again from a run's saved lines;
`render` is the text. bench/page.py keeps the page's other section as it was.
"""

from __future__ import annotations

import signal
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import fixtures, page
from .common import emit
from .mlflow_peer import (
    MLFLOW_VERSION,
    PEERS,
    REGISTER_CLIENTS,
    REGISTER_SECONDS,
    RESOLVE_CONCURRENCY,
    RESOLVE_SECONDS,
    SETTINGS,
    STOCK,
    VERSIONS,
    WARMUP_SECONDS,
    run,
)
from .servers import Options

# Targets from issue 19, as ratios measured in the same run.
RESOLVE_TARGET_X_MLFLOW = 20.0
RESOLVE_TARGET_OF_ECHO = 0.9
REGISTER_TARGET_X_MLFLOW = 10.0


NAMES = {
    "mlflow:workers-1": "MLflow, `--workers 1`, keep-alive",
    "mlflow:default": "MLflow, default workers (4), a connection per request",
    STOCK: "MLflow as it comes (4 workers, its job runner on)",
    "registry": "dspy-registry",
    "echo": "bare grpc.aio (bench/echo.py)",
}
Key = tuple[str, str, int]  # (peer, workload, concurrency or clients; 0 for neither)


def _key(record: dict[str, Any]) -> Key:
    return record["peer"], record["workload"], int(record.get("concurrency") or record.get("clients") or 0)


def _median(rs: list[dict[str, Any]], field: str) -> float:
    return float(statistics.median(r[field] for r in rs))


def _figures(records: list[dict[str, Any]]) -> dict[Key, list[dict[str, Any]]]:
    by: dict[Key, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("figure") == "mlflow":
            by.setdefault(_key(r), []).append(r)
    return by


def _best(
    by: dict[Key, list[dict[str, Any]]], workload: str, n: int, field: str, *, low: bool = False
) -> str | None:
    """The MLflow setting with the better median of `field` (the higher, or with `low` the lower)."""
    found = [(_median(by[(p, workload, n)], field), p) for p in SETTINGS_PEERS if (p, workload, n) in by]
    if not found:
        return None
    return (min(found) if low else max(found))[1]


SETTINGS_PEERS = tuple(f"mlflow:{setting}" for setting in SETTINGS)


def _n(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}".replace(",", " ")


def _rate(rs: list[dict[str, Any]], unit: str) -> str:
    rate, p50, p99 = (_median(rs, f) for f in ("throughput_per_s", "p50_ms", "p99_ms"))
    return f"{_n(rate)} {unit}, p50 {_n(p50)} / p99 {_n(p99)} ms"


def _registered(rs: list[dict[str, Any]]) -> str:
    made = " and ".join(str(r["versions"]) for r in rs)
    ok = all(
        r["versions_unique"] and r["versions_gapless"] and r["stored"] == r["versions_assigned"] for r in rs
    )
    errors = sum(r["errors"] for r in rs)
    return f"{made} made (by round); {'unique and gapless' if ok else 'NOT unique and gapless'}" + (
        f"; {errors} refused" if errors else ""
    )


def _memory(rs: list[dict[str, Any]]) -> str:
    jobs = _median(rs, "jobs_rss_mib")
    text = f"{_n(_median(rs, 'rss_mib'))} MiB (PSS {_n(_median(rs, 'pss_mib'))})"
    return text + (f", of which its job runner {_n(jobs)}" if jobs else "")


def _when(before: dict[str, Any]) -> str:
    """The run's date, as its first line recorded it (a saved run may not have it)."""
    return f"{before['at'][:10]}, " if before.get("at") else ""


def _shared(before: dict[str, Any]) -> str:
    """What the load says of the figures. The load average counts the benchmark's own processes, so
    only the load before it started says whether other work shared the machine: the run's, when
    this section came after the fan-out's."""
    if before.get("run_load_average_1m", before["load_average_1m"]) < before["cpus"]:
        return ""
    return " (shared with other work: compare the ratios)"


def _load(before: dict[str, Any]) -> str:
    run = before.get("run_load_average_1m")
    return f"{before['load_average_1m']} at the start" + (
        f" ({run} when the run began, before the fan-out)" if run is not None else ""
    )


def _x(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.1f}×" if theirs else "—"


def render(
    records: list[dict[str, Any]], before: dict[str, Any], after: dict[str, Any], seconds: float
) -> list[str]:
    """The MLflow section of docs/benchmarks.md, from this section's JSON lines."""
    by = _figures(records)
    rounds = max((r["round"] for r in records if r.get("figure") == "mlflow"), default=0)
    version = next((r["mlflow"] for r in records if r.get("mlflow")), MLFLOW_VERSION)
    lines = [
        "## MLflow's model registry: registration, resolution, memory, start",
        "",
        f"MLflow {version} from PyPI in its own virtual environment, `mlflow server` on a SQLite backend",
        "store and a local artifact root in a throwaway directory; dspy-registry on SQLite with",
        "authentication on and the default environments, so every registration also **auto-deploys",
        "to development**; the bare grpc.aio echo server as the ceiling of a read. Every server fresh",
        "per round, on loopback; the load generators in processes of their own: bench/peer_load.py",
        "(aiohttp) for MLflow's REST API and every registration, bench/loadgen.py (grpc.aio, raw bytes,",
        "2 connections) for the gRPC reads. MLflow at its best: its default multi-worker uvicorn stalls",
        "about 40 ms on a kept-alive connection, so it runs in two settings and each workload takes the",
        "better one (named in the table); in both its job runner is off",
        "(`MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`: seven huey consumers polling for GenAI jobs,",
        "nothing the model registry uses, that take CPU from the server on two cores). MLflow as it",
        "comes, job runner on, is started once, for its memory and start only. Figures are medians over",
        f"{rounds} rounds, the peers' order reversed round by round (bench/mlflow_peer.py).",
        "",
        f"Machine: {before['cpu']}, {before['cpus']} CPUs; load average {_load(before)},",
        f"{after['load_average_1m']} at the end{_shared(before)}. The section took",
        f"{seconds / 60:.1f} min; `python -m bench.peers --only mlflow` measures it alone.",
        "",
    ]
    if min(before["load_average_1m"], after["load_average_1m"]) > 2 * before["cpus"]:
        lines += [
            "The machine was busy far beyond its cores throughout: every server got a fraction of a",
            "core, so rates, latencies and start times are far from a quiet machine's and vary round",
            "by round; the ratios, each measured in the same run, are the figures to read.",
            "",
        ]
    lines += [
        "### Registration: each version numbered by the server, durable when acknowledged",
        "",
        f"Up to {VERSIONS} versions one after another, then up to {VERSIONS} (of another model) from",
        f"{REGISTER_CLIENTS} clients at once, none started after {REGISTER_SECONDS:g} s. MLflow: a",
        f"{fixtures.ARTIFACT_BYTES // 1024} KB artifact uploaded through its artifact proxy into a run's",
        "artifacts, then create_model_version naming that run (MLflow 3 refuses a source outside the",
        f"run's artifacts); dspy-registry: RegisterProgram with a {fixtures.ARTIFACT_BYTES // 1024} KB artifact, no version",
        "given (the server bumps the patch). No retries. *Unique and gapless*: the versions handed out",
        "are 1..N (0.0.1..0.0.N) with none twice or missing, and the store lists N.",
        "",
        "| workload | MLflow (better setting) | dspy-registry, auto-deploy on | ratio (target) |",
        "|---|---|---|---|",
    ]
    for workload, n, label, target in (
        ("register_sequential", 1, "one client", None),
        ("register_concurrent", REGISTER_CLIENTS, f"{REGISTER_CLIENTS} clients", REGISTER_TARGET_X_MLFLOW),
    ):
        best = _best(by, workload, n, "throughput_per_s")
        ours = by.get(("registry", workload, n))
        if best is None or ours is None:
            continue
        theirs = by[(best, workload, n)]
        ratio = _x(_median(ours, "throughput_per_s"), _median(theirs, "throughput_per_s"))
        goal = f" (≥ {target:g}×)" if target else ""
        lines.append(
            f"| {label} | {_rate(theirs, 'versions/s')}; {_registered(theirs)} ({NAMES[best]}) | "
            f"{_rate(ours, 'versions/s')}; {_registered(ours)} | {ratio}{goal} |"
        )
    lines += [
        "",
        "### Resolve: MLflow's alias lookup against GetProgramVersion by environment",
        "",
        "MLflow: GET /api/2.0/mlflow/registered-models/alias (what get_model_version_by_alias sends)",
        "for alias `development` of a model with 4 versions; dspy-registry: GetProgramVersion of",
        "program `p` in environment development (the serving path; 4 versions, each auto-deployed);",
        f"the ceiling: bench/echo.py echoing the same request's bytes. {RESOLVE_SECONDS:g} s per figure",
        f"after {WARMUP_SECONDS:g} s of warm-up.",
        "",
        "| in flight | MLflow (better setting) | dspy-registry | bare grpc.aio | ours ÷ MLflow (target ≥ "
        f"{RESOLVE_TARGET_X_MLFLOW:g}×) | ours ÷ echo (target ≥ {RESOLVE_TARGET_OF_ECHO:g}) |",
        "|---|---|---|---|---|---|",
    ]
    for n in RESOLVE_CONCURRENCY:
        best = _best(by, "resolve", n, "throughput_per_s")
        ours, echo = by.get(("registry", "resolve", n)), by.get(("echo", "resolve", n))
        if best is None or ours is None:
            continue
        theirs = by[(best, "resolve", n)]
        rate = _median(ours, "throughput_per_s")
        of_echo = f"{rate / _median(echo, 'throughput_per_s'):.2f}" if echo else "—"
        lines.append(
            f"| {n} | {_rate(theirs, 'req/s')} ({NAMES[best]}) | {_rate(ours, 'req/s')} | "
            f"{_rate(echo, 'req/s') if echo else '—'} | {_x(rate, _median(theirs, 'throughput_per_s'))} | {of_echo} |"
        )
    lines += [
        "",
        "### Memory and start",
        "",
        "Memory: the whole process tree (MLflow forks its uvicorn workers and a job runner of huey",
        "consumers), the sum of RSS over its processes (PSS in brackets counts pages the forks share",
        f"once); idle after the preload, and the peak sampled during the resolve at {RESOLVE_CONCURRENCY[-1]} in",
        "flight. Start: from the process's start until MLflow's GET /health answers 200, or until",
        "grpc.health.v1 says SERVING, each asked every 50 ms (the gRPC channel retries a refused",
        "connection every 50 ms, not after grpc's default back-off of 1 s growing 1.6× per try).",
        "",
        "| figure | " + " | ".join(NAMES[p] for p in PEERS) + " | MLflow's better ÷ dspy-registry |",
        "|---|" + "---|" * (len(PEERS) + 1),
    ]
    for workload, label, field, show in (
        ("memory_idle", "memory, idle", "rss_mib", _memory),
        ("memory_load", "memory, under load", "rss_mib", _memory),
        (
            "start",
            "start to healthy",
            "seconds_to_healthy",
            lambda rs: f"{_median(rs, 'seconds_to_healthy'):.1f} s",
        ),
    ):
        cells = [show(by[(p, workload, 0)]) if (p, workload, 0) in by else "—" for p in PEERS]
        best = _best(by, workload, 0, field, low=True)
        ours = by.get(("registry", workload, 0))
        ratio = _x(_median(by[(best, workload, 0)], field), _median(ours, field)) if best and ours else "—"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratio} |")
    lines += [
        "",
        "Round by round (rates: registrations one client / 16 clients; resolves at "
        + " / ".join(str(n) for n in RESOLVE_CONCURRENCY)
        + " in flight; start to healthy):",
        "",
        "| round | " + " | ".join(NAMES[p] for p in PEERS) + " |",
        "|---|" + "---|" * len(PEERS),
    ]
    for round_ in range(1, rounds + 1):
        cells = []
        for p in PEERS:
            mine = {
                _key(r)[1:]: r for rs in by.values() for r in rs if r["peer"] == p and r["round"] == round_
            }
            keys = [("register_sequential", 1), ("register_concurrent", REGISTER_CLIENTS)]
            keys += [("resolve", n) for n in RESOLVE_CONCURRENCY]
            rates = [f"{mine[k]['throughput_per_s']:g}" if k in mine else "—" for k in keys]
            start = mine.get(("start", 0))
            cells.append(" / ".join(rates) + (f"; {start['seconds_to_healthy']:.1f} s" if start else ""))
        lines.append(f"| {round_} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def readme_lines(records: list[dict[str, Any]], before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The README's MLflow figures (its `readme-mlflow` block): each against MLflow's better setting,
    medians over the rounds, and where they came from."""
    by = _figures(records)
    version = next((r["mlflow"] for r in records if r.get("mlflow")), MLFLOW_VERSION)
    lines = [
        f"| MLflow's model registry ({_when(before)}load {before['load_average_1m']} → "
        f"{after['load_average_1m']}) | MLflow {version}, its better setting | dspy-registry | against MLflow |",
        "|---|---|---|---|",
    ]
    n = RESOLVE_CONCURRENCY[-1]
    resolve = f"resolve, {n} in flight: alias lookup / GetProgramVersion by environment"
    register = f"durable registration, {REGISTER_CLIENTS} clients, auto-deploy on"
    for label, workload, k, field, unit, better in (
        (resolve, "resolve", n, "throughput_per_s", "req/s", "the rate"),
        (register, "register_concurrent", REGISTER_CLIENTS, "throughput_per_s", "versions/s", "the rate"),
        ("memory, idle", "memory_idle", 0, "rss_mib", "MiB", "less"),
        ("start to healthy", "start", 0, "seconds_to_healthy", "s", "faster"),
    ):
        low = better != "the rate"  # memory and start: the lower the better
        best = _best(by, workload, k, field, low=low)
        ours = by.get(("registry", workload, k))
        if best is None or ours is None:
            continue
        theirs, mine = _median(by[(best, workload, k)], field), _median(ours, field)
        ratio = f"{_x(theirs, mine)} {better}" if low else f"{_x(mine, theirs)} {better}"
        lines.append(f"| {label} | {_n(theirs)} {unit} | {_n(mine)} {unit} | {ratio} |")
    return lines


def section(
    rounds: int,
    machine: Callable[[], dict[str, Any]],
    path: Path | None,
    readme: Path | None = None,
    run_load: float | None = None,
) -> None:
    """Measure the section (its JSON lines on stdout) and, unless `path` is None, write it there (and
    the README's block, if `readme` is given). `run_load`: the load average when a run that measured
    the fan-out first began."""
    # A stopped run still stops the servers it started (their `finally`), MLflow's forks included.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.monotonic()
    before = {"figure": "machine", "section": "mlflow", "at": _now(), **machine()}
    if run_load is not None:
        before["run_load_average_1m"] = run_load
    emit(before)
    records = run(rounds, Options(seconds=0, warmup=0, channels=1, server_log_level="warning", postgres=""))
    after = {"figure": "machine", "section": "mlflow", "at": _now(), **machine()}
    emit(after)
    seconds = round(time.monotonic() - started)  # as saved: `write_from` must say the same
    done = {"figure": "section", "section": "mlflow", "seconds": round(seconds)}
    if path is not None:
        page.write(path, "mlflow", render(records, before, after, seconds))
        done["written"] = str(path)
        if readme is not None:
            page.write_block(readme, "readme-mlflow", readme_lines(records, before, after))
    emit(done)


def write_from(saved: list[dict[str, Any]], path: Path, readme: Path | None = None) -> None:
    """Write the section (and the README's block, if `readme` is given) from a saved run's JSON
    lines, if they hold it."""
    machines = [r for r in saved if r.get("figure") == "machine" and r.get("section") == "mlflow"]
    records = [r for r in saved if r.get("figure") == "mlflow"]
    if not records or not machines:
        return
    run = next((r for r in saved if r.get("figure") == "machine" and "section" not in r), None)
    if run is not None and "run_load_average_1m" not in machines[0]:  # a run saved before it was recorded
        machines[0] = {**machines[0], "run_load_average_1m": run["load_average_1m"]}
    took = next((r["seconds"] for r in saved if r.get("figure") == "section" and r["section"] == "mlflow"), 0)
    page.write(path, "mlflow", render(records, machines[0], machines[-1], took))
    if readme is not None:
        page.write_block(readme, "readme-mlflow", readme_lines(records, machines[0], machines[-1]))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")

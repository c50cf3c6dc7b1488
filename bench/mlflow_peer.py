"""The MLflow section of `make bench-peers` (`python -m bench.peers --only mlflow` runs it alone).

MLflow's model registry is what users already run for versions and aliases. It comes from PyPI,
pinned (MLFLOW_VERSION), into a virtual environment of its own, never the project's .venv:
build/bench-peers/mlflow-venv, made on first use (`python -m venv`, then `pip install
mlflow==MLFLOW_VERSION`) and reused while the version installed there is the pinned one.

Each measurement starts a fresh server in a throwaway directory, on a loopback port:
`mlflow server` on a SQLite backend store with a local artifact root (artifacts served through
its proxy, its default), or dspy-registry on SQLite with authentication on and the default
environments (so each registration also auto-deploys to development), or bench/echo.py, the
bare grpc.aio ceiling. MLflow is measured at its best, in two settings, since its default
multi-worker uvicorn stalls about 40 ms on a request that reuses a kept-alive connection
(issue 19):

  workers-1   `--workers 1`, the client keeps its connections alive
  default     MLflow's default workers (4), the client opens a connection per request

both with its job runner off (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: seven huey consumers
that poll for GenAI jobs, nothing the model registry uses, and on two cores their polling takes
CPU from the server), and each workload compares dspy-registry against the better of the two
(the page says which). MLflow as it comes (`stock`: default workers, job runner on) is started
too, in the first round, for its start and idle memory only.

Per server, in this order: the time from the process's start until it is healthy (MLflow:
GET /health answers 200; ours and echo: grpc.health.v1 SERVING); the preload (one model with
4 versions, alias `development` on the last; ours: program `p` 1.0.0-1.3.0, each auto-deployed
to development); the idle memory of its whole process tree (MLflow forks workers: the sum of
VmRSS over the tree, and of PSS, which counts pages shared between forks once); then

  register    up to VERSIONS versions one after another, then up to VERSIONS more (another
              model) from REGISTER_CLIENTS concurrent clients, none started after
              REGISTER_SECONDS (so a slow server registers fewer and the run stays bounded);
              the server numbers them, and they must come back unique and gapless
              (bench/peer_load.py). MLflow: a 10 KB artifact uploaded through its artifact
              proxy, then create_model_version; ours: RegisterProgram with a 10 KB artifact.
  resolve     each of RESOLVE_CONCURRENCY calls in flight for RESOLVE_SECONDS: MLflow's alias
              lookup (get_model_version_by_alias's REST route) against GetProgramVersion by
              environment (bench.loadgen's `get_env`, the serving path) and the echo ceiling
              (`echo`). The tree's memory is sampled meanwhile: its peak is "under load".

The load generators (bench/peer_load.py for MLflow's HTTP and every registration, bench.loadgen
for the gRPC reads) run in processes of their own. The peers take turns, in an order reversed
round by round, since the machine's load drifts. Every figure is a JSON line; `render` makes the
section of docs/benchmarks.md from them (bench/page.py keeps the other section).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import fixtures, page
from .common import emit
from .fanout import server_pid
from .servers import ROOT, Options, free_port, preload, process, registry_server

MLFLOW_VERSION = "3.17.2"
VENV = ROOT / "build" / "bench-peers" / "mlflow-venv"
VERSIONS = 1_000
REGISTER_CLIENTS = 16
REGISTER_SECONDS = 20.0  # no registration starts after this: a slow server registers fewer
RESOLVE_CONCURRENCY = (16, 64)
RESOLVE_SECONDS = 5.0
WARMUP_SECONDS = 1.0
ROUNDS = 2
IDLE_SETTLE_SECONDS = 1.0  # after the preload, before the idle memory is read
# MLflow's first start in a new venv compiles its bytecode; on two busy cores its 15 processes of
# the stock setting took 117 s to answer.
STARTUP_TIMEOUT_S = 300.0
# How MLflow runs: (its --workers, or None for its default; whether the client keeps connections).
HUEY_STORAGE = b"_MLFLOW_HUEY_STORAGE_PATH"  # mlflow.server.constants.HUEY_STORAGE_PATH_ENV_VAR
SETTINGS: dict[str, tuple[int | None, bool]] = {"workers-1": (1, True), "default": (None, False)}
# MLflow as it comes (default workers, its job runner on): started for its memory and start only.
STOCK = "mlflow:stock"
PEERS = ("mlflow:workers-1", "mlflow:default", STOCK, "registry", "echo")
# dspy-registry's reads, like `make bench`'s: two channels (connections) from the load generator.
GRPC_CHANNELS = 2
# Targets from issue 19, as ratios measured in the same run.
RESOLVE_TARGET_X_MLFLOW = 20.0
RESOLVE_TARGET_OF_ECHO = 0.9
REGISTER_TARGET_X_MLFLOW = 10.0


# -- MLflow's environment and server --------------------------------------------------------------


def venv() -> Path:
    """The MLflow virtual environment's python, made or upgraded to MLFLOW_VERSION when needed."""
    python = VENV / "bin" / "python"
    if python.exists() and installed_version(python) == MLFLOW_VERSION:
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    print(f"installing mlflow=={MLFLOW_VERSION} into {VENV} (once)", file=sys.stderr, flush=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"mlflow=={MLFLOW_VERSION}"], check=True)
    return python


def installed_version(python: Path) -> str | None:
    code = "import importlib.metadata as m; print(m.version('mlflow'))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


@contextlib.contextmanager
def mlflow_server(python: Path, workers: int | None, *, jobs: bool) -> Iterator[tuple[str, int, float]]:
    """`mlflow server` on SQLite in a throwaway directory: (base URL, pid, seconds to healthy).

    `jobs`: its job runner on (its default), or off (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false).
    """
    port = free_port()
    with (
        tempfile.TemporaryDirectory(prefix="dspy-registry-bench-mlflow-") as tmp,
        open(Path(tmp, "log"), "w+b") as log,
    ):
        command = [str(python), "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--backend-store-uri", f"sqlite:///{tmp}/mlflow.db"]
        command += ["--artifacts-destination", f"{tmp}/artifacts"]
        if workers is not None:
            command += ["--workers", str(workers)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "true" if jobs else "false"
        started = time.monotonic()
        # A session of its own: the workers it forks are stopped with it, as one group.
        server = subprocess.Popen(command, cwd=tmp, env=env, stdout=log, stderr=log, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        huey: str | None = None
        try:
            _wait_healthy(server, base, log)
            seconds = time.monotonic() - started
            huey = _huey_storage(server.pid)
            yield base, server.pid, seconds
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(20.0)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
            # Its workers may outlive the parent by a moment: none may hold the port or the CPU.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            if huey is not None:  # outside the throwaway directory, and MLflow leaves it behind
                shutil.rmtree(huey, ignore_errors=True)


def _huey_storage(pid: int) -> str | None:
    """Where MLflow's job runner keeps its queues: a directory it makes in /dev/shm per start."""
    for p in tree(pid):
        try:
            environ = Path(f"/proc/{p}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for entry in environ:
            if entry.startswith(HUEY_STORAGE + b"="):
                return entry.split(b"=", 1)[1].decode()
    return None


def _wait_healthy(server: subprocess.Popen[bytes], base: str, log: Any) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if server.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"mlflow exited with {server.returncode}: {log.read()[-3000:]!r}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=1.0) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            log.seek(0)
            raise RuntimeError(f"mlflow not healthy after {STARTUP_TIMEOUT_S}s: {log.read()[-3000:]!r}")
        time.sleep(0.05)


# -- memory of a process tree ----------------------------------------------------------------------


def tree(pid: int) -> list[int]:
    """`pid` and every process descended from it (read from /proc: Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def _status_kib(pid: int, path: str, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:  # it ended in between
        pass
    return 0


def _is_job_runner(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"huey" in argv or b"_job_runner" in argv


def tree_memory_mib(pid: int) -> dict[str, float]:
    """The sum over the tree of RSS (pages shared between forks counted in each) and of PSS.

    `jobs_rss_mib` is the part of MLflow's job runner (its huey consumers), which it starts by
    default beside the web server's workers.
    """
    pids = tree(pid)
    rss = {p: _status_kib(p, "status", "VmRSS:") for p in pids}
    pss = sum(_status_kib(p, "smaps_rollup", "Pss:") for p in pids)
    jobs = sum(kib for p, kib in rss.items() if _is_job_runner(p))
    return {
        "rss_mib": round(sum(rss.values()) / 1024, 1),
        "pss_mib": round(pss / 1024, 1),
        "jobs_rss_mib": round(jobs / 1024, 1),
        "processes": len(pids),
    }


@contextlib.contextmanager
def peak_memory(pid: int, every: float = 0.25) -> Iterator[dict[str, float]]:
    """Samples the tree's memory until the block ends; the dict then holds the peak."""
    peak: dict[str, float] = {"rss_mib": 0.0, "pss_mib": 0.0, "jobs_rss_mib": 0.0, "processes": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(every):
            now = tree_memory_mib(pid)
            if now["rss_mib"] > peak["rss_mib"]:
                peak.update(now)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        stop.set()
        sampler.join()


# -- the load generators ---------------------------------------------------------------------------


def _load(module: str, args: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _grpc_reads(target: str, workload: str, concurrency: int, token_file: Path | None) -> dict[str, Any]:
    args = ["--target", target, "--workload", workload, "--concurrency", str(concurrency)]
    args += [
        "--seconds",
        str(RESOLVE_SECONDS),
        "--warmup",
        str(WARMUP_SECONDS),
        "--channels",
        str(GRPC_CHANNELS),
    ]
    if token_file is not None:
        args += ["--token-file", str(token_file)]
    return _load("bench.loadgen", args)


def _registrations(peer: str, target: str, name: str, clients: int, extra: list[str]) -> dict[str, Any]:
    args = [
        "register",
        "--peer",
        peer,
        "--target",
        target,
        "--name",
        name,
        "--max-seconds",
        str(REGISTER_SECONDS),
    ]
    return _load("bench.peer_load", [*args, "--versions", str(VERSIONS), "--clients", str(clients), *extra])


# -- one peer, all workloads -----------------------------------------------------------------------


def _workloads(
    peer: str,
    pid: int,
    register: Callable[[str, int], dict[str, Any]] | None,
    resolve: Callable[[int], dict[str, Any]],
) -> Iterator[dict[str, Any]]:
    time.sleep(IDLE_SETTLE_SECONDS)
    yield {"workload": "memory_idle", **tree_memory_mib(pid)}
    if register is not None:
        yield {"workload": "register_sequential", **register("seq", 1)}
        yield {"workload": "register_concurrent", **register("conc", REGISTER_CLIENTS)}
    for concurrency in RESOLVE_CONCURRENCY:
        with peak_memory(pid) as peak:
            result = resolve(concurrency)
        yield {"workload": "resolve", **result}
    yield {"workload": "memory_load", **peak, "during": f"resolve, {RESOLVE_CONCURRENCY[-1]} in flight"}


def measure(peer: str, python: Path | None, options: Options) -> Iterator[dict[str, Any]]:
    """Start `peer` fresh and run every workload on it; one record per figure."""
    if peer == STOCK:
        assert python is not None
        with mlflow_server(python, None, jobs=True) as (base, pid, seconds):
            yield {"workload": "start", "seconds_to_healthy": round(seconds, 2)}
            time.sleep(IDLE_SETTLE_SECONDS)
            yield {"workload": "memory_idle", **tree_memory_mib(pid)}
        return
    if peer.startswith("mlflow:"):
        assert python is not None
        workers, keep_alive = SETTINGS[peer.split(":", 1)[1]]
        flags = [] if keep_alive else ["--no-keep-alive"]
        # Its job runner (huey consumers polling for GenAI jobs) serves nothing of the model
        # registry, and on two cores its polling takes CPU from the server: at its best, off.
        with mlflow_server(python, workers, jobs=False) as (base, pid, seconds):
            yield {"workload": "start", "seconds_to_healthy": round(seconds, 2)}
            _load("bench.peer_load", ["preload", "--target", base])
            yield from _workloads(
                peer,
                pid,
                lambda name, clients: _registrations("mlflow", base, name, clients, flags),
                lambda n: _load(
                    "bench.peer_load",
                    ["resolve", "--target", base, "--concurrency", str(n), "--seconds", str(RESOLVE_SECONDS)]
                    + ["--warmup", str(WARMUP_SECONDS), *flags],
                ),
            )
        return
    if peer == "echo":
        started = time.monotonic()
        with process([sys.executable, "-m", "bench.echo"]) as target:
            yield {"workload": "start", "seconds_to_healthy": round(time.monotonic() - started, 2)}
            pid = server_pid(target)
            yield from _workloads(peer, pid, None, lambda n: _grpc_reads(target, "echo", n, None))
        return
    started = time.monotonic()
    with registry_server("sqlite", options) as registry:
        yield {"workload": "start", "seconds_to_healthy": round(time.monotonic() - started, 2)}
        preload(registry, fixtures.PRELOAD_VERSIONS)  # each auto-deployed: development serves 1.3.0
        token = ["--token-file", str(registry.token_file)] if registry.token_file else []
        yield from _workloads(
            peer,
            server_pid(registry.target),
            lambda name, clients: _registrations("registry", registry.target, name, clients, token),
            lambda n: _grpc_reads(registry.target, "get_env", n, registry.token_file),
        )


def run(rounds: int, options: Options, peers: tuple[str, ...] = PEERS) -> list[dict[str, Any]]:
    """Every peer, `rounds` times, the order reversed round by round; emits and returns the records."""
    python = venv() if any(p.startswith("mlflow:") for p in peers) else None
    version = installed_version(python) if python else None
    records: list[dict[str, Any]] = []
    for round_ in range(rounds):
        order = peers if round_ % 2 == 0 else tuple(reversed(peers))
        for peer in order:
            if peer == STOCK and round_ > 0:
                continue  # its start and idle memory, once: the slowest start, and nothing to compare
            for record in measure(peer, python, options):
                record = {"figure": "mlflow", "peer": peer, "round": round_ + 1, **record}
                if peer.startswith("mlflow:"):
                    record["mlflow"] = version
                emit(record)
                records.append(record)
    return records


# -- the section of docs/benchmarks.md --------------------------------------------------------------

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
        f"Machine: {before['cpu']}, {before['cpus']} CPUs; load average {before['load_average_1m']} at the start,",
        f"{after['load_average_1m']} at the end (shared with other work: compare the ratios). The section took",
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
        "grpc.health.v1 says SERVING.",
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


def section(rounds: int, machine: Callable[[], dict[str, Any]], path: Path | None) -> None:
    """Measure the section (its JSON lines on stdout) and, unless `path` is None, write it there."""
    # A stopped run still stops the servers it started (their `finally`), MLflow's forks included.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.monotonic()
    before = {"figure": "machine", "section": "mlflow", "at": _now(), **machine()}
    emit(before)
    records = run(rounds, Options(seconds=0, warmup=0, channels=1, server_log_level="warning", postgres=""))
    after = {"figure": "machine", "section": "mlflow", "at": _now(), **machine()}
    emit(after)
    seconds = time.monotonic() - started
    done = {"figure": "section", "section": "mlflow", "seconds": round(seconds)}
    if path is not None:
        page.write(path, "mlflow", render(records, before, after, seconds))
        done["written"] = str(path)
    emit(done)


def write_from(saved: list[dict[str, Any]], path: Path) -> None:
    """Write the section from a saved run's JSON lines, if they hold it."""
    machines = [r for r in saved if r.get("figure") == "machine" and r.get("section") == "mlflow"]
    records = [r for r in saved if r.get("figure") == "mlflow"]
    if not records or not machines:
        return
    took = next((r["seconds"] for r in saved if r.get("figure") == "section" and r["section"] == "mlflow"), 0)
    page.write(path, "mlflow", render(records, machines[0], machines[-1], took))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")

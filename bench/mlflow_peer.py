"""MLflow's model registry beside dspy-registry: the servers and workloads of the MLflow section.

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
round by round, since the machine's load drifts. Every figure is a JSON line; bench/mlflow_section.py
makes the section of docs/benchmarks.md from them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import fixtures
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

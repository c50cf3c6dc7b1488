"""`python -m bench fleet`: a fleet of simulated pods on replicas of one PostgreSQL, while people deploy.

Starts `--replicas` servers on a throwaway PostgreSQL database (each with its Prometheus endpoint),
prepares program `p` (watched by the fleet, in staging) and program `q` (deployed by the driver, in
development, watched by no one), then:

  idle       `--deployments` CreateDeployment calls of `q`, one after the other: p50/p99
  fleet      `--pods` pods (bench/fleet_pods.py) over `--processes` client processes, each pod
             watching `p` in staging through round_robin over every replica, ACKing, heartbeating
             every `--heartbeat` (10 s) and reporting a metric window every 5 s (the client's
             defaults), retrying a
             report that fails UNAVAILABLE as the client does
  load       after `--settle` seconds, a window of `--seconds` in which the same CreateDeployment
             calls run again (p50/p99 under fleet load), and the replicas' telemetry is read
             before and after: write RPCs per second, the store's write transactions by kind, the
             database's committed transactions per second, and the CPU the window took (cores) of
             the replicas, of the database's backends serving them and of the pod processes, with
             the load average (the simulator competes with the servers for the same cores); CPU
             and memory per pod, per replica
  converge   a REPLACE deployment of `p`: from the call to the last pod's ACK of it
  rollback   a canary of `p` whose candidate fails every request on 5 % of the pods (the
             environment's error-rate threshold is 0.02): from the call to ROLLED_BACK
  kill       with `--kill-replica follower` (or `leader`): SIGKILL a replica that does not lead
             (or the leader): until its pods' streams resumed on the others, until every survivor
             showed a report of each made after the kill (in heartbeats of 10 s), until another
             replica led, and the sidecars each replica's GetDeploymentStatus counts before, at
             once after, and once the dead replica's rows ran out (45 s at the default heartbeat):
             each pod once; and every stream that broke meanwhile, by status code and details
             (the killed replica's socket, or a survivor's reason). `--contend N` runs N busy
             loops from the kill until the survivors showed every pod: the same death on a
             machine short of CPU
  idle again the fleet stopped, the CreateDeployment calls once more: on a machine shared with other
             work, the idle figure before the fleet alone may have met a quieter minute

One JSON line per figure on stdout; a summary a person reads on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from google.protobuf import duration_pb2

from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc, registry_pb2_grpc

from . import fixtures
from .common import emit, percentile
from .servers import Options, database, free_port, wait_serving

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / ".venv" / "bin" / "dspy-registry"
STATEMENTS = ROOT / "bench" / "statements"  # a sitecustomize that counts the replicas' SQL statements
LOOP_LAG = ROOT / "bench" / "looplag"  # a sitecustomize that times the replicas' event-loop stalls
# The write RPCs (telemetry counts them by method); only CreateDeployment is a store write transaction
# each on this code: reports are held and written in batches.
WRITES = ("ReportSidecarStatus", "ReportMetrics", "CreateDeployment")
ERROR_RATE_THRESHOLD = 0.02
ANALYSIS_INTERVAL_S = 5.0
STARTUP_TIMEOUT_S = 60.0


class Replica:
    def __init__(
        self,
        index: int,
        url: str,
        tmp: Path,
        log_level: str,
        count_statements: bool,
        loop_lag: bool = False,
        telemetry_flush: float = 5.0,
    ) -> None:
        self.name = f"replica-{index}"
        self.statements = tmp / f"{self.name}.statements.json" if count_statements else None
        self.loop_lag = tmp / f"{self.name}.loop-lag.json" if loop_lag else None
        self.address = f"127.0.0.1:{free_port()}"
        self.metrics = f"127.0.0.1:{free_port()}"
        self.token_file = tmp / "admin.token"
        self.log = open(tmp / f"{self.name}.log", "w+b")  # noqa: SIM115 - closed in stop()
        command = [str(SERVER), "serve", "--database", url, "--listen", self.address, "--grace", "2"]
        command += ["--admin-token-file", str(self.token_file), "--metrics-listen", self.metrics]
        command += ["--replica-name", self.name, "--log-level", log_level]
        command += ["--telemetry-flush", f"{telemetry_flush:g}"]
        env = None
        if self.statements is not None:
            path = os.pathsep.join(x for x in (str(STATEMENTS), os.environ.get("PYTHONPATH", "")) if x)
            env = {**os.environ, "PYTHONPATH": path, "BENCH_STATEMENTS_FILE": str(self.statements)}
        if self.loop_lag is not None:
            path = os.pathsep.join(x for x in (str(LOOP_LAG), os.environ.get("PYTHONPATH", "")) if x)
            env = {**os.environ, "PYTHONPATH": path, "BENCH_LOOP_LAG_FILE": str(self.loop_lag)}
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self.log
        )

    def statement_counts(self) -> dict[str, int]:
        """The statements sent to the database so far, by text (bench/statements): {} without them."""
        if self.statements is None or not self.statements.exists():
            return {}
        counts: dict[str, int] = json.loads(self.statements.read_text())["counts"]
        return counts

    def loop_lags(self) -> dict[str, Any]:
        """The event loop's lags, stalls and collector passes so far (bench/looplag): {} without them."""
        if self.loop_lag is None or not self.loop_lag.exists():
            return {}
        found: dict[str, Any] = json.loads(self.loop_lag.read_text())
        found["stalls"], found["long_gcs"] = [], []
        stalls = Path(f"{self.loop_lag}.stalls")
        for line in stalls.read_text().splitlines() if stalls.exists() else []:
            x = json.loads(line)
            found["stalls" if "stall" in x else "long_gcs"].append(x.get("stall") or x["gc"])
        return found

    def wait_serving(self) -> None:
        wait_serving(self.process, self.address, self.log)

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=10) as response:
            text: str = response.read().decode()
            return text

    def cpu_seconds(self) -> float:
        return _cpu_seconds(self.process.pid)

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def _rpc_counts(text: str) -> dict[str, float]:
    """Calls by method, from the RPC latency histogram's `_count` series (whatever its name)."""
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or "_count{" not in line:
            continue
        method = re.search(r'rpc_method="(?:[^"/]+/)?([^"]+)"', line)  # Service/Method, or Method
        if method:
            counts[method.group(1)] = counts.get(method.group(1), 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def _transaction_counts(text: str) -> dict[str, float]:
    """Store transactions committed or tried, by kind (read, write, telemetry), from the store's
    transaction histogram: what the fleet costs the database, as each replica counted it."""
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("dspy_registry_store_transaction_duration_seconds_count{"):
            kind = re.search(r'transaction="([^"]+)"', line)
            if kind:
                counts[kind.group(1)] = counts.get(kind.group(1), 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def _store_transactions(replicas: list[Replica]) -> dict[str, float]:
    """Every replica's store transactions so far, by kind."""
    total: dict[str, float] = {}
    for r in replicas:
        for kind, n in _transaction_counts(r.scrape()).items():
            total[kind] = total.get(kind, 0.0) + n
    return total


def _loop_lag(before: dict[str, Any], after: dict[str, Any], began: float, ended: float) -> dict[str, Any]:
    """One replica's event loop over the window (bench/looplag's counts at its ends, `began` and
    `ended` in seconds since the epoch): its lag p50/p99/max, the stalls of 5 ms or more (how many,
    how long in all, the longest with what the loop ran during them, the stacks most seen in them),
    and the collector's passes by generation (how many, how long in all and at most)."""
    ticks = {int(k): v - before.get("lag_ms", {}).get(k, 0) for k, v in after.get("lag_ms", {}).items()}
    lags = sorted(float(ms) for ms, n in ticks.items() for _ in range(n))
    stalls = [x for x in after.get("stalls", []) if began <= x["end"] <= ended]
    stacks: dict[str, int] = {}
    for x in stalls:
        for text, n in x["stacks"].items():
            stacks[text] = stacks.get(text, 0) + n
    collections = {}
    for generation, a in after.get("gc", {}).items():
        b = before.get("gc", {}).get(generation, {"n": 0, "s": 0.0})
        collections[generation] = {"passes": a["n"] - b["n"], "ms": round((a["s"] - b["s"]) * 1000, 1)}
    long_gcs = [x for x in after.get("long_gcs", []) if began <= x["end"] <= ended]
    others: dict[str, int] = {}
    for x in stalls:
        for text, n in x["others"].items():
            others[text] = others.get(text, 0) + n
    return {
        "ticks": len(lags),
        "lag_p50_ms": percentile(lags, 0.5) if lags else None,
        "lag_p99_ms": percentile(lags, 0.99) if lags else None,
        "lag_max_ms": max((x["ms"] for x in stalls), default=lags[-1] if lags else None),
        "stalls": len(stalls),
        "stalled_ms_per_s": round(sum(x["ms"] for x in stalls) / (ended - began), 1),
        # Of the stalls' time, the loop thread's on a core, and runnable but waiting for one.
        "stalled_ran_ms_per_s": round(sum(x["ran_ms"] for x in stalls) / (ended - began), 1),
        "stalled_queued_ms_per_s": round(sum(x["queued_ms"] for x in stalls) / (ended - began), 1),
        # The stalls in which the loop's thread ran longest (what the replica did, not the machine).
        "longest_on_a_core": [
            {
                "ms": x["ms"],
                "ran_ms": x["ran_ms"],
                "queued_ms": x["queued_ms"],
                "stacks": dict(sorted(x["stacks"].items(), key=lambda i: -i[1])[:4]),
            }
            for x in sorted(stalls, key=lambda x: -x["ran_ms"])[:8]
        ],
        "stall_stacks": dict(sorted(stacks.items(), key=lambda i: -i[1])[:10]),
        "other_threads_in_stalls": dict(sorted(others.items(), key=lambda i: -i[1])[:6]),
        "gc": collections,
        "gc_passes_over_5_ms": [x["ms"] for x in long_gcs],
    }


def _gauge(text: str, name: str, label: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(name) and label in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _stub(address: str) -> tuple[grpc.Channel, Any, Any]:
    channel = grpc.insecure_channel(address)
    return (
        channel,
        registry_pb2_grpc.RegistryServiceStub(channel),  # type: ignore[no-untyped-call]
        deployment_pb2_grpc.DeploymentServiceStub(channel),  # type: ignore[no-untyped-call]
    )


def _prepare(address: str, metadata: Any, analysis_interval: float = ANALYSIS_INTERVAL_S) -> None:
    """Programs p and q (four versions each), p 1.0.0 in staging, staging's rollback thresholds
    (analysed every `analysis_interval` seconds)."""
    channel, registry, deploy = _stub(address)
    with channel:
        registry.RegisterSignature(fixtures.signature_request(), timeout=30, metadata=metadata)
        for n, (program, version) in enumerate((p, v) for p in ("p", "q") for v in fixtures.PRELOAD_VERSIONS):
            request = fixtures.register_request(version, 10**9 + n)
            request.spec.program = program
            registry.RegisterProgram(request, timeout=30, metadata=metadata)
        staging = deploy.GetEnvironment(
            dpb.GetEnvironmentRequest(name="environments/staging"), timeout=30, metadata=metadata
        )
        environment = staging.environment
        rollback = environment.policy.auto_rollback
        rollback.enabled = True
        rollback.error_rate = ERROR_RATE_THRESHOLD
        rollback.min_requests = 50
        rollback.analysis_interval.FromNanoseconds(int(analysis_interval * 1e9))
        rollback.monitoring_window.FromSeconds(60)
        environment.policy.rollback_enabled = True
        deploy.UpdateEnvironment(
            dpb.UpdateEnvironmentRequest(environment=environment, etag=environment.etag),
            timeout=30,
            metadata=metadata,
        )
        deploy.CreateDeployment(fixtures.deploy_request("1.0.0"), timeout=30, metadata=metadata)


def _create_deployments(address: str, metadata: Any, count: int, window_s: float = 0.0) -> list[float]:
    """REPLACE deployments of q to development, alternating two versions, one after the other; each
    call's ms. `count` calls; with `window_s`, spaced over that window and ended with it (a store
    too busy to answer them in time makes fewer, three at least)."""
    channel, _, deploy = _stub(address)
    took: list[float] = []
    began = time.monotonic()
    with channel:
        for n in range(count):
            if window_s and n >= 3 and time.monotonic() - began >= window_s:
                break
            request = dpb.CreateDeploymentRequest(
                program="q",
                version=fixtures.PRELOAD_VERSIONS[n % 2],
                environment="development",
                strategy=dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE),
            )
            started = time.perf_counter()
            deploy.CreateDeployment(request, timeout=120, metadata=metadata)
            took.append((time.perf_counter() - started) * 1000)
            if window_s:
                time.sleep(max(0.0, began + window_s * (n + 1) / count - time.monotonic()))
    return sorted(took)


class Pods:
    """The client processes; each one's stdout lines, read on a thread, in one queue."""

    def __init__(self, args: argparse.Namespace, targets: str, token_file: Path) -> None:
        self.lines: queue.Queue[tuple[int, str]] = queue.Queue()
        # After `mark`: each process's last `broken` line, streams broken by status code and details.
        self.broken: dict[int, dict[str, int]] = {}
        self.processes = []
        share = [
            args.pods // args.processes + (1 if i < args.pods % args.processes else 0)
            for i in range(args.processes)
        ]
        first = 0
        for i, pods in enumerate(share):
            command = [sys.executable, "-m", "bench.fleet_pods", "--targets", targets, "--pods", str(pods)]
            command += [
                "--first",
                str(first),
                "--token-file",
                str(token_file),
                "--open-seconds",
                str(args.open_seconds),
                "--heartbeat",
                str(args.heartbeat),
                "--metrics-interval",
                str(args.metrics_interval),
            ]
            process = subprocess.Popen(
                command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            threading.Thread(target=self._read, args=(i, process), daemon=True).start()
            self.processes.append(process)
            first += pods

    def _read(self, i: int, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.put((i, line.strip()))
        self.lines.put((i, "exited"))

    def _next(self, deadline: float) -> tuple[int, str]:
        """The next line of any process; queue.Empty once past `deadline` (checked first: progress
        lines keep coming, so the queue is never empty)."""
        if time.monotonic() > deadline:
            raise queue.Empty
        i, line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
        return self._took(i, line)

    def _took(self, i: int, line: str) -> tuple[int, str]:
        if line == "exited":
            raise RuntimeError(f"pod process {i} exited")
        if line.startswith("broken "):
            self.broken[i] = json.loads(line.split(" ", 1)[1])
        return i, line

    def broken_by_code(self) -> dict[str, int]:
        """Streams broken since `mark`, all processes together, by status code and details, as the
        processes last said (the lines read so far, then whatever is queued)."""
        while True:
            try:
                self._took(*self.lines.get_nowait())
            except queue.Empty:
                break
        total: dict[str, int] = {}
        for counts in self.broken.values():
            for why, n in counts.items():
                total[why] = total.get(why, 0) + n
        return dict(sorted(total.items(), key=lambda item: -item[1]))

    def wait_all(self, word: str, timeout: float, version: str = "") -> list[list[str]]:
        """Until every process said `word` (for `version`): each one's line, split into words."""
        seen: dict[int, list[str]] = {}
        acked: dict[int, int] = {}  # pods ACKed so far, by process, as each last said
        deadline = time.monotonic() + timeout
        while len(seen) < len(self.processes):
            try:
                i, line = self._next(deadline)
            except queue.Empty:
                raise RuntimeError(
                    f"only {len(seen)} of {len(self.processes)} pod processes said {word} within {timeout:g} s"
                    f" (pods ACKed: {sum(acked.values())})"
                ) from None
            parts = line.split()
            if parts and parts[0] == "acked":
                acked[i] = int(parts[1])
            if parts and parts[0] == word and (not version or parts[1] == version):
                seen[i] = parts
        return list(seen.values())

    def tell(self, line: str) -> None:
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(line + "\n")
            process.stdin.flush()

    def wait_moved(self, streams: int, timeout: float) -> tuple[list[list[int]], list[str]]:
        """After `mark`: until the processes' `moved` lines count `streams` broken streams, every one
        resumed on another replica, and each process with any named them. Each process's last
        `moved` numbers, and the ids."""
        moved: dict[int, list[int]] = {}
        ids: dict[int, list[str]] = {}
        deadline = time.monotonic() + timeout
        while True:
            broken = sum(m[0] for m in moved.values())
            resumed = sum(m[1] for m in moved.values())
            named = all(i in ids for i, m in moved.items() if m[0])
            if broken >= streams and resumed == broken and named:
                return list(moved.values()), [x for i in sorted(ids) for x in ids[i]]
            try:
                i, line = self._next(deadline)
            except queue.Empty:
                raise RuntimeError(
                    f"of {streams} streams on the killed replica, {broken} broke and {resumed} resumed "
                    f"elsewhere within {timeout:g} s; streams broken: {self.broken_by_code()}"
                ) from None
            parts = line.split()
            if parts and parts[0] == "moved":
                moved[i] = [int(x) for x in parts[1:]]
            elif parts and parts[0] == "moved-ids":
                ids[i] = parts[1].split(",")

    def stop(self) -> None:
        for process in self.processes:
            if process.stdin is not None:
                process.stdin.close()
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()

    def cpu_seconds(self) -> float:
        return sum(_cpu_seconds(process.pid) for process in self.processes)


@contextlib.contextmanager
def _database(server: str) -> Iterator[str]:
    options = Options(seconds=0, warmup=0, channels=1, server_log_level="warning", postgres=server)
    with database("postgres", options, Path(tempfile.gettempdir())) as url:
        yield url


def _database_figures(url: str) -> tuple[float, float]:
    """The database's committed transactions so far, and the CPU seconds of the server processes
    (backends) serving it now: the replicas' pools, writers, listeners and leader locks. Their CPU
    is read from /proc, so only with the database on this machine (0 otherwise)."""
    import asyncio

    async def read() -> tuple[float, list[int]]:
        conn = await asyncpg.connect(url)
        try:
            commits = await conn.fetchval(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            )
            pids = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return float(commits), [int(r["pid"]) for r in pids]
        finally:
            await conn.close()

    commits, pids = asyncio.run(read())
    return commits, sum(_cpu_seconds(pid) for pid in pids)


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # gone, or not on this machine
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rollback_seconds(address: str, metadata: Any) -> float:
    channel, _, deploy = _stub(address)
    with channel:
        strategy = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_CANARY)
        strategy.canary.steps.add(weight_percent=50).pause.CopyFrom(duration_pb2.Duration(seconds=600))
        request = dpb.CreateDeploymentRequest(
            program="p", version="1.2.0", environment="staging", strategy=strategy
        )
        started = time.monotonic()
        name = deploy.CreateDeployment(request, timeout=60, metadata=metadata).deployment.name
        while time.monotonic() - started < 300:
            got = deploy.GetDeployment(dpb.GetDeploymentRequest(name=name), timeout=30, metadata=metadata)
            if got.deployment.state == dpb.DEPLOYMENT_STATE_ROLLED_BACK:
                return time.monotonic() - started
            if got.deployment.state not in (
                dpb.DEPLOYMENT_STATE_IN_PROGRESS,
                dpb.DEPLOYMENT_STATE_PENDING_APPROVAL,
            ):
                raise RuntimeError(
                    f"the canary ended {dpb.DeploymentState.Name(got.deployment.state)}, not rolled back"
                )
            time.sleep(0.2)
    raise RuntimeError("the canary was not rolled back within 300 s")


@contextlib.contextmanager
def _contention(processes: int) -> Iterator[None]:
    """`processes` busy loops for the while: a replica's death on a machine short of CPU, as when
    other work shares it (load averages of 24–26 on 2 cores, where the survivors did not keep up)."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def _rows_run_out_s(heartbeat: float, flush: float) -> float:
    """How long after its death a replica's rows of its sidecars still vouch for them: three
    heartbeats and two flushes after their last report (a flush's worth more to be sure); then only
    the survivors' word is left."""
    return 3 * heartbeat + 3 * flush


def _fleet_status(address: str, metadata: Any) -> tuple[list[tuple[str, int]], str]:
    """The fleet as one replica answers GetDeploymentStatus: (sidecar id, last report ns), and the leader."""
    channel, _, deploy = _stub(address)
    with channel:
        got = deploy.GetDeploymentStatus(
            dpb.GetDeploymentStatusRequest(program="p", environment="staging"), timeout=30, metadata=metadata
        )
    return [(x.sidecar_id, x.last_report_time.ToNanoseconds()) for x in got.sidecars], str(got.leader)


def _kill_replica(
    args: argparse.Namespace, replicas: list[Replica], pods: Pods, metadata: Any
) -> dict[str, Any]:
    """SIGKILL a replica under the fleet (the leader, or the last replica that does not lead): how long
    until its pods' streams resumed on the others and the survivors saw each of them report, and how
    many sidecars each replica's GetDeploymentStatus counts before, at once after, and after the dead
    replica's rows ran out (each pod once: `pods`)."""
    texts = [r.scrape() for r in replicas]
    leading = [i for i, t in enumerate(texts) if _gauge(t, "dspy_registry_leader") == 1.0]
    victim = (
        replicas[leading[0]]
        if args.kill_replica == "leader"
        else replicas[max(i for i in range(len(replicas)) if i not in leading)]
    )
    streams = int(_gauge(texts[replicas.index(victim)], "dspy_registry_watch_streams", 'watch="targets"'))
    victim_led = bool(leading) and victim is replicas[leading[0]]
    survivors = [r for r in replicas if r is not victim]
    before = [_fleet_status(r.address, metadata)[0] for r in replicas]
    with _contention(args.contend):
        after = _kill_and_watch(args, victim, survivors, streams, pods, metadata)
    killed, moved, seen, everywhere, led = after.killed, after.moved, after.seen, after.everywhere, after.led
    time.sleep(max(0.0, killed / 1e9 + _rows_run_out_s(args.heartbeat, args.telemetry_flush) - time.time()))
    counted_later = [_fleet_status(r.address, metadata)[0] for r in survivors]

    def counts(views: list[list[tuple[str, int]]]) -> list[int]:
        return [len(v) for v in views]

    def distinct(views: list[list[tuple[str, int]]]) -> list[int]:
        return [len({x for x, _ in v}) for v in views]

    last_seen = max(seen.values(), default=killed)
    return {
        "figure": "fleet_replica_killed",
        "replica": victim.name,
        "leader": victim_led,
        "contending_processes": args.contend,
        "streams_on_it": streams,
        "streams_resumed": sum(m[1] for m in moved),
        "resumed_elsewhere_s": round((max((m[2] for m in moved if m[2]), default=killed) - killed) / 1e9, 2),
        "seen_live_elsewhere_s": round((last_seen - killed) / 1e9, 2),
        "seen_live_elsewhere_heartbeats": round((last_seen - killed) / 1e9 / args.heartbeat, 2),
        "seen_on_every_survivor_s": round((everywhere - killed) / 1e9, 2) if everywhere else None,
        # Killing the leader: until every survivor names another (a follower's death changes none).
        "new_leader_s": round((led - killed) / 1e9, 2) if led and victim_led else None,
        "sidecars_counted_before": counts(before),
        "sidecars_counted_after": counts(after.counted),
        "sidecars_counted_after_rows_ran_out": counts(counted_later),
        "distinct_after": distinct(after.counted) + distinct(counted_later),
        "reports_given_up": sum(m[3] for m in moved),
        "reports_retried": sum(m[4] for m in moved),
        # Every stream that broke from the kill until the survivors showed every pod: the killed
        # replica's (its socket) and any a survivor cut (its hub's reason), by status code.
        "streams_broken_by_code": after.broken,
        "load_average_1m": round(after.load, 1),
    }


@dataclass(frozen=True, kw_only=True)
class _Aftermath:
    """What the driver saw from the kill until the survivors showed every moved pod and another leader."""

    killed: int  # when (ns)
    moved: list[list[int]]  # each pod process's last `moved` numbers
    ids: list[str]  # the pods whose stream broke
    seen: dict[str, int]  # pod -> when a survivor first showed a report of it made after the kill
    everywhere: int  # when every survivor showed all of them (0: not within the wait)
    led: int  # when every survivor named another leader (0: not within the wait)
    counted: list[list[tuple[str, int]]]  # the survivors' sidecars then
    broken: dict[str, int]  # streams broken since the mark, by status code and details
    load: float  # the 1-minute load average then


def _kill_and_watch(
    args: argparse.Namespace,
    victim: Replica,
    survivors: list[Replica],
    streams: int,
    pods: Pods,
    metadata: Any,
) -> _Aftermath:
    """SIGKILL `victim`, then watch the survivors until they show every moved pod and another leader."""
    pods.tell("mark")
    pods.wait_all("marked", timeout=30)
    killed = time.time_ns()
    victim.process.kill()
    victim.process.wait()
    # For reading the survivors' logs (--keep-logs) beside the figure.
    stamp = time.strftime("%H:%M:%S", time.gmtime(killed / 1e9))
    sys.stderr.write(f"SIGKILLed {victim.name} at {stamp}.{killed // 1_000_000 % 1000:03d} UTC\n")
    moved, ids = pods.wait_moved(streams, timeout=120)
    seen: dict[str, int] = {}  # pod -> when a survivor first showed a report of it made after the kill
    everywhere = led = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (everywhere and led):
        answers = [_fleet_status(r.address, metadata) for r in survivors]
        now = time.time_ns()
        views = [dict(sidecars) for sidecars, _ in answers]
        for pod in ids:
            if pod not in seen and any(v.get(pod, 0) >= killed for v in views):
                seen[pod] = now
        if not everywhere and all(v.get(pod, 0) >= killed for v in views for pod in ids):
            everywhere = now
        if not led and all(leader and leader != victim.name for _, leader in answers):
            led = now
        time.sleep(0.25)
    counted = [_fleet_status(r.address, metadata)[0] for r in survivors]
    load = os.getloadavg()[0]
    return _Aftermath(
        killed=killed,
        moved=moved,
        ids=ids,
        seen=seen,
        everywhere=everywhere,
        led=led,
        counted=counted,
        broken=pods.broken_by_code(),
        load=load,
    )


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    base = {
        "pods": args.pods,
        "replicas": args.replicas,
        "client_processes": args.processes,
        "backend": "postgres",
    }
    with tempfile.TemporaryDirectory(prefix="dspy-registry-fleet-") as tmp, _database(args.postgres) as url:
        replicas: list[Replica] = []
        replica_options = (args.server_log_level, args.count_statements, args.loop_lag, args.telemetry_flush)
        pods: Pods | None = None
        try:
            replicas.append(Replica(0, url, Path(tmp), *replica_options))
            replicas[0].wait_serving()  # first alone: it bootstraps the admin
            replicas += [Replica(i, url, Path(tmp), *replica_options) for i in range(1, args.replicas)]
            for replica in replicas[1:]:
                replica.wait_serving()
            token_file = Path(tmp) / "admin.token"
            metadata = (("authorization", f"Bearer {token_file.read_text().strip()}"),)
            first = replicas[0].address
            _prepare(first, metadata, args.analysis_interval)
            idle = _create_deployments(first, metadata, args.deployments)
            rss_idle = [r.rss_mib() for r in replicas]  # before the fleet: what a pod adds is above it
            pods = Pods(args, ",".join(r.address for r in replicas), token_file)
            pods.wait_all("ready", timeout=args.open_seconds + 60 + args.pods / 50)
            time.sleep(args.settle)  # every pod through a heartbeat and a metrics interval at least once
            before = [r.scrape() for r in replicas]
            cpu_before = [r.cpu_seconds() for r in replicas]
            pods_cpu_before = pods.cpu_seconds()
            commits_before, database_cpu_before = _database_figures(url)
            statements_before = [r.statement_counts() for r in replicas]
            lags_before = [r.loop_lags() for r in replicas]
            began_wall = time.time()
            began = time.monotonic()
            loaded = _create_deployments(first, metadata, args.deployments, window_s=args.seconds)
            while time.monotonic() - began < args.seconds:
                time.sleep(0.1)
            window = time.monotonic() - began
            time.sleep(1.1 if args.loop_lag else 0.0)  # the probes' files cover the window's end
            lags = [
                _loop_lag(b, r.loop_lags(), began_wall, began_wall + window)
                for r, b in zip(replicas, lags_before, strict=True)
            ]
            after = [r.scrape() for r in replicas]
            cpu = [r.cpu_seconds() - c for r, c in zip(replicas, cpu_before, strict=True)]
            pods_cpu = pods.cpu_seconds() - pods_cpu_before
            commits, database_cpu = (
                a - b
                for a, b in zip(_database_figures(url), (commits_before, database_cpu_before), strict=True)
            )
            load = os.getloadavg()[0]
            statements: dict[str, float] = {}
            for r, earlier in zip(replicas, statements_before, strict=True):
                for text, n in r.statement_counts().items():
                    statements[text] = statements.get(text, 0.0) + n - earlier.get(text, 0)
            writes: dict[str, float] = {}
            transactions: dict[str, float] = {}
            for b, a in zip(before, after, strict=True):
                kinds_b, kinds_a = _transaction_counts(b), _transaction_counts(a)
                for kind in ("write", "telemetry"):
                    transactions[kind] = (
                        transactions.get(kind, 0.0) + kinds_a.get(kind, 0.0) - kinds_b.get(kind, 0.0)
                    )
                counts_b, counts_a = _rpc_counts(b), _rpc_counts(a)
                for method in WRITES:
                    writes[method] = (
                        writes.get(method, 0.0) + counts_a.get(method, 0.0) - counts_b.get(method, 0.0)
                    )
            records.append(
                {
                    "figure": "fleet_writes",
                    **base,
                    "seconds": round(window, 1),
                    "write_rpcs_per_s": {m: round(n / window, 1) for m, n in writes.items()},
                    # The store's own count: revisioned writes and telemetry's batched ones.
                    "store_write_transactions_per_s": {
                        k: round(n / window, 1) for k, n in transactions.items()
                    },
                    "database_commits_per_s": round(commits / window, 1),
                    # Where the machine's CPU went in the window (cores busy): the replicas, the
                    # database's backends serving them, and the simulator's own pod processes.
                    "replicas_cpu_s_per_s": round(sum(cpu) / window, 2),
                    "database_cpu_s_per_s": round(database_cpu / window, 2),
                    "pod_processes_cpu_s_per_s": round(pods_cpu / window, 2),
                    "load_average_1m": round(load, 1),
                }
            )
            create = {
                "figure": "fleet_create_deployment",
                **base,
                "idle_calls": len(idle),
                "loaded_calls": len(loaded),
                "idle_p50_ms": round(percentile(idle, 0.5), 1),
                "idle_p99_ms": round(percentile(idle, 0.99), 1),
                "loaded_p50_ms": round(percentile(loaded, 0.5), 1),
                "loaded_p99_ms": round(percentile(loaded, 0.99), 1),
                "p99_ratio": round(percentile(loaded, 0.99) / max(percentile(idle, 0.99), 0.001), 2),
            }
            records.append(create)
            if args.count_statements:
                ranked = sorted(statements.items(), key=lambda item: -item[1])
                records.append(
                    {
                        "figure": "fleet_statements",
                        **base,
                        "seconds": round(window, 1),
                        "statements_per_s": round(sum(statements.values()) / window, 1),
                        # The most frequent, all replicas together (a statement's first 100 characters).
                        "by_statement_per_s": {t: round(n / window, 1) for t, n in ranked[:20] if n},
                    }
                )
            if args.loop_lag:
                records += [
                    {
                        "figure": "fleet_loop_lag",
                        **base,
                        "replica": r.name,
                        "seconds": round(window, 1),
                        **lag,
                    }
                    for r, lag in zip(replicas, lags, strict=True)
                ]
            for replica, text, seconds, idle_mib in zip(replicas, after, cpu, rss_idle, strict=True):
                streams = _gauge(text, "dspy_registry_watch_streams", 'watch="targets"')
                rss = replica.rss_mib()
                records.append(
                    {
                        "figure": "fleet_replica",
                        **base,
                        "replica": replica.name,
                        "leader": _gauge(text, "dspy_registry_leader") == 1.0,
                        "watch_streams": int(streams),
                        "cpu_s_per_min": round(seconds / window * 60, 2),
                        "cpu_ms_per_pod_per_min": round(seconds / window * 60 / streams * 1000, 2)
                        if streams
                        else None,
                        "rss_mib": round(rss, 1),
                        "rss_idle_mib": round(idle_mib, 1),
                        "rss_kib_per_pod": round((rss - idle_mib) * 1024 / streams, 1) if streams else None,
                    }
                )
            channel, _, deploy = _stub(first)
            transactions_before = _store_transactions(replicas)
            with channel:
                started = time.time_ns()
                deploy.CreateDeployment(fixtures.deploy_request("1.1.0"), timeout=60, metadata=metadata)
            said = pods.wait_all("converged", timeout=120, version="1.1.0")
            # Every replica's, the fleet's heartbeats and windows meanwhile included.
            transactions = {
                k: n - transactions_before.get(k, 0.0) for k, n in _store_transactions(replicas).items()
            }
            records.append(
                {
                    "figure": "fleet_converge",
                    **base,
                    "seconds": round((max(int(x[2]) for x in said) - started) / 1e9, 2),
                    # Where the time went: the streams delivering the change to the last pod, and
                    # how long the pods' ACKs took to be answered (each process's median, slowest).
                    "delivered_s": round((max(int(x[3]) for x in said) - started) / 1e9, 2),
                    "ack_p50_ms": max(float(x[4]) for x in said),
                    "ack_max_ms": max(float(x[5]) for x in said),
                    "store_transactions": {k: int(v) for k, v in sorted(transactions.items())},
                }
            )
            rolled_back = _rollback_seconds(first, metadata)
            records.append(
                {
                    "figure": "fleet_canary_rollback",
                    **base,
                    "failing_pods_percent": 5,
                    "error_rate_threshold": ERROR_RATE_THRESHOLD,
                    "analysis_interval_s": args.analysis_interval,
                    "seconds": round(rolled_back, 2),
                    "analysis_intervals": round(rolled_back / args.analysis_interval, 2),
                }
            )
            if args.kill_replica != "none":
                records.append({**_kill_replica(args, replicas, pods, metadata), **base})
            pods.stop()
            pods = None
            # Idle again, the fleet gone: on a machine shared with other work, the idle figure
            # before the fleet alone may have met a quieter or a busier minute than the load did.
            survivor = next(r for r in replicas if r.process.poll() is None)
            again = _create_deployments(survivor.address, metadata, args.deployments)
            create["idle_after_p50_ms"] = round(percentile(again, 0.5), 1)
            create["idle_after_p99_ms"] = round(percentile(again, 0.99), 1)
            create["p99_ratio_to_idle_after"] = round(
                percentile(loaded, 0.99) / max(percentile(again, 0.99), 0.001), 2
            )
        finally:
            if pods is not None:
                pods.stop()
            for replica in replicas:
                replica.stop()
            if args.keep_logs is not None:  # the temporary directory goes with the run
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for replica in replicas:
                    shutil.copy(Path(tmp) / f"{replica.name}.log", args.keep_logs)
    return records


def _summary(records: list[dict[str, Any]]) -> str:
    by = {r["figure"]: r for r in records}
    lines = [f"fleet: {records[0]['pods']} pods, {records[0]['replicas']} replicas on PostgreSQL"]
    if w := by.get("fleet_writes"):
        lines.append(
            f"  store write transactions: {w['store_write_transactions_per_s']}/s, for write RPCs "
            f"{w['write_rpcs_per_s']}/s; database commits {w['database_commits_per_s']}/s"
        )
    if c := by.get("fleet_create_deployment"):
        lines.append(
            f"  CreateDeployment p50/p99: idle {c['idle_p50_ms']}/{c['idle_p99_ms']} ms, "
            f"under the fleet {c['loaded_p50_ms']}/{c['loaded_p99_ms']} ms (p99 x{c['p99_ratio']})"
        )
    if c := by.get("fleet_create_deployment"):
        lines.append(
            f"  CreateDeployment idle again after the fleet: {c.get('idle_after_p50_ms')}/"
            f"{c.get('idle_after_p99_ms')} ms (loaded p99 x{c.get('p99_ratio_to_idle_after')})"
        )
    if w := by.get("fleet_writes"):
        lines.append(
            f"  CPU (cores) in the window: replicas {w['replicas_cpu_s_per_s']}, database "
            f"{w['database_cpu_s_per_s']}, pod processes {w['pod_processes_cpu_s_per_s']}; "
            f"load average {w['load_average_1m']}"
        )
    if st := by.get("fleet_statements"):
        lines.append(f"  SQL statements the replicas sent: {st['statements_per_s']}/s; the most frequent:")
        lines += [f"    {n:7.1f}/s  {text}" for text, n in list(st["by_statement_per_s"].items())[:8]]
    if v := by.get("fleet_converge"):
        lines.append(
            f"  every pod ACKed a deployment {v['seconds']} s after the call (the last pod had it after "
            f"{v['delivered_s']} s; ACKs answered in {v['ack_p50_ms']} ms median, {v['ack_max_ms']} ms "
            f"the slowest; store transactions meanwhile {v['store_transactions']})"
        )
    if r := by.get("fleet_canary_rollback"):
        lines.append(
            f"  canary rolled back {r['seconds']} s after the call ({r['analysis_intervals']} analysis intervals)"
        )
    if k := by.get("fleet_replica_killed"):
        lines.append(
            f"  SIGKILLed {k['replica']}{' (leader)' if k['leader'] else ''} with {k['streams_on_it']} pods"
            f"{f' while {n} busy loops contended' if (n := k['contending_processes']) else ''}: "
            f"streams resumed elsewhere after {k['resumed_elsewhere_s']} s, each seen live on a survivor "
            f"after {k['seen_live_elsewhere_s']} s ({k['seen_live_elsewhere_heartbeats']} heartbeats), on every "
            f"survivor after {k['seen_on_every_survivor_s']} s; a leader after {k['new_leader_s']} s; sidecars "
            f"counted {k['sidecars_counted_before']} before, {k['sidecars_counted_after']} after, "
            f"{k['sidecars_counted_after_rows_ran_out']} once its rows ran out; reports retried "
            f"{k['reports_retried']}, given up {k['reports_given_up']}; load average {k['load_average_1m']}; "
            "streams broken:"
        )
        lines += [f"    {n:5d}  {why}" for why, n in k["streams_broken_by_code"].items()]
    for x in (x for x in records if x["figure"] == "fleet_loop_lag"):
        lines.append(
            f"  {x['replica']} event loop: lag p50/p99/max {x['lag_p50_ms']}/{x['lag_p99_ms']}/{x['lag_max_ms']} ms, "
            f"{x['stalls']} stalls of 5 ms or more ({x['stalled_ms_per_s']} ms/s: on a core "
            f"{x['stalled_ran_ms_per_s']}, waiting for one {x['stalled_queued_ms_per_s']}); collector "
            + ", ".join(f"gen{g} {c['passes']} passes {c['ms']} ms" for g, c in x["gc"].items())
        )
        lines += [f"    {n:5d}  {text}" for text, n in list(x["stall_stacks"].items())[:4]]
    for x in (x for x in records if x["figure"] == "fleet_replica"):
        lines.append(
            f"  {x['replica']}{' (leader)' if x['leader'] else ''}: {x['watch_streams']} pods, "
            f"{x['cpu_ms_per_pod_per_min']} ms CPU per pod per minute, {x['rss_kib_per_pod']} KiB per pod "
            f"({x['rss_idle_mib']} MiB before the fleet, {x['rss_mib']} MiB with it)"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench fleet", description=__doc__)
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--processes", type=int, default=4, help="client processes the pods are spread over")
    parser.add_argument(
        "--deployments",
        type=int,
        # 200: a p99 of 50 calls was their longest but one, and moved by 2x from run to run.
        default=200,
        help="CreateDeployment calls, idle and under load",
    )
    parser.add_argument("--settle", type=float, default=15.0, help="seconds of fleet load before measuring")
    parser.add_argument("--seconds", type=float, default=30.0, help="the measured window")
    parser.add_argument(
        "--open-seconds", type=float, default=10.0, help="spread the pods' watches over this long"
    )
    parser.add_argument(
        "--heartbeat", type=float, default=10.0, help="the pods' heartbeat interval (the client's default)"
    )
    parser.add_argument(
        "--metrics-interval",
        type=float,
        default=5.0,
        help="the pods' metric window interval (the client's default)",
    )
    parser.add_argument(
        "--telemetry-flush",
        type=float,
        default=5.0,
        help="the replicas' --telemetry-flush (the server's default): how often each writes what it holds",
    )
    parser.add_argument(
        "--analysis-interval",
        type=float,
        default=ANALYSIS_INTERVAL_S,
        help="staging's auto-rollback analysis interval",
    )
    parser.add_argument(
        "--kill-replica",
        choices=("none", "follower", "leader"),
        default="none",
        help="at the end, SIGKILL a replica that does not lead, or the leader, under the fleet",
    )
    parser.add_argument(
        "--contend",
        type=int,
        default=0,
        help="with --kill-replica: this many busy-loop processes compete for the CPU from just before the kill",
    )
    parser.add_argument(
        "--count-statements",
        action="store_true",
        help="count the SQL statements the replicas send, by text, in the window (bench/statements)",
    )
    parser.add_argument(
        "--loop-lag",
        action="store_true",
        help="time each replica's event-loop stalls in the window, with what held the loop (bench/looplag)",
    )
    parser.add_argument("--server-log-level", default="warning")
    parser.add_argument(
        "--keep-logs", type=Path, help="copy each replica's stderr log (replica-N.log) into this directory"
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432"),
        help="PostgreSQL server URL without a database; a throwaway database is made for the run",
    )
    parser.add_argument(
        "--costs",
        action="store_true",
        help="instead: one replica's CPU per call of each kind a pod makes, --pods sidecars (bench/fleet_costs.py)",
    )
    parser.add_argument(
        "--stretches",
        action="store_true",
        help="instead: how long a flush and the leader's gauge read hold the event loop, --pods sidecars "
        "per replica, in this process (bench/fleet_stretches.py)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="with --costs: heartbeats and windows per sidecar; with --stretches: flushes and reads timed",
    )
    args = parser.parse_args(argv)
    if args.loop_lag and args.count_statements:
        parser.error(
            "--loop-lag and --count-statements are each a sitecustomize on the replicas: one at a time"
        )
    if args.costs:
        from . import fleet_costs

        emit(fleet_costs.run(args))
        return 0
    if args.stretches:
        from . import fleet_stretches

        emit(fleet_stretches.run(args))
        return 0
    records = run(args)
    for record in records:
        emit(record)
    sys.stdout.flush()
    sys.stderr.write(_summary(records) + "\n")
    return 0

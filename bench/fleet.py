"""`python -m bench fleet`: a fleet of simulated pods on replicas of one PostgreSQL, while people deploy.

Starts `--replicas` servers on a throwaway PostgreSQL database (each with its Prometheus endpoint),
prepares program `p` (watched by the fleet, in staging) and program `q` (deployed by the driver, in
development, watched by no one), then:

  idle       `--deployments` CreateDeployment calls of `q`, one after the other: p50/p99
  fleet      `--pods` pods (bench/fleet_pods.py) over `--processes` client processes, each pod
             watching `p` in staging through round_robin over every replica, ACKing, heartbeating
             every 10 s and reporting a metric window every 5 s (the client's defaults)
  load       after `--settle` seconds, a window of `--seconds` in which the same CreateDeployment
             calls run again (p50/p99 under fleet load), and the replicas' telemetry is read
             before and after: write RPCs per second (each a store write transaction on this
             code), the database's committed transactions per second, CPU and memory per replica
  converge   a REPLACE deployment of `p`: from the call to the last pod's ACK of it
  rollback   a canary of `p` whose candidate fails every request on 5 % of the pods (the
             environment's error-rate threshold is 0.02): from the call to ROLLED_BACK

One JSON line per figure on stdout; a summary a person reads on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
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
# The RPCs that are a store write transaction each on this code (telemetry counts them by method).
WRITES = ("ReportSidecarStatus", "ReportMetrics", "CreateDeployment")
ERROR_RATE_THRESHOLD = 0.02
ANALYSIS_INTERVAL_S = 5.0
STARTUP_TIMEOUT_S = 60.0


class Replica:
    def __init__(self, index: int, url: str, tmp: Path, log_level: str) -> None:
        self.name = f"replica-{index}"
        self.address = f"127.0.0.1:{free_port()}"
        self.metrics = f"127.0.0.1:{free_port()}"
        self.token_file = tmp / "admin.token"
        self.log = open(tmp / f"{self.name}.log", "w+b")  # noqa: SIM115 - closed in stop()
        command = [str(SERVER), "serve", "--database", url, "--listen", self.address, "--grace", "2"]
        command += ["--admin-token-file", str(self.token_file), "--metrics-listen", self.metrics]
        command += ["--replica-name", self.name, "--log-level", log_level]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log)

    def wait_serving(self) -> None:
        wait_serving(self.process, self.address, self.log)

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=10) as response:
            text: str = response.read().decode()
            return text

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

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


def _prepare(address: str, metadata: Any) -> None:
    """Programs p and q (four versions each), p 1.0.0 in staging, staging's rollback thresholds."""
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
        rollback.analysis_interval.FromNanoseconds(int(ANALYSIS_INTERVAL_S * 1e9))
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

    def wait_all(self, word: str, timeout: float, version: str = "") -> list[int]:
        """Until every process said `word` (for `version`): the times (ns) they gave."""
        seen: dict[int, int] = {}
        acked: dict[int, int] = {}  # pods ACKed so far, by process, as each last said
        deadline = time.monotonic() + timeout
        while len(seen) < len(self.processes):
            try:
                if time.monotonic() > deadline:  # progress lines keep coming: the queue is never empty
                    raise queue.Empty
                i, line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(
                    f"only {len(seen)} of {len(self.processes)} pod processes said {word} within {timeout:g} s"
                    f" (pods ACKed: {sum(acked.values())})"
                ) from None
            parts = line.split()
            if parts and parts[0] == "acked":
                acked[i] = int(parts[1])
            if line == "exited":
                raise RuntimeError(f"pod process {i} exited")
            if parts and parts[0] == word and (not version or parts[1] == version):
                seen[i] = int(parts[2]) if len(parts) > 2 else time.time_ns()
        return list(seen.values())

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
        total = 0.0
        for process in self.processes:
            fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total


@contextlib.contextmanager
def _database(server: str) -> Iterator[str]:
    options = Options(seconds=0, warmup=0, channels=1, server_log_level="warning", postgres=server)
    with database("postgres", options, Path(tempfile.gettempdir())) as url:
        yield url


def _xact_commits(url: str) -> float:
    import asyncio

    async def read() -> float:
        conn = await asyncpg.connect(url)
        try:
            value = await conn.fetchval(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            )
            return float(value)
        finally:
            await conn.close()

    return asyncio.run(read())


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
        pods: Pods | None = None
        try:
            replicas.append(Replica(0, url, Path(tmp), args.server_log_level))
            replicas[0].wait_serving()  # first alone: it bootstraps the admin
            replicas += [Replica(i, url, Path(tmp), args.server_log_level) for i in range(1, args.replicas)]
            for replica in replicas[1:]:
                replica.wait_serving()
            token_file = Path(tmp) / "admin.token"
            metadata = (("authorization", f"Bearer {token_file.read_text().strip()}"),)
            first = replicas[0].address
            _prepare(first, metadata)
            idle = _create_deployments(first, metadata, args.deployments)
            rss_idle = [r.rss_mib() for r in replicas]  # before the fleet: what a pod adds is above it
            pods = Pods(args, ",".join(r.address for r in replicas), token_file)
            pods.wait_all("ready", timeout=args.open_seconds + 60 + args.pods / 50)
            time.sleep(args.settle)  # every pod through a heartbeat and a metrics interval at least once
            before = [r.scrape() for r in replicas]
            cpu_before = [r.cpu_seconds() for r in replicas]
            pods_cpu_before = pods.cpu_seconds()
            commits_before = _xact_commits(url)
            began = time.monotonic()
            loaded = _create_deployments(first, metadata, args.deployments, window_s=args.seconds)
            while time.monotonic() - began < args.seconds:
                time.sleep(0.1)
            window = time.monotonic() - began
            after = [r.scrape() for r in replicas]
            cpu = [r.cpu_seconds() - c for r, c in zip(replicas, cpu_before, strict=True)]
            pods_cpu = pods.cpu_seconds() - pods_cpu_before
            commits = _xact_commits(url) - commits_before
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
                    "pod_processes_cpu_s_per_s": round(pods_cpu / window, 2),
                }
            )
            records.append(
                {
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
            )
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
            with channel:
                started = time.time_ns()
                deploy.CreateDeployment(fixtures.deploy_request("1.1.0"), timeout=60, metadata=metadata)
            converged = pods.wait_all("converged", timeout=120, version="1.1.0")
            records.append(
                {"figure": "fleet_converge", **base, "seconds": round((max(converged) - started) / 1e9, 2)}
            )
            rolled_back = _rollback_seconds(first, metadata)
            records.append(
                {
                    "figure": "fleet_canary_rollback",
                    **base,
                    "failing_pods_percent": 5,
                    "error_rate_threshold": ERROR_RATE_THRESHOLD,
                    "analysis_interval_s": ANALYSIS_INTERVAL_S,
                    "seconds": round(rolled_back, 2),
                    "analysis_intervals": round(rolled_back / ANALYSIS_INTERVAL_S, 2),
                }
            )
        finally:
            if pods is not None:
                pods.stop()
            for replica in replicas:
                replica.stop()
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
    if v := by.get("fleet_converge"):
        lines.append(f"  every pod ACKed a deployment {v['seconds']} s after the call")
    if r := by.get("fleet_canary_rollback"):
        lines.append(
            f"  canary rolled back {r['seconds']} s after the call ({r['analysis_intervals']} analysis intervals)"
        )
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
        "--deployments", type=int, default=50, help="CreateDeployment calls, idle and under load"
    )
    parser.add_argument("--settle", type=float, default=15.0, help="seconds of fleet load before measuring")
    parser.add_argument("--seconds", type=float, default=30.0, help="the measured window")
    parser.add_argument(
        "--open-seconds", type=float, default=10.0, help="spread the pods' watches over this long"
    )
    parser.add_argument("--server-log-level", default="warning")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432"),
        help="PostgreSQL server URL without a database; a throwaway database is made for the run",
    )
    records = run(parser.parse_args(argv))
    for record in records:
        emit(record)
    sys.stdout.flush()
    sys.stderr.write(_summary(records) + "\n")
    return 0

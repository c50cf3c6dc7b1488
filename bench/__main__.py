"""`python -m bench`: start servers, drive the load generator, print one JSON line per figure.

See the `bench` package docstring for what each figure means and its target.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dspy_registry.v1 import deployment_pb2, deployment_pb2_grpc, registry_pb2_grpc

from . import fixtures
from .common import emit, has_uvloop, percentile

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / ".venv" / "bin" / "dspy-registry"
GET_CONCURRENCY = 64
REGISTER_CLIENTS = 16
DEPLOY_CLIENTS = 16
STATUS_CONCURRENCY = 64
GET_RATIO_TARGET = 0.70
GET_P99_TARGET_MS = 25.0
GET_AUTH_RATIO_TARGET = 0.85
REGISTER_SQLITE_TARGET = 1000.0
STARTUP_TIMEOUT_S = 30.0
# The backend whose GetProgramVersion is also measured with --no-auth (the comparison).
AUTH_COMPARISON_BACKEND = "sqlite"
# The backend whose RegisterProgram is also measured without development's auto-deploy.
AUTO_DEPLOY_COMPARISON_BACKEND = "sqlite"


@dataclass(frozen=True)
class Registry:
    """A running registry server: its address and, with authentication on, its admin token."""

    target: str
    token_file: Path | None  # None: started with --no-auth
    token: str | None

    @property
    def auth(self) -> bool:
        return self.token is not None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return () if self.token is None else (("authorization", f"Bearer {self.token}"),)


@dataclass(frozen=True, kw_only=True)
class Options:
    seconds: float
    warmup: float
    channels: int
    server_log_level: str
    postgres: str


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_serving(process: subprocess.Popen[bytes], target: str, log: IO[bytes]) -> None:
    """Block until grpc.health.v1 Check says SERVING; fail if the process dies or it takes too long."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}: {_tail(log)}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not SERVING after {STARTUP_TIMEOUT_S}s: {_tail(log)}")
            time.sleep(0.05)


def _tail(log: IO[bytes], size: int = 2000) -> str:
    log.flush()
    log.seek(0)
    return log.read().decode(errors="replace")[-size:]


@contextlib.contextmanager
def _process(command: list[str], env: dict[str, str] | None = None) -> Iterator[str]:
    """Start a gRPC server listening on a free port; yield its address once SERVING; SIGTERM it."""
    port = _free_port()
    target = f"127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [*command, "--listen", target], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log
        )
        try:
            _wait_serving(process, target, log)
            yield target
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(15.0)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@contextlib.contextmanager
def _database(backend: str, options: Options, tmp: Path) -> Iterator[str]:
    """A fresh, empty database URL for one measurement (SQLite: a file in `tmp`), removed afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{(tmp / 'registry.db').resolve()}"
        return
    name = f"bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_postgres(options.postgres, f'CREATE DATABASE "{name}"'))
    try:
        yield f"{options.postgres.rstrip('/')}/{name}"
    finally:
        asyncio.run(_postgres(options.postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _postgres(server: str, statement: str) -> None:
    connection = await asyncpg.connect(f"{server.rstrip('/')}/postgres")
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def _read_token(token_file: Path) -> str:
    """The admin token the server wrote on its first start (it exists once health says SERVING)."""
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise RuntimeError(f"the server is SERVING but wrote no admin token to {token_file}") from None
    if not token:
        raise RuntimeError(f"the admin token file {token_file} is empty")
    return token


# The default environments but for development's auto-deploy: a registration is then only a registration.
NO_AUTO_DEPLOY_TOML = """\
[environments.development]
auto_deploy = false
default_strategy = "replace"

[environments.staging]
validation_required = true

[environments.production]
validation_required = true
approval_required = true
min_metrics = { accuracy = 0.85 }
monitoring_required = true
required_predecessors = ["staging"]
"""


@contextlib.contextmanager
def _registry(
    backend: str, options: Options, *, auth: bool = True, auto_deploy: bool = True
) -> Iterator[Registry]:
    """A fresh registry server on a fresh database, with authentication on (default) or off.

    `auto_deploy=False` starts it with NO_AUTO_DEPLOY_TOML as its --config.
    """
    with (
        tempfile.TemporaryDirectory(prefix="dspy-registry-bench-") as tmp,
        _database(backend, options, Path(tmp)) as url,
    ):
        # Never the default .dspy-registry/admin.token under the working directory.
        token_file = Path(tmp, "admin.token").resolve()
        command = [str(SERVER), "serve", "--database", url, "--grace", "2"]
        command += ["--log-level", options.server_log_level, "--admin-token-file", str(token_file)]
        if not auth:
            command.append("--no-auth")
        if not auto_deploy:
            config = Path(tmp, "environments.toml").resolve()
            config.write_text(NO_AUTO_DEPLOY_TOML, encoding="utf-8")
            command += ["--config", str(config)]
        # An inherited DSPY_REGISTRY_NO_AUTH=1 would switch authentication off for every figure.
        env = {k: v for k, v in os.environ.items() if k != "DSPY_REGISTRY_NO_AUTH"}
        with _process(command, env) as target:
            if auth:
                yield Registry(target, token_file, _read_token(token_file))
            else:
                yield Registry(target, None, None)


def _preload(registry: Registry, versions: tuple[str, ...]) -> None:
    """Register the benchmark signature, then the given versions of program `p`."""
    metadata = registry.metadata()
    with grpc.insecure_channel(registry.target) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)  # type: ignore[no-untyped-call]
        stub.RegisterSignature(fixtures.signature_request(), timeout=10.0, metadata=metadata)
        for i, version in enumerate(versions):
            # Numbers far from the load generator's, so no artifact repeats.
            request = fixtures.register_request(version, 10**9 + i)
            stub.RegisterProgram(request, timeout=10.0, metadata=metadata)
        if versions:
            stub.GetProgramVersion(fixtures.get_request(), timeout=10.0, metadata=metadata)


def _preload_deployment(registry: Registry, *, deploy: bool) -> None:
    """Register the signature and DEPLOY_VERSIONS of `p`; with `deploy`, one REPLACE deployment to staging."""
    _preload(registry, ())
    metadata = registry.metadata()
    with grpc.insecure_channel(registry.target) as channel:
        registry_stub = registry_pb2_grpc.RegistryServiceStub(channel)  # type: ignore[no-untyped-call]
        for i, version in enumerate(fixtures.DEPLOY_VERSIONS):
            request = fixtures.register_request(version, 10**9 + i)
            registry_stub.RegisterProgram(request, timeout=10.0, metadata=metadata)
        if not deploy:
            return
        stub = deployment_pb2_grpc.DeploymentServiceStub(channel)  # type: ignore[no-untyped-call]
        version = fixtures.DEPLOY_VERSIONS[-1]
        reply = stub.CreateDeployment(fixtures.deploy_request(version), timeout=10.0, metadata=metadata)
        if reply.deployment.state != deployment_pb2.DEPLOYMENT_STATE_SUCCEEDED:
            state = deployment_pb2.DeploymentState.Name(reply.deployment.state)
            raise RuntimeError(f"the preloaded REPLACE deployment of {version} ended {state}")
        status = stub.GetDeploymentStatus(fixtures.status_request(), timeout=10.0, metadata=metadata)
        if status.target.stable.version != version:
            raise RuntimeError(f"staging serves {status.target.stable.version!r} after deploying {version}")


def _loadgen(
    target: str, workload: str, concurrency: int, options: Options, token_file: Path | None = None
) -> dict[str, Any]:
    """Run `python -m bench.loadgen` in its own process and parse its JSON line."""
    command = [sys.executable, "-m", "bench.loadgen", "--target", target, "--workload", workload]
    command += ["--concurrency", str(concurrency), "--seconds", str(options.seconds)]
    command += ["--warmup", str(options.warmup), "--channels", str(options.channels)]
    if token_file is not None:
        command += ["--token-file", str(token_file)]
    timeout = options.seconds + options.warmup + 120.0
    done = subprocess.run(command, cwd=ROOT, capture_output=True, check=False, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


def bench_echo(options: Options) -> dict[str, Any]:
    with _process([sys.executable, "-m", "bench.echo"]) as target:
        result = _loadgen(target, "echo", GET_CONCURRENCY, options)
    return {
        "bench": "echo",
        "backend": "none",
        **result,
        "uvloop_server": has_uvloop(),
        "request_bytes": len(fixtures.get_request().SerializeToString()),
    }


def bench_get(
    backend: str,
    options: Options,
    echo: float | None,
    *,
    auth: bool = True,
    no_auth: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The read-path figure; `no_auth` is the same backend's auth-off figure from this run, if any."""
    with _registry(backend, options, auth=auth) as registry:
        _preload(registry, fixtures.PRELOAD_VERSIONS)
        result = _loadgen(registry.target, "get", GET_CONCURRENCY, options, registry.token_file)
    throughput = result["throughput_per_s"]
    ratio = throughput / echo if echo else None
    record: dict[str, Any] = {
        "bench": "get_program_version",
        "backend": backend,
        "auth": auth,
        **result,
        "ratio_to_echo": None if ratio is None else round(ratio, 3),
        "server_log_level": options.server_log_level,
    }
    if not auth:
        # The reference for ratio_to_no_auth: the issue sets no target for it.
        return record | {"target": None, "meets_target": None}
    record |= {
        "target": f"ratio_to_echo >= {GET_RATIO_TARGET} and p99_ms < {GET_P99_TARGET_MS}",
        "meets_target": None
        if ratio is None
        else (ratio >= GET_RATIO_TARGET and result["p99_ms"] < GET_P99_TARGET_MS and not result["errors"]),
    }
    if no_auth is not None:
        off = no_auth["throughput_per_s"]
        auth_ratio = throughput / off if off else None
        record |= {
            "ratio_to_no_auth": None if auth_ratio is None else round(auth_ratio, 3),
            "auth_target": f"ratio_to_no_auth >= {GET_AUTH_RATIO_TARGET}",
            "meets_auth_target": None
            if auth_ratio is None
            else (auth_ratio >= GET_AUTH_RATIO_TARGET and not result["errors"] and not no_auth["errors"]),
        }
    return record


def bench_register(backend: str, options: Options, *, auto_deploy: bool = True) -> dict[str, Any]:
    """The write path; with `auto_deploy` (the default environments) each registration also deploys."""
    with _registry(backend, options, auto_deploy=auto_deploy) as registry:
        _preload(registry, ())
        pid = _server_pid(registry.target)
        cpu_before = _cpu_seconds(pid)
        result = _loadgen(registry.target, "register", REGISTER_CLIENTS, options, registry.token_file)
        cpu = _cpu_seconds(pid) - cpu_before
    # Less noisy than the rate on a shared machine: what each call cost the server's own process.
    result["server_cpu_ms_per_call"] = round(cpu / max(1, result["calls"] + result["warmup_calls"]) * 1e3, 2)
    sqlite = backend == "sqlite" and auto_deploy  # the target is for the default environments
    return {
        "bench": "register_program",
        "backend": backend,
        "auth": True,
        "auto_deploy": auto_deploy,
        **result,
        "artifact_bytes": fixtures.ARTIFACT_BYTES,
        "server_log_level": options.server_log_level,
        "target": f"throughput_per_s >= {REGISTER_SQLITE_TARGET:g}" if sqlite else None,
        "meets_target": (result["throughput_per_s"] >= REGISTER_SQLITE_TARGET and not result["errors"])
        if sqlite
        else None,
    }


def bench_create_deployment(backend: str, options: Options) -> dict[str, Any]:
    with _registry(backend, options) as registry:
        _preload_deployment(registry, deploy=False)
        result = _loadgen(registry.target, "deploy", DEPLOY_CLIENTS, options, registry.token_file)
    return {
        "bench": "create_deployment",
        "backend": backend,
        "auth": True,
        **result,
        "environment": fixtures.DEPLOY_ENVIRONMENT,
        "strategy": "STRATEGY_REPLACE",
        "versions": list(fixtures.DEPLOY_VERSIONS),
        "server_log_level": options.server_log_level,
        "target": None,
        "meets_target": None,
    }


def bench_get_deployment_status(backend: str, options: Options) -> dict[str, Any]:
    with _registry(backend, options) as registry:
        _preload_deployment(registry, deploy=True)
        result = _loadgen(registry.target, "status", STATUS_CONCURRENCY, options, registry.token_file)
    return {
        "bench": "get_deployment_status",
        "backend": backend,
        "auth": True,
        **result,
        "environment": fixtures.DEPLOY_ENVIRONMENT,
        "server_log_level": options.server_log_level,
        "target": None,
        "meets_target": None,
    }


FANOUT_STREAMS = (1_000, 5_000, 10_000)
FANOUT_DEPLOYMENTS = 20
FANOUT_CLIENTS = 2
FANOUT_CHANNELS = 8  # per client process


def _server_pid(target: str) -> int:
    """The pid of the server listening on `target` (found by its command line; Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in argv and target.encode() in argv:
                return int(entry.name)
    raise RuntimeError(f"no server process listens on {target}")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def bench_fanout(streams: int, options: Options, open_seconds: float) -> dict[str, Any]:
    """Time from CreateDeployment (sent, and returned) to the last of `streams` watchers receiving the change."""
    with _registry("sqlite", options) as registry:
        _preload_deployment(registry, deploy=True)
        pid = _server_pid(registry.target)
        rss_before = _rss_kib(pid)
        clients = []
        for i in range(FANOUT_CLIENTS):
            share = streams // FANOUT_CLIENTS + (1 if i < streams % FANOUT_CLIENTS else 0)
            command = [sys.executable, "-m", "bench.fanout_client", "--target", registry.target]
            command += ["--streams", str(share), "--channels", str(FANOUT_CHANNELS)]
            command += ["--token-file", str(registry.token_file), "--open-seconds", str(open_seconds)]
            clients.append(
                subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            )
        try:
            for client in clients:
                assert client.stdout is not None
                line = client.stdout.readline().strip()
                if line != "ready":
                    raise RuntimeError(f"fan-out client failed before it was ready: {line!r}")
            time.sleep(1.0)  # let the server settle after the opening burst
            rss_idle = _rss_kib(pid)
            cpu_before = _cpu_seconds(pid)
            clients_cpu_before = sum(_cpu_seconds(client.pid) for client in clients)
            latencies_ms: list[float] = []
            from_sent_ms: list[float] = []
            call_ms: list[float] = []
            metadata = registry.metadata()
            with grpc.insecure_channel(registry.target) as channel:
                stub = deployment_pb2_grpc.DeploymentServiceStub(channel)  # type: ignore[no-untyped-call]
                for n in range(FANOUT_DEPLOYMENTS):
                    version = fixtures.DEPLOY_VERSIONS[n % len(fixtures.DEPLOY_VERSIONS)]
                    request = fixtures.deploy_request(version)
                    sent = time.time_ns()
                    reply = stub.CreateDeployment(request, timeout=30.0, metadata=metadata)
                    returned = time.time_ns()
                    revision = reply.deployment.revision
                    last = 0
                    for client in clients:
                        assert client.stdout is not None
                        while True:  # each client says when all its streams had this revision
                            _, seen, at = client.stdout.readline().split()
                            if int(seen) >= revision:
                                last = max(last, int(at))
                                break
                    latencies_ms.append((last - returned) / 1e6)
                    from_sent_ms.append((last - sent) / 1e6)
                    call_ms.append((returned - sent) / 1e6)
            cpu = _cpu_seconds(pid) - cpu_before
            clients_cpu = sum(_cpu_seconds(client.pid) for client in clients) - clients_cpu_before
        finally:
            for client in clients:
                assert client.stdin is not None
                client.stdin.close()
                client.wait(30)
    # The figure is from the reply. The hub hands a change out as the commit
    # lands, over several turns of the loop, so the reply overtakes most of the
    # fan-out; from the call's start is reported beside it as the whole wait.
    ordered = sorted(latencies_ms)
    p50, p99 = percentile(ordered, 0.50), percentile(ordered, 0.99)
    from_sent, calls = sorted(from_sent_ms), sorted(call_ms)
    per_stream_kib = (rss_idle - rss_before) / streams
    targets = {1_000: (None, 40.0), 10_000: (200.0, 400.0)}.get(streams, (None, None))
    meets = None
    if targets != (None, None):
        meets = (targets[0] is None or p50 <= targets[0]) and (targets[1] is None or p99 <= targets[1])
    return {
        "figure": "fanout",
        "backend": "sqlite",
        "auth": True,
        "streams": streams,
        "client_processes": FANOUT_CLIENTS,
        "connections": FANOUT_CLIENTS * FANOUT_CHANNELS,
        "opened_over_s": open_seconds,  # every stream was accepted, or the run fails
        "deployments": FANOUT_DEPLOYMENTS,
        "p50_ms": round(p50, 1),  # CreateDeployment returned -> the last watcher has the change
        "p99_ms": round(p99, 1),
        "from_call_start_p50_ms": round(percentile(from_sent, 0.50), 1),
        "from_call_start_p99_ms": round(percentile(from_sent, 0.99), 1),
        "create_deployment_p50_ms": round(percentile(calls, 0.50), 1),
        "server_kib_per_idle_stream": round(per_stream_kib, 1),
        "server_cpu_us_per_delivered_event": round(cpu / (FANOUT_DEPLOYMENTS * streams) * 1e6, 1),
        # The load generator's share of the same two cores: a floor under the latency.
        "clients_cpu_us_per_received_event": round(clients_cpu / (FANOUT_DEPLOYMENTS * streams) * 1e6, 1),
        "target": {"p50_ms": targets[0], "p99_ms": targets[1], "kib_per_idle_stream": 32.0},
        "meets_target": meets if meets is None else bool(meets and per_stream_kib <= 32.0),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per figure")
    parser.add_argument("--warmup", type=float, default=1.0, help="uncounted load before each window")
    parser.add_argument(
        "--only",
        choices=["echo", "get", "register", "deploy", "fanout"],
        help="run one benchmark (deploy: create_deployment and get_deployment_status)",
    )
    parser.add_argument(
        "--streams",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        default=FANOUT_STREAMS,
        help="fan-out sizes, comma-separated (default 1000,5000,10000)",
    )
    parser.add_argument(
        "--open-seconds",
        type=float,
        default=2.0,
        help="fan-out: spread the streams' opening over this long (0: all at once, a reconnect storm)",
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--channels", type=int, default=2, help="client channels (connections)")
    parser.add_argument("--server-log-level", default="info", help="the registry's --log-level")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432"),
        help="PostgreSQL server URL without a database; a throwaway database is made per figure",
    )
    args = parser.parse_args(argv)
    options = Options(
        seconds=args.seconds,
        warmup=args.warmup,
        channels=args.channels,
        server_log_level=args.server_log_level,
        postgres=args.postgres,
    )
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]

    echo: float | None = None
    if args.only in (None, "echo"):
        record = bench_echo(options)
        echo = record["throughput_per_s"]
        emit(record)
    if args.only in (None, "get"):
        for backend in backends:
            no_auth = None
            if backend == AUTH_COMPARISON_BACKEND:
                # Auth off first, so the auth-on figure (with ratio_to_no_auth) comes after it.
                no_auth = bench_get(backend, options, echo, auth=False)
                emit(no_auth)
            emit(bench_get(backend, options, echo, no_auth=no_auth))
    if args.only in (None, "register"):
        for backend in backends:
            if backend == AUTO_DEPLOY_COMPARISON_BACKEND:
                emit(bench_register(backend, options, auto_deploy=False))
            emit(bench_register(backend, options))
    if args.only in (None, "deploy"):
        for backend in backends:
            emit(bench_create_deployment(backend, options))
            emit(bench_get_deployment_status(backend, options))
    if args.only in (None, "fanout"):
        for streams in args.streams:
            emit(bench_fanout(streams, options, args.open_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())

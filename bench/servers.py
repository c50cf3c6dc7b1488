"""The servers the benchmarks measure, each fresh: dspy-registry on a throwaway database, or any
gRPC server started as a process and waited for until grpc.health.v1 says SERVING."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dspy_registry.v1 import deployment_pb2, deployment_pb2_grpc, registry_pb2_grpc

from . import fanout, fixtures

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / ".venv" / "bin" / "dspy-registry"
STARTUP_TIMEOUT_S = 30.0
# The health checks' channel tries to connect again every 50 ms. With grpc's defaults a connection
# refused before the server listens is retried after 1 s, then 1.6 times longer each time (with
# ±20 % jitter): a server listening after 1.1 s was seen SERVING at 2.6 s, one after 2.7 s at 5.2 s,
# so start-to-healthy figures came in those steps (0.88, 1.2, 2.4 s by round) and measured the
# client's back-off more than the server's start.
WAIT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 50),
]


# Not passed on to the registry servers the benchmarks start. An inherited DSPY_REGISTRY_NO_AUTH=1
# would switch authentication off for every figure. An inherited PYTHONDONTWRITEBYTECODE=1 made
# every start compile the project's ~150 modules from source (0.2 s of CPU of its 0.6 s of
# imports, more on a loaded machine) where an installed package (and MLflow, in bench.peers)
# reads the bytecode pip wrote: the first start writes it, as a normal installation's does.
SERVER_ENV_DROPPED = frozenset({"DSPY_REGISTRY_NO_AUTH", "PYTHONDONTWRITEBYTECODE"})


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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_serving(process: subprocess.Popen[bytes], target: str, log: IO[bytes]) -> None:
    """Block until grpc.health.v1 Check says SERVING; fail if the process dies or it takes too long."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with grpc.insecure_channel(target, options=WAIT_OPTIONS) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}: {tail(log)}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not SERVING after {STARTUP_TIMEOUT_S}s: {tail(log)}")
            time.sleep(0.05)


def tail(log: IO[bytes], size: int = 2000) -> str:
    log.flush()
    log.seek(0)
    return log.read().decode(errors="replace")[-size:]


@contextlib.contextmanager
def process(command: list[str], env: dict[str, str] | None = None) -> Iterator[str]:
    """Start a gRPC server listening on a free port; yield its address once SERVING; SIGTERM it."""
    port = free_port()
    target = f"127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [*command, "--listen", target], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log
        )
        try:
            wait_serving(process, target, log)
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
def database(backend: str, options: Options, tmp: Path) -> Iterator[str]:
    """A fresh, empty database URL for one measurement (SQLite: a file in `tmp`), removed afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{(tmp / 'registry.db').resolve()}"
        return
    name = f"bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    asyncio.run(postgres_statement(options.postgres, f'CREATE DATABASE "{name}"'))
    try:
        yield f"{options.postgres.rstrip('/')}/{name}"
    finally:
        asyncio.run(postgres_statement(options.postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def postgres_statement(server: str, statement: str) -> None:
    connection = await asyncpg.connect(f"{server.rstrip('/')}/postgres")
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def read_token(token_file: Path) -> str:
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
def registry_server(
    backend: str, options: Options, *, auth: bool = True, auto_deploy: bool = True
) -> Iterator[Registry]:
    """A fresh registry server on a fresh database, with authentication on (default) or off.

    `auto_deploy=False` starts it with NO_AUTO_DEPLOY_TOML as its --config.
    """
    with (
        tempfile.TemporaryDirectory(prefix="dspy-registry-bench-") as tmp,
        database(backend, options, Path(tmp)) as url,
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
        env = {k: v for k, v in os.environ.items() if k not in SERVER_ENV_DROPPED}
        with process(command, env) as target:
            if auth:
                yield Registry(target, token_file, read_token(token_file))
            else:
                yield Registry(target, None, None)


def preload(registry: Registry, versions: tuple[str, ...]) -> None:
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


def preload_deployment(registry: Registry, *, deploy: bool) -> None:
    """Register the signature and DEPLOY_VERSIONS of `p`; with `deploy`, one REPLACE deployment to staging."""
    preload(registry, ())
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


def deployment_change(registry: Registry, channel: grpc.Channel) -> fanout.Change:
    """A REPLACE deployment to staging per call, alternating the versions; returns its revision."""
    stub = deployment_pb2_grpc.DeploymentServiceStub(channel)  # type: ignore[no-untyped-call]
    metadata = registry.metadata()
    versions = itertools.cycle(fixtures.DEPLOY_VERSIONS)

    def change() -> int:
        reply = stub.CreateDeployment(
            fixtures.deploy_request(next(versions)), timeout=30.0, metadata=metadata
        )
        revision: int = reply.deployment.revision
        return revision

    return change

"""Real processes: `dspy-registry serve` as a subprocess, reached on a free port."""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dspy_registry.v1 import registry_pb2 as pb
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc
from tests.factories import dspy_state, spec_proto

ROOT = Path(__file__).resolve().parents[2]
SERVE = Path(sys.executable).parent / "dspy-registry"
BUF_BIN = ROOT / "node_modules" / ".bin"
SHIM_BIN = Path(__file__).resolve().parent / "bin"


# For the modules whose tests run a server and a series of CLI or pod processes: 10-26 s each at a
# load of 8, and each process's start-up is CPU-bound, so that on a loaded machine a test takes
# several times as long (one walkthrough of 10-16 s passed pytest-timeout's 60 s at a load of 13).
# The timeout is there to catch a hang, not to time a test.
PROCESSES_TIMEOUT = pytest.mark.timeout(240)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerProcess:
    def __init__(self, database: str, log: Path, extra_args: list[str] | None = None) -> None:
        self.port = free_port()
        self.extra_args = list(extra_args or ())  # more `serve` flags, e.g. --http-listen
        self.address = f"127.0.0.1:{self.port}"
        self.database = database
        self.log_path = log
        # Where the README's commands look for it, relative to the test's working folder.
        self.token_file = log.parent / ".dspy-registry" / "admin.token"
        self.process: subprocess.Popen[bytes] | None = None

    def register(
        self,
        program: str,
        versions: Iterable[str],
        *,
        signature: bool = True,
        labels: Mapping[str, str] | None = None,
        performance: Mapping[str, float] | None = None,
    ) -> None:
        """The signature `sig` 1.0.0 (unless `signature=False`: registered already), then these versions
        of `program`, each artifact `dspy_state(version)`; each auto-deploys to development."""
        with self.channel() as channel:
            registry = pb_grpc.RegistryServiceStub(channel)
            if signature:
                registry.RegisterSignature(
                    pb.RegisterSignatureRequest(signature="sig", version="1.0.0", spec=spec_proto())
                )
            for version in versions:
                spec = pb.ProgramVersionSpec(
                    program=program,
                    version=version,
                    signature="signatures/sig/versions/1.0.0",
                    labels=labels or {},
                    performance=performance or {},
                )
                registry.RegisterProgram(pb.RegisterProgramRequest(spec=spec, artifact=dspy_state(version)))

    def channel(self, token: str | None = None) -> grpc.Channel:
        """A channel whose calls authenticate with `token`, by default the bootstrap admin's."""
        token = token or self.token_file.read_text().strip()
        return grpc.intercept_channel(grpc.insecure_channel(self.address), _Bearer(token))

    def start(self) -> ServerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child writes to it
        self.process = subprocess.Popen(
            [
                str(SERVE),
                "serve",
                "--listen",
                self.address,
                "--database",
                self.database,
                "--grace",
                "5",
                "--admin-token-file",
                str(self.token_file),
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.wait_serving()
        return self

    def wait_serving(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                assert self.process is not None and self.process.poll() is None, self.log()
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        raise AssertionError(f"not SERVING after {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
):
    def __init__(self, token: str) -> None:
        self.metadata = [("authorization", f"Bearer {token}")]

    def _details(self, details: Any) -> Any:
        return _Details(
            details.method, details.timeout, list(details.metadata or ()) + self.metadata, details.credentials
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


class _Details(
    collections.namedtuple("_Details", ["method", "timeout", "metadata", "credentials"]),
    grpc.ClientCallDetails,
):
    pass


def env_with_tools() -> dict[str, str]:
    """PATH with buf (node_modules) and the grpcurl shim first, and this venv's python."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join(
        [str(SHIM_BIN), str(BUF_BIN), str(Path(sys.executable).parent), env["PATH"]]
    )
    return env


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[type[ServerProcess]]:
    started: list[ServerProcess] = []

    class Tracked(ServerProcess):
        def start(self) -> ServerProcess:
            started.append(self)
            return super().start()

    yield Tracked
    for server in started:
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait()

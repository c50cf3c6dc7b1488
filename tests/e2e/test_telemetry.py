"""`serve --metrics-listen` answers a Prometheus scrape; `--telemetry-exporter console` prints spans."""

from __future__ import annotations

import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from dspy_registry.v1 import registry_pb2 as pb
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc
from tests.e2e.conftest import SERVE, ServerProcess, free_port
from tests.factories import spec_proto


def test_a_server_serves_its_metrics_to_prometheus_and_prints_its_spans(
    serve: type[ServerProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    # The flags' environment variables: ServerProcess passes its own flags, and the child inherits these.
    monkeypatch.setenv("DSPY_REGISTRY_METRICS_LISTEN", f"127.0.0.1:{port}")
    monkeypatch.setenv("DSPY_REGISTRY_TELEMETRY_EXPORTER", "console")
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    with server.channel() as channel:
        registry = pb_grpc.RegistryServiceStub(channel)
        registry.RegisterSignature(
            pb.RegisterSignatureRequest(signature="sig", version="1.0.0", spec=spec_proto())
        )
        registry.GetSignature(pb.GetSignatureRequest(name="signatures/sig"))

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    lines = text.splitlines()
    for name in (
        "# TYPE rpc_server_duration_milliseconds histogram",
        "# TYPE dspy_registry_watch_streams gauge",
        "# TYPE dspy_registry_deployments gauge",
    ):
        assert name in lines, (name, text)
    assert any(
        line.startswith("rpc_server_duration_milliseconds_count{")
        and 'rpc_method="RegisterSignature"' in line
        and 'rpc_grpc_status_code="0"' in line
        and line.endswith(" 1.0")
        for line in lines
    ), text
    assert any(
        line.startswith("dspy_registry_watch_streams{") and 'watch="targets"' in line for line in lines
    )
    # No deployment yet: every seeded environment reads 0 in every state.
    assert any(
        line.startswith("dspy_registry_deployments{")
        and 'environment="production"' in line
        and 'state="in_progress"' in line
        and line.endswith(" 0.0")
        for line in lines
    ), text

    assert server.stop(signal.SIGTERM) == 0
    # The console exporter prints each span as JSON on stdout (the server log here), flushed at shutdown.
    log = server.log()
    assert '"name": "/dspy_registry.v1.RegistryService/RegisterSignature"' in log
    assert '"service.name": "dspy-registry"' in log


def test_a_taken_metrics_port_fails_the_start_with_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        done = subprocess.run(
            [
                str(SERVE),
                "serve",
                "--no-auth",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                address,
                "--database",
                f"sqlite:///{tmp_path / 'r.db'}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1 and f"cannot serve metrics on {address}" in done.stderr, done.stderr

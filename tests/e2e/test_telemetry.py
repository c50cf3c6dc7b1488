"""`serve --metrics-listen` answers a Prometheus scrape; `--telemetry-exporter console` prints spans."""

from __future__ import annotations

import json
import platform
import signal
import socket
import subprocess
import urllib.error
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
        "# TYPE rpc_server_call_duration_seconds histogram",
        "# TYPE dspy_registry_watch_streams gauge",
        "# TYPE dspy_registry_deployments gauge",
        "# TYPE dspy_registry_rollbacks_total counter",
        "# TYPE process_resident_memory_bytes gauge",
        "# TYPE python_gc_collections_total counter",
    ):
        assert name in lines, (name, text)
    # The deprecated name, in milliseconds, is gone.
    assert "rpc_server_duration_milliseconds" not in text
    assert any(
        line.startswith("rpc_server_call_duration_seconds_count{")
        and 'rpc_method="dspy_registry.v1.RegistryService/RegisterSignature"' in line
        and 'rpc_response_status_code="OK"' in line
        and 'rpc_system_name="grpc"' in line
        and line.endswith(" 1.0")
        for line in lines
    ), text
    assert any(
        line.startswith("dspy_registry_watch_streams{") and 'watch="targets"' in line for line in lines
    )
    # No deployment yet: every seeded environment reads 0 in every state, and no rollback yet is a 0.
    assert any(
        line.startswith("dspy_registry_deployments{")
        and 'environment="production"' in line
        and 'state="in_progress"' in line
        and line.endswith(" 0.0")
        for line in lines
    ), text
    assert 'dspy_registry_rollbacks_total{cause="auto",environment="production"} 0.0' in lines, text
    (build,) = [line for line in lines if line.startswith("dspy_registry_build_info{")]
    assert f'python="{platform.python_version()}"' in build and build.endswith(" 1.0"), build

    # The metrics port answers /metrics and the health routes, and nothing else.
    assert _get(port, "/healthz") == (200, {"status": "ok"})
    assert _get(port, "/readyz") == (200, {"status": "ok"})
    assert _get(port, "/")[0] == 404 and _get(port, "/metricz")[0] == 404

    assert server.stop(signal.SIGTERM) == 0
    # The console exporter prints each span as JSON on stdout (the server log here), flushed at shutdown;
    # the access log's line for the call carries its span's ids.
    log = server.log()
    assert '"name": "/dspy_registry.v1.RegistryService/RegisterSignature"' in log
    assert '"service.name": "dspy-registry"' in log
    (access,) = [
        json.loads(line)
        for line in log.splitlines()
        if line.startswith("{") and '"method": "/dspy_registry.v1.RegistryService/GetSignature"' in line
    ]
    assert f'"trace_id": "0x{access["trace_id"]}"' in log and f'"span_id": "0x{access["span_id"]}"' in log


def _get(port: int, path: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


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

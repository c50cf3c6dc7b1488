"""The health probe the container and the Kubernetes manifests run (`python -m dspy_registry.server.probe`),
against real server processes: plaintext, TLS, mutual TLS, and a server whose database went away."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dspy_registry.server import config
from dspy_registry.server import probe as probe_module
from tests.certificates import Authority
from tests.conftest import SKIP_POSTGRES, PostgresDatabases
from tests.e2e.conftest import SERVE, ServerProcess, free_port
from tests.eventually import eventually
from tests.tcp_proxy import TcpProxy

PROBE = [sys.executable, "-m", "dspy_registry.server.probe"]


def probe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PROBE, *args], capture_output=True, text=True, timeout=60, env=env)


def test_the_probe_is_light_and_defaults_to_the_servers_address() -> None:
    """The kubelet runs it every few seconds: it imports grpc and the health stubs, not the server."""
    assert probe_module.DEFAULT_LISTEN == config.DEFAULT_LISTEN
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, dspy_registry.server.probe; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    ours = [m for m in eval(loaded.stdout) if m.startswith("dspy_registry")]
    assert ours == ["dspy_registry", "dspy_registry.server", "dspy_registry.server.probe"]


def test_readiness_and_liveness_of_a_plaintext_server(serve: type[ServerProcess], tmp_path: Path) -> None:
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    ready = probe("--address", server.address)
    assert (ready.returncode, ready.stdout.strip()) == (0, "SERVING")
    assert probe("--address", server.address, "--service", "dspy_registry.writes").returncode == 0
    unknown = probe("--address", server.address, "--service", "no.such.Service")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
    assert probe("--address", server.address, "--service", "no.such.Service", "--alive").returncode == 0
    # The address from DSPY_REGISTRY_LISTEN, as in the container: a wildcard is dialled on loopback.
    env = dict(os.environ, DSPY_REGISTRY_LISTEN=f"0.0.0.0:{server.port}")
    assert probe(env=env).returncode == 0
    server.stop()
    for args in ((), ("--alive",)):
        down = probe("--address", server.address, "--timeout", "2", *args)
        assert down.returncode == 1 and "UNAVAILABLE" in down.stderr, down


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Authority, Path]]:
    """A server listening as a container does (DSPY_REGISTRY_LISTEN=0.0.0.0:port), with a certificate for
    `dspy-registry` (the Service's name, not 127.0.0.1) and client certificates required."""
    ca = Authority("probe test CA")
    ca.issue("dspy-registry", server=True, names=["dspy-registry"]).save(tmp_path, "server")
    ca.issue("prober", server=False).save(tmp_path, "client")
    (tmp_path / "ca.crt").write_bytes(ca.pem)
    port = free_port()
    env = dict(
        os.environ,
        DSPY_REGISTRY_LISTEN=f"0.0.0.0:{port}",
        DSPY_REGISTRY_DATABASE=f"sqlite:///{tmp_path / 'r.db'}",
        DSPY_REGISTRY_ADMIN_TOKEN_FILE=str(tmp_path / "admin.token"),
        DSPY_REGISTRY_TLS_CERT=str(tmp_path / "server.crt"),
        DSPY_REGISTRY_TLS_KEY=str(tmp_path / "server.key"),
        DSPY_REGISTRY_TLS_CLIENT_CA=str(tmp_path / "ca.crt"),
    )
    with open(tmp_path / "server.log", "wb") as log:
        process = subprocess.Popen([str(SERVE), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"127.0.0.1:{port}", ca, tmp_path
    finally:
        process.kill()
        process.wait()


def test_tls_and_mutual_tls(tls_server: tuple[str, Authority, Path]) -> None:
    address, _, folder = tls_server
    tls = ["--tls-ca", str(folder / "ca.crt"), "--tls-server-name", "dspy-registry"]
    client = ["--tls-cert", str(folder / "client.crt"), "--tls-key", str(folder / "client.key")]
    eventually(
        lambda: probe("--address", address, *tls, *client).returncode == 0,
        "the TLS server SERVING to the probe",
    )
    # The certificate names the Service, not the address dialled; no client certificate, no answer.
    assert probe("--address", address, "--tls-ca", str(folder / "ca.crt"), *client).returncode == 1
    assert probe("--address", address, *tls, "--timeout", "2").returncode == 1
    assert probe("--address", address, "--timeout", "2").returncode == 1  # plaintext to a TLS port
    usage = probe("--address", address, "--tls-cert", str(folder / "client.crt"))
    assert usage.returncode == 2 and "go together" in usage.stderr


@pytest.mark.postgres
async def test_a_server_whose_database_is_away_is_alive_but_not_ready(
    serve: type[ServerProcess], tmp_path: Path, pg_databases: PostgresDatabases
) -> None:
    if SKIP_POSTGRES:
        pytest.skip("DSPY_REGISTRY_SKIP_POSTGRES=1")
    url = await pg_databases.create()
    proxy = TcpProxy.in_front_of(url)
    try:
        server = serve(proxy.url(url), tmp_path / "server.log").start()
        proxy.cut()
        eventually(
            lambda: "NOT_SERVING" in probe("--address", server.address).stderr,
            "readiness failing NOT_SERVING once the database is away",
        )
        alive = probe("--address", server.address, "--alive")
        assert (alive.returncode, alive.stdout.strip()) == (0, "NOT_SERVING")
        proxy.resume()
        eventually(lambda: probe("--address", server.address).returncode == 0, "ready again")
    finally:
        proxy.close()

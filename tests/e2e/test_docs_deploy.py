"""Every command block of docs/deploy.md, run as written (the server's port aside) in a scratch folder."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import yaml

from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import access_pb2_grpc as apb_grpc
from tests.e2e.conftest import ROOT, SERVE, ServerProcess, env_with_tools, free_port
from tests.eventually import eventually

DOC = (ROOT / "docs" / "deploy.md").read_text()


def _block(name: str) -> str:
    """The ```sh block after `<!-- tested: name -->`."""
    (block,) = re.findall(rf"<!-- tested: {name} -->\n```sh\n(.*?)```", DOC, flags=re.S)
    return str(block)


def _run(name: str, cwd: Path, *, port: int = 0, env: dict[str, str] | None = None) -> str:
    """Run the block `name` in `cwd`; `port` stands for the doc's 50051."""
    script = "set -euo pipefail\n" + (_block(name).replace("50051", str(port)) if port else _block(name))
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        env={**env_with_tools(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"docs/deploy.md block {name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _objects(path: Path) -> list[dict[str, Any]]:
    objects = [o for o in yaml.safe_load_all(path.read_text()) if o]
    for o in objects:
        o["metadata"].pop("creationTimestamp", None)  # kubectl's dry run writes null there
        kubernetes_validate.validate(o, kubernetes_validate.latest_version(), strict=True)
    return objects


def test_every_sh_block_is_tested() -> None:
    blocks = re.findall(r"(<!-- tested: [a-z-]+ -->\n)?```sh\n", DOC)
    assert blocks and all(blocks)
    names = re.findall(r"<!-- tested: ([a-z-]+) -->", DOC)
    tested = re.findall(r'_run\(\s*"([a-z-]+)"', Path(__file__).read_text())
    assert sorted(names) == sorted(set(tested))


def test_the_probe_commands(serve: type[ServerProcess], tmp_path: Path) -> None:
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    out = _run("deploy-probe", tmp_path, port=server.port)
    assert out.split() == ["SERVING", "SERVING", "SERVING"]


def test_the_trial_ca_serves_tls_probed_as_the_manifests_do_and_makes_the_secrets(tmp_path: Path) -> None:
    _run("deploy-trial-ca", tmp_path)
    port = free_port()
    env = {
        **env_with_tools(),
        "DSPY_REGISTRY_LISTEN": f"0.0.0.0:{port}",
        "DSPY_REGISTRY_DATABASE": f"sqlite:///{tmp_path / 'r.db'}",
        "DSPY_REGISTRY_ADMIN_TOKEN_FILE": str(tmp_path / "admin.token"),
        "DSPY_REGISTRY_TLS_CERT": str(tmp_path / "server.crt"),
        "DSPY_REGISTRY_TLS_KEY": str(tmp_path / "server.key"),
    }
    with open(tmp_path / "server.log", "wb") as log:
        server = subprocess.Popen([str(SERVE), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # The manifests' readiness probe, its address from DSPY_REGISTRY_LISTEN as in the pod.
        ready = [sys.executable, "-m", "dspy_registry.server.probe", "--tls-ca", "ca.crt"]
        ready += ["--tls-server-name", "dspy-registry"]
        eventually(
            lambda: (
                subprocess.run(ready, cwd=tmp_path, env=env, capture_output=True, timeout=60).returncode == 0
            ),
            "the server with the trial CA's certificate SERVING to the probe",
        )
    finally:
        server.kill()
        server.wait()

    _run("deploy-secrets", tmp_path)
    secrets = {
        o["metadata"]["name"]: sorted(o["data"])
        for f in ("admin-secret.yaml", "tls-secret.yaml", "database-secret.yaml")
        for o in _objects(tmp_path / f)
    }
    assert secrets == {
        "dspy-registry-admin": ["token"],
        "dspy-registry-tls": ["ca.crt", "tls.crt", "tls.key"],
        "dspy-registry-database": ["dsn"],
    }
    assert (tmp_path / "admin.token").read_text().startswith("dspyr_")


def test_a_serving_token_reads_what_it_serves_and_nothing_else(
    serve: type[ServerProcess], tmp_path: Path
) -> None:
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    server.register("triage", ["1.0.0"])
    server.register("ranker", ["1.0.0"], signature=False)
    _run("deploy-serving-token", tmp_path, port=server.port)  # the admin token in .dspy-registry/
    [secret] = _objects(tmp_path / "triage-token-secret.yaml")
    assert secret["metadata"]["name"] == "triage-registry-token" and list(secret["data"]) == ["token"]
    triage = {
        "DSPY_REGISTRY_TARGET": server.address,
        "DSPY_REGISTRY_TOKEN_FILE": str(tmp_path / "triage.token"),
    }

    def show(program: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["dspy-registry", "program", "show", program],
            env={**env_with_tools(), **triage},
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert show("triage").returncode == 0
    denied = show("ranker")
    assert denied.returncode != 0 and "PERMISSION_DENIED" in denied.stderr


def test_reset_token_then_the_audit_log(serve: type[ServerProcess], tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'data' / 'registry.db'}"
    first = serve(database, tmp_path / "first.log").start()
    lost = first.token_file.read_text().strip()
    assert first.stop() == 0
    _run("deploy-reset-token", tmp_path)
    new = (tmp_path / "data" / "admin.token").read_text().strip()
    assert new.startswith("dspyr_") and new != lost
    second = serve(database, tmp_path / "second.log").start()
    out = _run("deploy-audit", tmp_path, port=second.port)
    assert "reset-token" in out and "SUCCEEDED" in out
    for token, code in ((lost, grpc.StatusCode.UNAUTHENTICATED), (new, grpc.StatusCode.OK)):
        with second.channel(token) as channel:
            try:
                apb_grpc.AccessServiceStub(channel).WhoAmI(apb.WhoAmIRequest())
                answered = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                answered = exc.code()
        assert answered == code

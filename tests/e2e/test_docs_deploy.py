"""Every command block of docs/deploy.md, run as written (the server's port aside) in a scratch folder."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import yaml

from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import access_pb2_grpc as apb_grpc
from tests.certificates import Authority
from tests.e2e.conftest import ROOT, ServerProcess, env_with_tools, free_port

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


def test_the_image_environment_serves_and_stops(tmp_path: Path) -> None:
    port = free_port()
    _run("container", tmp_path, port=port)
    log = (tmp_path / "server.log").read_text()
    assert f'"address": "0.0.0.0:{port}"' in log and '"msg": "stopped"' in log, log
    assert (tmp_path / "data" / "registry.db").exists() and (tmp_path / "data" / "admin.token").exists()


def test_the_probe_commands(serve: type[ServerProcess], tmp_path: Path) -> None:
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    out = _run("probe", tmp_path, port=server.port)
    assert out.split() == ["SERVING", "SERVING", "SERVING"]


def test_the_secrets_match_what_the_manifests_mount(tmp_path: Path) -> None:
    ca = Authority("docs CA")
    ca.issue("dspy-registry", server=True, names=["dspy-registry"]).save(tmp_path, "server")
    (tmp_path / "ca.crt").write_bytes(ca.pem)
    _run("secrets", tmp_path)
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


def test_the_render_command(tmp_path: Path) -> None:
    (tmp_path / "deploy").symlink_to(ROOT / "deploy")
    _run("render", tmp_path)
    objects = _objects(tmp_path / "dspy-registry.yaml")
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} == {
        ("ServiceAccount", "dspy-registry"),
        ("Service", "dspy-registry"),
        ("Deployment", "dspy-registry"),
        ("PodDisruptionBudget", "dspy-registry"),
    }


def test_a_serving_token_reads_what_it_serves_and_nothing_else(
    serve: type[ServerProcess], tmp_path: Path
) -> None:
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    server.register("triage", ["1.0.0"])
    server.register("ranker", ["1.0.0"], signature=False)
    admin = {"DSPY_REGISTRY_TARGET": server.address, "DSPY_REGISTRY_TOKEN_FILE": str(server.token_file)}
    _run("serving-token", tmp_path, env=admin)
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
    _run("reset-token", tmp_path)
    new = (tmp_path / "data" / "admin.token").read_text().strip()
    assert new.startswith("dspyr_") and new != lost
    second = serve(database, tmp_path / "second.log").start()
    out = _run("audit", tmp_path, port=second.port)
    assert "reset-token" in out and "SUCCEEDED" in out
    for token, code in ((lost, grpc.StatusCode.UNAUTHENTICATED), (new, grpc.StatusCode.OK)):
        with second.channel(token) as channel:
            try:
                apb_grpc.AccessServiceStub(channel).WhoAmI(apb.WhoAmIRequest())
                answered = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                answered = exc.code()
        assert answered == code

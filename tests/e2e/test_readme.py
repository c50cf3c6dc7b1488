"""Every command the README and docs/ show, run against a real server process.

The buf curl walkthrough runs as written; the grpcurl walkthrough runs
through a shim (tests/e2e/bin/grpcurl) that translates it to buf curl,
because grpcurl cannot be installed here.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from dspy_registry.v1 import registry_pb2 as pb
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc
from tests import docs
from tests.docs import PAGES, sh_block
from tests.e2e.conftest import PROCESSES_TIMEOUT, ROOT, ServerProcess, env_with_tools, free_port

pytestmark = PROCESSES_TIMEOUT

README = (ROOT / "README.md").read_text()
_block = sh_block


def _run_block(block: str, server: ServerProcess | None, cwd: Path) -> str:
    script = "set -euo pipefail\n" + (block.replace("localhost:50051", server.address) if server else block)
    done = subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env_with_tools(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"README block failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _registry(server: ServerProcess) -> tuple[grpc.Channel, pb_grpc.RegistryServiceStub]:
    channel = server.channel()
    return channel, pb_grpc.RegistryServiceStub(channel)


async def test_the_readme_shows_both_commands() -> None:
    assert "make run" in README and "make test" in README


async def test_the_buf_curl_walkthrough(serve: type[ServerProcess], tmp_path: Path) -> None:
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    block = _block("buf-curl")
    out = _run_block(block, server, tmp_path)
    assert "dspy_registry.v1.RegistryService" in out and '"programs/sentiment_classifier"' in out
    assert '"recommendation": "RECOMMENDATION_UPGRADE"' in out
    channel, registry = _registry(server)
    with channel:
        latest = registry.GetProgramVersion(
            pb.GetProgramVersionRequest(name="programs/sentiment_classifier/versions/latest")
        )
    assert latest.program_version.version == "2.2.0"


async def test_the_grpcurl_walkthrough(serve: type[ServerProcess], tmp_path: Path) -> None:
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    block = _block("grpcurl")
    out = _run_block(block, server, tmp_path)
    assert "rpc RegisterProgram ( dspy_registry.v1.RegisterProgramRequest )" in out
    assert '"recommendation": "RECOMMENDATION_UPGRADE"' in out
    channel, registry = _registry(server)
    with channel:
        versions = registry.ListProgramVersions(
            pb.ListProgramVersionsRequest(parent="programs/sentiment_classifier")
        )
    assert [v.version for v in versions.program_versions] == ["2.2.0", "2.1.0"]
    assert versions.program_versions[0].previous_version == "2.1.0"


async def test_the_access_control_walkthrough(serve: type[ServerProcess], tmp_path: Path) -> None:
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    out = _run_block(_block("access"), server, tmp_path)
    assert '"name": "principals/alice"' in out
    assert '"allowed": false' not in out  # proto3 JSON leaves false out ...
    assert "no grant gives alice deploy on sentiment_classifier" in out  # ... the reason says it
    assert "refused, as it should be" in out
    assert (
        '"outcome": "AUDIT_OUTCOME_DENIED"' in out and '"resource": "programs/ranker/versions/latest"' in out
    )
    secret = (tmp_path / "alice-token.json").read_text()
    assert "dspyr_" in secret and secret.split('"secret": "')[1][:6] == "dspyr_"
    assert "dspyr_" not in server.log().replace(server.token_file.read_text().strip()[:19], "")


async def test_the_environments_walkthrough(serve: type[ServerProcess], tmp_path: Path) -> None:
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    out = _run_block(_block("environments"), server, tmp_path)
    assert '"errorRate": 0.02' in out


async def test_the_deployments_walkthrough(serve: type[ServerProcess], tmp_path: Path) -> None:
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    out = _run_block(_block("deployments"), server, tmp_path)
    assert '"acceptedCount": 1' in out  # the pods' measurements, by hand
    assert "DEPLOYMENT_STATE_PENDING_CHECKS ['integration_tests']" in out  # held for CI's check
    assert "canary: DEPLOYMENT_STATE_SUCCEEDED" in out  # each step passed on a HEALTHY verdict
    where = out.split("canary: DEPLOYMENT_STATE_SUCCEEDED")[1].split("RollbackDeployment")[0]
    assert '"environments": [' in where and '"environment": "production"' in where  # deployed where
    assert '"state": "DEPLOYMENT_STATE_ROLLED_BACK"' in out
    assert out.rstrip().endswith("}") and '"version": "1.0.0"' in out.split("RollbackDeployment")[-1]
    with server.channel() as channel:
        served = pb_grpc.RegistryServiceStub(channel).GetProgramVersion(
            pb.GetProgramVersionRequest(name="programs/triage", environment="production")
        )
    assert served.program_version.version == "1.0.0"
    assert "sidecars: ['triage-7f9c-x2k4']" in out  # reported, and live
    assert '"snapshot"' in out and '"progress"' in out  # the watch: a snapshot, then a bookmark when idle

    # The block's deploy helper, refused: the refusal is what a reader sees, not a Python traceback.
    (helper,) = re.findall(r"^deploy\(\) \{.*?^\}", _block("deployments"), flags=re.S | re.M)
    token = 'TOKEN="authorization: Bearer $(cat .dspy-registry/admin.token)"\n'
    with pytest.raises(AssertionError, match="README block failed") as refused:
        _run_block(
            token + helper + '\ndeploy 9.9.9 staging \'{"strategy": "STRATEGY_REPLACE"}\'', server, tmp_path
        )
    assert "not_found" in str(refused.value).lower() and "Traceback" not in str(refused.value)

    out = _run_block(_block("sidecar"), server, tmp_path)  # where the walkthrough left production
    target = json.loads(out[out.index("{") : out.rindex("}") + 1])
    assert (target["stable"]["version"], target["candidate"]) == ("1.0.0", None)
    assert (tmp_path / "serving" / "triage" / target["stable"]["file"]).exists()
    assert "triage changed: serving/triage/target.json" in out


async def test_the_command_line_walkthrough(serve: type[ServerProcess], tmp_path: Path) -> None:
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    out = _run_block(_block("cli"), server, tmp_path)
    assert "step 1/2 at 10%" in out and "step 2/2 at 50%" in out  # the canary, step by step
    assert "deployed where" in out  # program show NAME: the table of environments
    assert any("stable" in row and "1.1.0" in row and "100%" in row for row in out.splitlines())  # status
    assert "DEPLOYMENT_STATE_SUCCEEDED" in out and out.rstrip().endswith("exit code 1")


async def test_every_sh_block_in_the_docs_is_tested() -> None:
    untested = {
        page.relative_to(ROOT).as_posix(): len([b for b in blocks if not b])
        for page in PAGES
        if (blocks := re.findall(r"(<!-- tested: [a-z-]+ -->\n)?```sh\n", page.read_text()))
    }
    # the two `make` commands at the top of the README, run by the tests below and CI
    assert {page: n for page, n in untested.items() if n} == {"README.md": 1}


async def test_the_soak_block_runs_the_reliability_suite_for_the_minutes_asked() -> None:
    """docs/reliability.md's commands, as `make -n`: what each would run (the suite itself runs in
    `make test`, and at length would take the minutes it names)."""
    commands = [line.split("#")[0].split() for line in _block("soak").strip().splitlines()]
    assert [c[:2] for c in commands] == [["make", "test"], ["make", "soak"], ["make", "soak"]]
    expected = {"test": "-m pytest", "soak": "SOAK_MINUTES=15 ", "soak SOAK_MINUTES=60": "SOAK_MINUTES=60 "}
    for command in commands:
        target = " ".join(command[1:])
        done = subprocess.run(
            ["make", "-n", *command[1:]], cwd=ROOT, capture_output=True, text=True, check=True
        )
        assert expected[target] in done.stdout, done.stdout
        if target != "test":
            assert "pytest tests/reliability" in done.stdout, done.stdout


async def test_make_targets_named_in_the_readme_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in ("setup", "run", "test", "lint", "proto", "bench", "demo", "clients"):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target


async def test_make_run_serves_and_stops_on_sigint(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            "make",
            "--no-print-directory",
            "run",
            f"ARGS=--listen 127.0.0.1:{port} --database sqlite:///{tmp_path}/r.db",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # SIGINT to make and the server alike, as Ctrl-C does
    )
    try:
        server = ServerProcess(f"sqlite:///{tmp_path}/r.db", tmp_path / "unused.log")
        server.address, server.process = f"127.0.0.1:{port}", process
        server.wait_serving()
    finally:
        os.killpg(process.pid, signal.SIGINT)
        output = process.communicate(timeout=30)[0].decode()
    assert '"msg": "stopped"' in output


async def test_the_benchmark_driver_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--only",
            "get",
            "--backend",
            "sqlite",
            "--seconds",
            "0.5",
            "--warmup",
            "0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    figures = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(f["bench"], f["auth"]) for f in figures] == [
        ("get_program_version", False),
        ("get_program_version", True),
        ("get_program_version_by_environment", True),
    ]
    assert all(f["calls"] > 0 and f["errors"] == 0 for f in figures)


async def test_the_telemetry_example(
    serve: type[ServerProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("DSPY_REGISTRY_METRICS_LISTEN", f"127.0.0.1:{port}")  # the child inherits it
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    out = _run_block(_block("telemetry").replace("127.0.0.1:9464", f"127.0.0.1:{port}"), server, tmp_path)
    lines = out.splitlines()
    assert any(
        'rpc_method="dspy_registry.v1.AccessService/WhoAmI"' in line and line.endswith(" 1.0")
        for line in lines
    ), out
    assert 'dspy_registry_deployments{environment="staging",state="in_progress"} 0.0' in lines, out


async def test_the_rest_routes_example(
    serve: type[ServerProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("DSPY_REGISTRY_HTTP_LISTEN", f"127.0.0.1:{port}")  # the child inherits it
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    server.register("sentiment_classifier", ["2.1.0", "2.2.0"], labels={"team": "ml_platform"})
    out = _run_block(_block("rest").replace("127.0.0.1:8080", f"127.0.0.1:{port}"), server, tmp_path)
    first, state, third, fourth = out.splitlines()
    listed, rolled, refused = json.loads(first), json.loads(third), json.loads(fourth)
    assert (listed["total"], listed["programs"][0]["name"]) == (1, "programs/sentiment_classifier"), out
    assert state == "succeeded"
    assert (rolled["status"], rolled["reason"]) == ("initiated", "error rate above 5%")
    assert refused["error"]["code"] == "UNAUTHENTICATED"
    program = json.loads((tmp_path / "program.json").read_text())
    assert (program["version"], [v["version"] for v in program["versions"]]) == ("2.2.0", ["2.2.0", "2.1.0"])


# Blocks a reader following the docs in order on their one server does not run there, and why; each
# has its own test.
ELSEWHERE = {
    "soak": "make commands, not the store's (test_the_soak_block_… runs them)",
    "buf-curl": "the grpcurl walkthrough again, for readers without grpcurl: one or the other",
    "dashboard-serve": "starts the server this test already runs",
    "client-config": "a TLS server's (test_docs_client.py starts one)",
    "fleet": "a benchmark of three replicas of its own (tests/e2e/test_bench.py runs it small)",
    "completion": "writes into the reader's home (test_docs_cli.py gives it a home of its own)",
    "prometheus": "asks a Prometheus scraping the server (test_operations.py runs one)",
}
# docs/deploy.md's blocks start servers and probes of their own and stop them (reset-token works on a
# stopped store): tests/e2e/test_docs_deploy.py runs them.
ELSEWHERE_PREFIX = "deploy-"
# Blocks run from the checkout, where the files they name are.
FROM_CHECKOUT = {"clients", "rules"}


@pytest.mark.timeout(300)  # every walkthrough, one after the other: minutes on a loaded machine
async def test_the_docs_read_in_order_on_one_store(
    serve: type[ServerProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader who runs every block, page after page in the README's order, against the one server
    they started: each block works where the ones before it left the store (each is also tested
    alone, with its own checks, above and beside this file)."""
    http, metrics = free_port(), free_port()
    # The one server the docs' blocks assume, its flags together (the child inherits them).
    monkeypatch.setenv("DSPY_REGISTRY_HTTP_LISTEN", f"127.0.0.1:{http}")
    monkeypatch.setenv("DSPY_REGISTRY_METRICS_LISTEN", f"127.0.0.1:{metrics}")
    monkeypatch.setenv("DSPY_REGISTRY_WEBHOOK_ALLOW", "127.0.0.0/8")
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    ran = []
    for name in docs.tested_in_reading_order():
        if name in ELSEWHERE or name.startswith(ELSEWHERE_PREFIX):
            continue
        block = _block(name).replace("127.0.0.1:8080", f"127.0.0.1:{http}")
        block = block.replace("127.0.0.1:9464", f"127.0.0.1:{metrics}")
        if name in FROM_CHECKOUT:
            block = block.replace(".dspy-registry/admin.token", str(server.token_file))
            _run_block(block, server, ROOT)
        else:
            _run_block(block, server, tmp_path)
        ran.append(name)
    assert {"grpcurl", "clients", "rest", "cli", "deployments", "sidecar", "webhooks", "telemetry"} <= set(
        ran
    )

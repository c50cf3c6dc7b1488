"""The operator commands of the real `dspy-registry` console script against a `serve` process."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import subprocess
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from dspy_registry.server.app import App
from dspy_registry.server.domain import webhooks
from tests.certificates import Authority, tls_config
from tests.e2e.conftest import PROCESSES_TIMEOUT, SERVE, ServerProcess
from tests.eventually import eventually
from tests.factories import dspy_state, spec_proto
from tests.webhook_receiver import ThreadedReceiver

pytestmark = PROCESSES_TIMEOUT


class Cli:
    """Runs `dspy-registry ...` with the server's address and token in the environment, as a user would."""

    def __init__(self, server: ServerProcess, cwd: Path) -> None:
        self.cwd = cwd
        self.env = dict(os.environ)
        self.env["DSPY_REGISTRY_TARGET"] = server.address
        self.env["DSPY_REGISTRY_TOKEN_FILE"] = str(server.token_file)
        self.env.pop("DSPY_REGISTRY_TOKEN", None)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(SERVE), *args],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(SERVE), *args], cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == code, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)


def _start(serve: type[ServerProcess], tmp_path: Path) -> Cli:
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    (tmp_path / "spec.json").write_text(json.dumps(json_format.MessageToDict(spec_proto())))
    (tmp_path / "v1.json").write_bytes(dspy_state("v1"))
    (tmp_path / "v2.json").write_bytes(dspy_state("v2"))
    return Cli(server, tmp_path)


# The signature `classify` 1.0.0, and a version of `triage` from v1.json (add "--version", V).
SIGNATURE = ("signature", "register", "classify", "--file", "spec.json", "--version", "1.0.0")
REGISTER = ("program", "register", "triage", "--file", "v1.json", "--signature", "classify")


def test_signatures_and_programs(serve: type[ServerProcess], tmp_path: Path) -> None:
    cli = _start(serve, tmp_path)
    out = cli.run("signature", "register", "classify", "--file", "spec.json", "--version", "1.0.0").stdout
    assert "signatures/classify/versions/1.0.0" in out
    assert [s["name"] for s in cli.json("signature", "list")] == ["signatures/classify"]
    assert "signatures/classify" in cli.run("signature", "list").stdout
    assert cli.json("signature", "show", "classify@1.0.0")["version"] == "1.0.0"

    register = ("program", "register", "triage", "--signature", "classify@1.0.0")
    cli.run(*register, "--file", "v1.json", "--version", "1.0.0", "--performance", "accuracy=0.91")
    registered = cli.json(
        *register,
        "--file",
        "v2.json",
        "--version",
        "1.1.0",
        "--performance",
        "accuracy=0.93",
        "--metadata",
        "owner=ml",
    )
    assert registered["name"] == "programs/triage/versions/1.1.0" and registered["metadata"] == {
        "owner": "ml"
    }
    assert [p["latest_version"] for p in cli.json("program", "list")] == ["1.1.0"]
    assert cli.json("program", "show", "triage")["version"] == "1.1.0"
    assert cli.json("program", "show", "triage@1.0.0")["performance"] == {"accuracy": 0.91}
    versions = cli.run("program", "versions", "triage").stdout
    assert "1.1.0" in versions and "accuracy=0.93" in versions
    assert [v["version"] for v in cli.json("program", "versions", "triage")] == ["1.1.0", "1.0.0"]
    assert (
        cli.json("program", "compare", "triage", "1.0.0", "1.1.0")["recommendation"]
        == "RECOMMENDATION_UPGRADE"
    )
    (step,) = cli.json("program", "upgrade-path", "triage", "1.0.0")
    assert (step["from_version"], step["to_version"]) == ("1.0.0", "1.1.0")

    # Above the unary limit: streamed, with a progress bar on stderr, the result on stdout.
    (tmp_path / "big.json").write_bytes(dspy_state("big", pad=5 << 20))
    done = cli.run(*register, "--file", "big.json", "--version", "2.0.0", "--json")
    assert json.loads(done.stdout)["artifact"]["size_bytes"] == str((tmp_path / "big.json").stat().st_size)
    assert "uploading" in done.stderr
    assert cli.json("program", "show", "triage@2.0.0")["version"] == "2.0.0"

    yanked = cli.json("program", "yank", "triage", "2.0.0", "--reason", "too big")
    assert yanked["yanked"] is True and yanked["yank_reason"] == "too big"
    assert cli.json("program", "show", "triage")["version"] == "1.1.0"


def test_deploy_wait_status_history_rollback_and_watch(serve: type[ServerProcess], tmp_path: Path) -> None:
    cli = _start(serve, tmp_path)
    cli.run(*SIGNATURE)
    for version, file in (("1.0.0", "v1.json"), ("1.1.0", "v2.json")):
        cli.run(
            "program", "register", "triage", "--file", file, "--signature", "classify", "--version", version
        )

    with cli.popen("watch", "triage", "staging", "--json") as watcher:  # closes its pipes
        try:
            assert watcher.stderr is not None and watcher.stdout is not None
            assert watcher.stderr.readline().startswith("watching from revision")  # established
            out = cli.run("deploy", "triage", "1.0.0", "staging", "--strategy", "replace", "--wait").stdout
            assert out.strip().endswith("SUCCEEDED")
            event = json.loads(watcher.stdout.readline())
            assert (event["kind"], event["version"], event["environment"]) == (
                "DEPLOYMENT_EVENT_KIND_CREATED",
                "1.0.0",
                "staging",
            )
        finally:
            watcher.send_signal(signal.SIGINT)  # Ctrl-C: ends at once, mid-stream
            assert watcher.wait(10) == -signal.SIGINT

    # A canary in staging (not monitored): each step after its pause, shown as it happens.
    done = cli.run("deploy", "triage", "1.1.0", "staging", "--canary", "10,50", "--pause", "0.5", "--wait")
    lines = done.stdout.splitlines()
    assert any("step 1/2 at 10%" in line for line in lines) and any(
        "step 2/2 at 50%" in line for line in lines
    )
    assert lines[-1].endswith(": SUCCEEDED")
    deployment = lines[-1].split(":")[0]

    table = cli.run("status", "triage", "staging").stdout
    assert "1.1.0" in table and "100%" in table and "PREVIOUS" in table and "error_rate" in table
    status = cli.json("status", "triage", "staging")
    assert (
        status["target"]["stable"]["version"] == "1.1.0"
        and status["current_deployment"]["name"] == deployment
    )

    history = cli.json("history", "triage", "staging")
    assert [(d["version"], d["state"]) for d in history] == [
        ("1.1.0", "DEPLOYMENT_STATE_SUCCEEDED"),
        ("1.0.0", "DEPLOYMENT_STATE_SUCCEEDED"),
    ]
    assert "CANARY" in cli.run("history", "triage").stdout

    rolled = cli.json("rollback", deployment, "--reason", "accuracy dropped")
    assert rolled["rolled_back"]["state"] == "DEPLOYMENT_STATE_ROLLED_BACK"
    assert cli.json("program", "show", "triage", "--environment", "staging")["version"] == "1.0.0"

    # --wait on a deployment that does not succeed: non-zero, with the reason.
    created = cli.json("deploy", "triage", "1.1.0", "staging", "--canary", "10", "--pause", "30")
    assert (
        cli.json("abort", created["name"], "--reason", "changed my mind")["state"]
        == "DEPLOYMENT_STATE_ABORTED"
    )
    done = cli.run(
        "deploy",
        "triage",
        "1.1.0",
        "staging",
        "--canary",
        "10",
        "--pause",
        "30",
        "--wait",
        "--timeout",
        "0.5",
        code=3,
    )
    assert "is still IN_PROGRESS" in done.stderr
    waiting = done.stderr.split()[1]  # error: deployments/... is still IN_PROGRESS
    promoted = cli.json("promote", waiting, "--full", "--reason", "looks fine")
    assert promoted["name"] == waiting and promoted["weight_percent"] == 100

    # On a terminal, a live bar of the candidate's weight as well as the lines.
    out = _on_a_terminal(
        cli, "deploy", "triage", "1.0.0", "staging", "--canary", "10,50", "--pause", "0.3", "--wait"
    )
    assert "━" in out and "step 2/2 at 50%" in out and "SUCCEEDED" in out


def _on_a_terminal(cli: Cli, *args: str) -> str:
    """Runs the command with a pseudo-terminal as stdout and stderr: what a person sees."""
    master, terminal = pty.openpty()
    process = subprocess.Popen(
        [str(SERVE), *args], cwd=cli.cwd, env=cli.env, stdout=terminal, stderr=terminal
    )
    os.close(terminal)
    chunks = []
    while True:
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # EIO: the command ended and closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert process.wait(30) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_environments_and_access(serve: type[ServerProcess], tmp_path: Path) -> None:
    cli = _start(serve, tmp_path)
    # Production needs an approval from someone other than the requester: carol, with her own token.
    cli.run(*SIGNATURE)
    cli.run(*REGISTER, "--version", "1.0.0", "--performance", "accuracy=0.9")
    cli.run("deploy", "triage", "1.0.0", "staging", "--strategy", "replace", "--wait")
    # Without --strategy, the environment's: staging's default is blue-green.
    default = cli.json("deploy", "triage", "1.0.0", "staging")
    assert default["strategy"]["strategy"] == "STRATEGY_BLUE_GREEN"
    pending = cli.json("deploy", "triage", "1.0.0", "production", "--strategy", "replace")
    assert pending["state"] == "DEPLOYMENT_STATE_PENDING_APPROVAL"
    cli.run("principal", "create", "carol")
    cli.run("grant", "carol", "approve", "*")
    (tmp_path / "carol.token").write_text(cli.run("token", "create", "carol").stdout)
    # The connection options before the command's name, as well as after it.
    approved = cli.json("--token-file", "carol.token", "approve", pending["name"], "--comment", "ok")
    assert approved["approvals"][0]["principal"] == "principals/carol"
    assert cli.json("program", "show", "triage", "--environment", "production")["version"] == "1.0.0"

    names = [e["name"] for e in cli.json("env", "list")]
    assert names == ["environments/development", "environments/staging", "environments/production"]
    assert "environments/production" in cli.run("env", "list").stdout
    changed = cli.json("env", "set", "production", "policy.required_approvals=2", "description=Live traffic.")
    assert changed["policy"]["required_approvals"] == 2 and changed["description"] == "Live traffic."
    assert cli.json("env", "show", "production")["policy"]["required_approvals"] == 2

    assert cli.json("principal", "create", "alice", "--team", "ml")["name"] == "principals/alice"
    assert "principals/alice" in cli.run("principal", "list").stdout
    done = cli.run("token", "create", "alice", "--description", "laptop")
    secret = done.stdout.strip()
    assert secret.startswith("dspyr_") and "shown once" in done.stderr
    assert cli.json("grant", "alice", "read", "triage*")["action"] == "ACTION_READ"

    # Alice's token reads what she was granted and nothing else.
    (tmp_path / "alice.token").write_text(secret)
    refused = cli.run("env", "set", "staging", "description=x", "--token-file", "alice.token", code=1)
    assert refused.stderr.startswith("error: PERMISSION_DENIED: ")

    # Taking access away: the grant, the token, the principal.
    granted = cli.json("grant", "alice", "read", "ranker*")
    assert cli.json("revoke", granted["name"])["name"] == granted["name"]
    tokens = cli.json("token", "list", "alice")
    assert cli.json("token", "revoke", tokens[0]["name"])["name"] == tokens[0]["name"]
    gone = cli.run("program", "list", "--token-file", "alice.token", code=1)
    assert gone.stderr.startswith("error: UNAUTHENTICATED: ")
    disabled = cli.json("principal", "disable", "alice", "--reason", "left the team")
    assert disabled["name"] == "principals/alice" and disabled.get("disabled") is True
    refused = cli.run("grant", "alice", "admin", "*", code=1)
    assert refused.stderr.startswith("error: FAILED_PRECONDITION: ")
    assert not cli.json("principal", "enable", "alice").get("disabled")

    methods = [e["method"] for e in cli.json("audit", "--limit", "5")]
    assert "dspy_registry.v1.AccessService/GrantPermission" in methods or any("Grant" in m for m in methods)
    assert "CreatePrincipal" in cli.run("audit").stdout


def test_errors_print_the_status_and_exit_non_zero(serve: type[ServerProcess], tmp_path: Path) -> None:
    cli = _start(serve, tmp_path)
    done = cli.run("program", "show", "nope", code=1)
    assert done.stdout == "" and done.stderr.startswith("error: NOT_FOUND: ")
    error = json.loads(cli.run("program", "show", "nope", "--json", code=1).stderr)["error"]
    assert error["code"] == "NOT_FOUND"

    cli.run(*SIGNATURE)
    bad = (*REGISTER, "--version", "one")
    done = cli.run(*bad, code=1)
    assert done.stderr.startswith("error: INVALID_ARGUMENT: ") and "\n  spec.version: " in done.stderr
    error = json.loads(cli.run(*bad, "--json", code=1).stderr)["error"]
    assert [v["field"] for v in error["field_violations"]] == ["spec.version"]

    assert (
        "missing.json"
        in cli.run(
            "program", "register", "t", "--file", "missing.json", "--signature", "classify", code=1
        ).stderr
    )
    assert "usage:" in cli.run("deploy", "triage", code=2).stderr


def test_webhooks(serve: type[ServerProcess], tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("DSPY_REGISTRY_WEBHOOK_ALLOW", "127.0.0.0/8")  # the receiver is on loopback
    cli = _start(serve, tmp_path)
    (tmp_path / "hook.secret").write_text("s3cret\n")
    receiver = ThreadedReceiver("s3cret").start()
    try:
        url = receiver.receiver.url
        made = cli.json(
            "webhook",
            "create",
            "oncall",
            url,
            "--secret-file",
            "hook.secret",
            "--event",
            "succeeded",
            "--select",
            "triage*/staging",
            "--description",
            "pager",
        )
        assert made["name"] == "webhooks/oncall" and "secret" not in made
        assert made["event_kinds"] == ["DEPLOYMENT_EVENT_KIND_SUCCEEDED"]
        assert made["selectors"] == [{"program": "triage*", "environment": "staging"}]
        # Without --secret-file a secret is made and shown once, alone on stdout (as `token create` does).
        done = cli.run("webhook", "create", "audit-log", url)
        assert len(done.stdout.strip()) >= 32 and "shown once" in done.stderr
        listed = cli.run("webhook", "list").stdout
        assert "webhooks/oncall" in listed and "SUCCEEDED" in listed and "triage*/staging" in listed

        cli.run(*SIGNATURE)
        cli.run(*REGISTER, "--version", "1.0.0")
        cli.run("deploy", "triage", "1.0.0", "staging", "--strategy", "replace", "--wait")

        def delivered() -> bool:
            return any(
                r["state"] == "DELIVERY_STATE_SUCCEEDED" for r in cli.json("webhook", "deliveries", "oncall")
            )

        eventually(delivered, "the SUCCEEDED event delivered to oncall")
        rows = cli.json("webhook", "deliveries", "oncall")
        assert [r["event_kind"] for r in rows] == ["DEPLOYMENT_EVENT_KIND_SUCCEEDED"]
        got = receiver.receiver.delivered()
        assert got[rows[0]["name"].rsplit("/", 1)[-1]].valid  # signed with the secret from the file
        # audit-log's deliveries are signed with the secret it printed.
        made_secret = done.stdout.strip()
        others = [r for r in got.values() if not r.valid]
        assert others and all(webhooks.verify(made_secret, r.timestamp, r.body, r.signature) for r in others)
        table = cli.run("webhook", "deliveries", "oncall", "--state", "succeeded").stdout
        assert "SUCCEEDED" in table and "200" in table

        assert cli.json("webhook", "delete", "oncall")["name"] == "webhooks/oncall"
        assert "webhooks/oncall" not in cli.run("webhook", "list").stdout
        refused = cli.run("webhook", "create", "x", "http://10.0.0.1/hook", code=1)
        assert refused.stderr.startswith("error: INVALID_ARGUMENT: ") and "webhook.url" in refused.stderr
    finally:
        receiver.close()


async def test_mutual_tls_from_the_command_line(tmp_path: Path) -> None:
    ca = Authority("cli mTLS CA")
    app = App(tls_config(tmp_path, ca, mutual=True))
    port = await app.start()
    try:
        ca.issue("operator", server=False).save(tmp_path, "operator")
        tls = ["--tls-ca", "ca.crt", "--tls-cert", "operator.crt", "--tls-key", "operator.key"]
        env = {
            **os.environ,
            "DSPY_REGISTRY_TARGET": f"localhost:{port}",
            "DSPY_REGISTRY_TOKEN_FILE": "admin.token",
        }

        async def cli(*args: str) -> tuple[int, str, str]:
            process = await asyncio.create_subprocess_exec(
                str(SERVE), *args, cwd=tmp_path, env=env, stdout=PIPE, stderr=PIPE
            )
            out, err = await asyncio.wait_for(process.communicate(), 60)
            assert process.returncode is not None
            return process.returncode, out.decode(), err.decode()

        code, out, err = await cli("env", "list", "--json", *tls)
        assert code == 0, err
        assert json.loads(out)[0]["name"] == "environments/development"
        # The same token without a client certificate: the handshake is refused before any call.
        code, out, err = await cli("env", "list", "--tls-ca", "ca.crt")
        assert code == 1 and err.startswith("error: UNAVAILABLE: ")
        code, out, err = await cli("env", "list", "--tls-cert", "operator.crt")  # no key
        assert code == 2 and "--tls-key" in err
        # The server's CA from the config file, the client certificate from the command line.
        (tmp_path / "client.toml").write_text('tls_ca = "ca.crt"\n')
        code, out, err = await cli("env", "list", "--config", "client.toml", *tls[2:])
        assert code == 0, err
    finally:
        await app.stop(grace=0)


def test_required_checks_and_deployed_where(serve: type[ServerProcess], tmp_path: Path) -> None:
    cli = _start(serve, tmp_path)
    cli.run(*SIGNATURE)
    cli.run(*REGISTER, "--version", "1.0.0")
    cli.run("env", "set", "staging", 'policy.required_checks=["integration_tests"]')
    waiting = cli.json("deploy", "triage", "1.0.0", "staging", "--strategy", "replace")
    assert (waiting["state"], waiting["waiting_checks"]) == (
        "DEPLOYMENT_STATE_PENDING_CHECKS",
        ["integration_tests"],
    )
    shown = cli.run("program", "show", "triage").stdout
    assert "deployed where" in shown and "PENDING_CHECKS (waiting for checks: integration_tests)" in shown
    reported = cli.json(
        "check",
        "report",
        "triage@1.0.0",
        "integration_tests",
        "passed",
        "--url",
        "https://ci.example/runs/1",
        "--summary",
        "120 passed",
    )
    assert (reported["state"], reported["summary"]) == ("CHECK_STATE_PASSED", "120 passed")
    assert cli.json("history", "triage", "staging")[0]["state"] == "DEPLOYMENT_STATE_SUCCEEDED"
    version = cli.json("program", "show", "triage@1.0.0")
    assert [(c["check"], c["state"]) for c in version["checks"]] == [
        ("integration_tests", "CHECK_STATE_PASSED")
    ]
    where = {e["environment"]: e for e in cli.json("program", "show", "triage")["environments"]}
    assert where["staging"]["target"]["stable"]["version"] == "1.0.0"
    assert where["development"]["target"]["stable"]["version"] == "1.0.0"
    assert "deployment" not in where["staging"]  # nothing in progress
    bad = cli.run("check", "report", "triage@1.0.0", "Load Test", "passed", code=1)
    assert "check" in bad.stderr and "INVALID_ARGUMENT" in bad.stderr
    # Capacity: staging offers 512 MiB, 1.1.0 requires 1GB: refused, naming both (exit 1).
    requirement = 'deployment={"requirements": ["memory >= 1GB"]}'
    cli.run(*REGISTER, "--version", "1.1.0", "--metadata", requirement)
    unreadable = 'deployment={"requirements": ["memory: plenty"]}'
    refused = cli.run(*REGISTER, "--version", "1.2.0", "--metadata", unreadable, code=1)
    assert "spec.metadata.deployment.requirements[0]" in refused.stderr
    cli.run("env", "set", "staging", 'policy.capacity={"memory": "512MiB"}')
    too_big = cli.run("deploy", "triage", "1.1.0", "staging", code=1)
    assert (
        "CAPACITY" in too_big.stderr
        and "requires memory >= 1GB; staging offers memory = 512MiB" in too_big.stderr
    )

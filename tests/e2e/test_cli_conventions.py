"""What an operator expects of any command line: --version, shell completion, help with an example for
every command, `status --watch` following a rollout, and `doctor` checking a client's setup."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shlex
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path

import pytest

from dspy_registry.cli import build_parser
from dspy_registry.client.cli_help import EXAMPLES, subcommands
from dspy_registry.server import release
from dspy_registry.server.app import App
from dspy_registry.server.config import Config
from tests.certificates import Authority, tls_config
from tests.clock import FakeClock
from tests.e2e.conftest import SERVE, ServerProcess
from tests.e2e.test_cli import SIGNATURE, Cli, _start


def _run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SERVE), *args], capture_output=True, text=True, timeout=60, env=env, cwd=cwd)


async def _run_async(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`_run` off the event loop: the server under test answers on it."""
    return await asyncio.to_thread(_run, *args, env=env)


def test_version_prints_the_package_version_and_exits_0() -> None:
    done = _run("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"dspy-registry {metadata.version('dspy-registry')}"


def test_every_command_has_a_description_and_an_example_that_parses() -> None:
    parser = build_parser()
    commands = list(subcommands(parser))
    assert {"deploy", "status", "migrate", "doctor", "completion", "webhook create"} <= {
        w for w, _, _ in commands
    }
    for words, _, sub in commands:
        shown = sub.format_help()
        assert sub.description, f"`{words} --help` has no description"
        assert "example:\n  dspy-registry " in shown, f"`{words} --help` shows no example"
        example = shlex.split(EXAMPLES[words])
        if ">" in example:  # a redirection is the shell's, not the command's
            example = example[: example.index(">")]
        assert example[0] == "dspy-registry"
        argv = example[1:]
        parsed = build_parser().parse_args(argv)  # argparse exits 2 on an option the command does not take
        # The example runs this very command (a group's, one of its own).
        first, *rest = words.split()
        assert parsed.command == first, (words, argv)
        if rest:
            assert getattr(parsed, f"{first}_command") == rest[0], (words, argv)
    assert set(EXAMPLES) == {w for w, _, _ in commands}, "an example for a command that no longer exists"


def test_deploy_help_explains_supersede_and_allow_breaking() -> None:
    done = _run("deploy", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "--supersede replace a deployment of this target still in progress (it ends SUPERSEDED)" in text
    assert "--allow-breaking deploy a version whose signature is incompatible" in text


def _shell(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (.ci/run installs it)")
        pytest.skip(f"{name} is not installed here (.ci/run installs it in CI)")
    return found


def test_bash_completion_completes_commands_options_and_choices(tmp_path: Path) -> None:
    script = tmp_path / "dspy-registry.bash"
    script.write_text(_run("completion", "bash").stdout)

    def complete(*words: str) -> set[str]:
        line = " ".join(("dspy-registry", *words))
        call = (
            f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words)}; "
            'COMP_LINE="$COMP_WORDS"; _shtab_dspy_registry; printf "%s\\n" "${COMPREPLY[@]}"'
        )
        done = subprocess.run([_shell("bash"), "-c", call], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return set(done.stdout.split())

    assert complete("dep") == {"deploy"}
    assert {"create", "list", "delete", "deliveries"} <= complete("webhook", "''")
    assert complete("completion", "''") == {"bash", "zsh", "fish"}
    assert "--supersede" in complete("deploy", "--su")


def test_fish_completion_completes_commands(tmp_path: Path) -> None:
    script = tmp_path / "dspy-registry.fish"
    script.write_text(_run("completion", "fish").stdout)
    done = subprocess.run(
        [
            _shell("fish"),
            "-c",
            f"source {script}; complete -C 'dspy-registry dep'; complete -C 'dspy-registry env '",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    offered = {line.split("\t")[0] for line in done.stdout.splitlines()}
    assert {"deploy", "list", "show", "set"} <= offered


def test_zsh_completion_installs_as_docs_cli_md_says(tmp_path: Path) -> None:
    functions = tmp_path / "functions"
    functions.mkdir()
    (functions / "_dspy-registry").write_text(_run("completion", "zsh").stdout)
    zsh = _shell("zsh")
    assert subprocess.run([zsh, "-n", str(functions / "_dspy-registry")], timeout=30).returncode == 0
    # compinit reads the fpath and binds the function to the command, as a login shell's would.
    done = subprocess.run(
        [
            zsh,
            "-fc",
            f"fpath=({functions} $fpath); autoload -U compinit && compinit -u -D; print -- $_comps[dspy-registry]",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert done.stdout.strip() == "_dspy-registry", done.stderr


def triage_in_staging(cli: Cli, *, wait: bool = True) -> None:
    """classify 1.0.0, triage 1.0.0 and 1.1.0 registered; 1.0.0 deployed to staging (replace)."""
    cli.run(*SIGNATURE)
    for version, file in (("1.0.0", "v1.json"), ("1.1.0", "v2.json")):
        cli.run(
            "program", "register", "triage", "--file", file, "--signature", "classify", "--version", version
        )
    cli.run("deploy", "triage", "1.0.0", "staging", "--strategy", "replace", *(["--wait"] if wait else []))


def _canary(cli: Cli) -> str:
    """triage 1.0.0 stable in staging, then 1.1.0 as a canary whose first step holds for a minute."""
    triage_in_staging(cli)
    deployment: str = cli.json("deploy", "triage", "1.1.0", "staging", "--canary", "10,50", "--pause", "60")[
        "name"
    ]
    return deployment


def _follow(cli: Cli) -> subprocess.Popen[str]:
    """`status --watch`, once it follows the rollout (it says so on stderr)."""
    watcher = cli.popen("status", "triage", "staging", "--watch")
    assert watcher.stderr is not None
    line = watcher.stderr.readline()
    assert line.startswith("following deployments/"), line + watcher.stderr.read()
    return watcher


def test_status_watch_exits_0_when_the_rollout_succeeds(serve: type[ServerProcess], tmp_path: Path) -> None:
    cli = _start(serve, tmp_path)
    deployment = _canary(cli)
    with _follow(cli) as watcher:
        cli.run("promote", deployment, "--full")
        out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, err
    assert "candidate" in out and "10%" in out  # the status table first, the canary at its first step
    last = out.strip().splitlines()[-1]
    assert deployment in last and "SUCCEEDED" in last and "1.1.0" in last


def test_status_watch_exits_3_when_the_rollout_ends_otherwise(
    serve: type[ServerProcess], tmp_path: Path
) -> None:
    cli = _start(serve, tmp_path)
    deployment = _canary(cli)
    with _follow(cli) as watcher:
        cli.run("rollback", deployment, "--reason", "looks wrong")
        out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 3, out + err
    assert "ROLLED_BACK" in out and f"{deployment} ended ROLLED_BACK: looks wrong" in " ".join(err.split())


def test_status_watch_with_nothing_in_progress_exits_at_once(
    serve: type[ServerProcess], tmp_path: Path
) -> None:
    cli = _start(serve, tmp_path)
    triage_in_staging(cli, wait=False)
    done = cli.run("status", "triage", "staging", "--watch")  # the last deployment SUCCEEDED: 0
    assert "1.0.0" in done.stdout


def test_doctor_passes_on_a_working_setup(serve: type[ServerProcess], tmp_path: Path) -> None:
    cli = _start(serve, tmp_path)
    done = cli.run("doctor")
    lines = done.stdout.splitlines()
    for check in ("settings", "reachable", "tls", "token", "whoami", "version", "clock"):
        assert any(line.split()[:2] == ["ok", check] for line in lines), done.stdout
    assert "principals/admin" in done.stdout and f"both {metadata.version('dspy-registry')}" in done.stdout


def test_doctor_names_each_failure_with_its_fix(serve: type[ServerProcess], tmp_path: Path) -> None:
    cli = _start(serve, tmp_path)
    bad = tmp_path / "bad.token"
    bad.write_text("dspyr_not-a-token")
    bad.chmod(0o600)
    done = cli.run("doctor", "--token-file", str(bad), code=1)
    assert "FAIL  whoami" in done.stdout and "fix: the token is unknown" in done.stdout

    cli.env.pop("DSPY_REGISTRY_TOKEN_FILE")
    cli.env["DSPY_REGISTRY_CONFIG"] = str(tmp_path / "none.toml")
    done = cli.run("doctor", code=1)
    assert "FAIL  token" in done.stdout and "fix: pass --token-file" in done.stdout

    nobody = ServerProcess("sqlite:///unused", tmp_path / "unused.log").address  # a free port, never served
    done = cli.run("doctor", "--server", nobody, code=1)
    assert "FAIL  reachable" in done.stdout and "skip  whoami" in done.stdout


def test_doctor_reports_the_token_from_where_the_settings_took_it(
    serve: type[ServerProcess], tmp_path: Path
) -> None:
    """DSPY_REGISTRY_TOKEN wins over DSPY_REGISTRY_TOKEN_FILE, whose file then need not exist: doctor
    said so with a traceback (it statted the variable's file); a config file's token_file is judged
    as the others are; settings that cannot be used are one FAIL line and exit 2."""
    cli = _start(serve, tmp_path)
    token = Path(cli.env["DSPY_REGISTRY_TOKEN_FILE"]).read_text().strip()
    cli.env |= {"DSPY_REGISTRY_TOKEN": token, "DSPY_REGISTRY_TOKEN_FILE": str(tmp_path / "missing.token")}
    done = cli.run("doctor")
    assert "ok    token      given by DSPY_REGISTRY_TOKEN" in done.stdout and not done.stderr

    del cli.env["DSPY_REGISTRY_TOKEN"], cli.env["DSPY_REGISTRY_TOKEN_FILE"]
    (tmp_path / "shared.token").write_text(token)
    (tmp_path / "shared.token").chmod(0o644)
    (tmp_path / "client.toml").write_text('token_file = "shared.token"\n')
    done = cli.run("doctor", "--config", str(tmp_path / "client.toml"))
    assert f"warn  token      {tmp_path / 'shared.token'} is readable by others" in done.stdout

    cli.env["DSPY_REGISTRY_TOKEN_FILE"] = str(tmp_path / "missing.token")
    done = cli.run("doctor", code=2)
    assert done.stdout.startswith("FAIL  settings   [Errno 2] DSPY_REGISTRY_TOKEN_FILE names a token file")
    assert "Traceback" not in done.stderr and "skip" not in done.stdout


async def test_doctor_checks_tls_both_ways(tmp_path: Path) -> None:
    app = App(tls_config(tmp_path, Authority("doctor CA")))
    port = await app.start()
    try:
        env = {
            **os.environ,
            "DSPY_REGISTRY_TARGET": f"localhost:{port}",
            "DSPY_REGISTRY_TOKEN_FILE": str(tmp_path / "admin.token"),
        }
        plain = await _run_async("doctor", env=env)
        assert plain.returncode == 1 and "FAIL  tls" in plain.stdout and "speaks TLS" in plain.stdout
        assert "fix: pass --tls-ca" in plain.stdout
        verified = await _run_async("doctor", "--tls-ca", str(tmp_path / "ca.crt"), env=env)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "certificate verified" in verified.stdout
        untrusted = await _run_async("doctor", "--tls-ca", "system", env=env)
        assert untrusted.returncode == 1 and "not trusted" in untrusted.stdout
    finally:
        await app.stop(grace=0)


async def test_doctor_fails_on_clock_skew_and_warns_on_another_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server's clock two minutes ahead of this machine's, and another release than this client's.
    monkeypatch.setattr(release, "version", lambda: "9.9.9")
    ahead = FakeClock(datetime.now(UTC) + timedelta(seconds=120))
    config = Config(
        listen="127.0.0.1:0",
        database=f"sqlite:///{tmp_path / 'r.db'}",
        admin_token_file=str(tmp_path / "admin.token"),
    )
    app = App(config, clock=ahead)
    port = await app.start()
    try:
        env = {
            **os.environ,
            "DSPY_REGISTRY_TARGET": f"127.0.0.1:{port}",
            "DSPY_REGISTRY_TOKEN_FILE": config.admin_token_file,
        }
        done = await _run_async("doctor", env=env)
    finally:
        await app.stop(grace=0)
    assert done.returncode == 1, done.stdout
    assert f"warn  version    server 9.9.9, this client {metadata.version('dspy-registry')}" in done.stdout
    assert "fix: install the server's release: pip install 'dspy-registry==9.9.9'" in done.stdout
    [clock] = [line for line in done.stdout.splitlines() if line.startswith("FAIL  clock")]
    skew = float(clock.split("this machine is ")[1].split(" s ")[0])
    # The fake clock stands still: two minutes ahead at the start, less by the time doctor asks.
    assert 60 < skew < 121 and "behind the server" in clock, clock
    assert "fix: synchronise this machine's clock" in done.stdout


def test_webhook_secret_add_and_retire_from_the_command_line(
    serve: type[ServerProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSPY_REGISTRY_WEBHOOK_ALLOW", "127.0.0.0/8")
    cli = _start(serve, tmp_path)
    (tmp_path / "first.secret").write_text("first-secret\n")
    (tmp_path / "second.secret").write_text("whsec_" + "b" * 32 + "\n")
    cli.run("webhook", "create", "hook", "http://127.0.0.1:9/hook", "--secret-file", "first.secret")
    added = cli.json("webhook", "secret", "add", "hook", "--secret-file", "second.secret")
    assert "secret_value" not in added and "whsec_" not in json.dumps(added)  # given, so not shown
    [listed] = cli.json("webhook", "list")
    first, second = (s["name"] for s in listed["secrets"])
    assert second == added["secret"]["name"]
    assert second.rsplit("/", 1)[1] in cli.run("webhook", "list").stdout  # the table names them

    made = cli.run("webhook", "secret", "add", "hook")  # none given: made, and shown once on stdout
    assert made.stdout.startswith("whsec_") and len(base64.b64decode(made.stdout.strip()[6:])) == 32
    assert "added webhooks/hook/secrets/" in made.stderr

    refused = cli.run("webhook", "secret", "retire", "webhooks/hook/secrets/nope", code=1)
    assert refused.stderr.startswith("error: NOT_FOUND")
    for name in (first, second):
        cli.run("webhook", "secret", "retire", name)
    [last] = cli.json("webhook", "list")[0]["secrets"]
    refused = cli.run("webhook", "secret", "retire", last["name"], code=1)
    assert refused.stderr.startswith("error: FAILED_PRECONDITION")

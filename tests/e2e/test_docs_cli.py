"""Every command docs/cli.md shows, run as written (the server's address put in for localhost:50051)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from dspy_registry.server.store.migrations import MIGRATIONS
from tests import docs
from tests.e2e.conftest import ROOT, ServerProcess, env_with_tools
from tests.e2e.test_cli import _start
from tests.e2e.test_cli_conventions import _shell

DOC = (ROOT / "docs" / "cli.md").read_text()


_block = docs.sh_block


def _run(name: str, cwd: Path, address: str = "", **env: str) -> str:
    script = "set -euo pipefail\n" + _block(name)
    if address:
        script = script.replace("localhost:50051", address)
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        env={**env_with_tools(), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"docs/cli.md block {name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_every_sh_block_of_docs_cli_is_tested() -> None:
    blocks = re.findall(r"(<!-- tested: ([a-z-]+) -->\n)?```sh\n", DOC)
    assert all(tested for tested, _ in blocks)
    assert {name for _, name in blocks} == {"cli", "completion", "doctor", "status-watch", "migrate"}


def test_completion_installs_where_each_shell_finds_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    out = _run("completion", tmp_path, HOME=str(home))
    assert out.startswith("dspy-registry ")

    def shell(*argv: str, **env: str) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env={**os.environ, **env})
        return done.stdout + done.stderr

    installed = "source ~/.local/share/bash-completion/completions/dspy-registry; complete -p dspy-registry"
    assert (
        shell("bash", "-c", installed, HOME=str(home))
        .strip()
        .endswith("-F _shtab_dspy_registry dspy-registry")
    )
    # fish loads ~/.config/fish/completions by itself, for a command it finds on PATH.
    tools = {"PATH": env_with_tools()["PATH"], "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    assert shell(_shell("fish"), "-c", "complete -C 'dspy-registry dep'", **tools).startswith("deploy")
    # zsh from the fpath the block's comment names.
    compinit = (
        "fpath=(~/.zfunc $fpath); autoload -U compinit && compinit -u -D; print -- $_comps[dspy-registry]"
    )
    assert shell(_shell("zsh"), "-fc", compinit, HOME=str(home)).strip() == "_dspy-registry"


def test_the_doctor_block(serve: type[ServerProcess], tmp_path: Path) -> None:
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    out = _run("doctor", tmp_path, server.address)
    _, working, wrong = out.split("ok    settings")
    checks = [line.split()[:2] for line in working.splitlines()[1:]]
    assert checks == [["ok", c] for c in ("reachable", "tls", "token", "whoami", "version", "clock")], out
    assert "ok    whoami     principals/admin" in out
    assert (
        "warn  token      wrong.token is readable by others" in wrong
        and "fix: chmod 600 wrong.token" in wrong
    )
    assert "FAIL  whoami     UNAUTHENTICATED: " in wrong and wrong.rstrip().endswith("doctor exit code 1")


def test_the_status_watch_block(serve: type[ServerProcess], tmp_path: Path) -> None:
    cli = _start(serve, tmp_path)
    address = cli.env["DSPY_REGISTRY_TARGET"]
    _run("cli", tmp_path, address)  # the walkthrough the block continues: router 1.1.0 in staging
    out = _run("status-watch", tmp_path, address)
    # Followed event by event, or judged at once had it ended before the watch began: either way, 0.
    assert out.rstrip().endswith("1.2.0 rolled out")
    [last] = cli.json("history", "router", "staging", "--limit", "1")
    assert (last["version"], last["state"]) == ("1.2.0", "DEPLOYMENT_STATE_SUCCEEDED")


def test_the_migrate_block(tmp_path: Path) -> None:
    out = _run("migrate", tmp_path)
    latest = MIGRATIONS[-1].number
    assert (
        f"{len(MIGRATIONS)} pending; this release's schema is version {latest}\npending: exit code 3" in out
    )
    assert f"the schema is at version {latest}\n0 pending" in out
    assert (tmp_path / "registry.db").exists()

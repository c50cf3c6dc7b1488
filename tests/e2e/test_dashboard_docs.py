"""docs/dashboard.md's commands, run as written (ports aside) by a shell: `serve` with the dashboard,
then a reader's principal and token, which signs in to the dashboard and is offered no action."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from tests import docs
from tests.e2e.conftest import env_with_tools, free_port
from tests.eventually import eventually

_block = docs.sh_block


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _get(url: str, token: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def test_the_dashboard_page_commands(tmp_path: Path) -> None:
    grpc_port, http_port = free_port(), free_port()

    def ports(block: str) -> str:
        return block.replace("localhost:50051", f"127.0.0.1:{grpc_port}").replace(
            "127.0.0.1:8080", f"127.0.0.1:{http_port}"
        )

    with open(tmp_path / "server.log", "wb") as log:
        server = subprocess.Popen(
            ["bash", "-c", "exec " + ports(_block("dashboard-serve"))],
            cwd=tmp_path,
            env=env_with_tools(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{http_port}/"
        eventually(lambda: server.poll() is None and _answers(base), "the dashboard answering")
        done = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + ports(_block("dashboard-reader"))],
            cwd=tmp_path,
            env=env_with_tools(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        token = done.stdout.strip().splitlines()[-1]  # `token create` prints the secret alone, last
        me = _get(base + "api/dashboard/whoami", token)
        assert me["principal"]["name"] == "principals/rita"
        assert _get(base + "api/dashboard/abilities?program=anything", token) == {
            "approve": False,
            "deploy": False,
            "rollback": False,
            "audit": False,
        }
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0, (tmp_path / "server.log").read_text()

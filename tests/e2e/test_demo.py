"""`make demo` runs whole in .ci/run; this checks what a successful run cannot show: stopped midway (SIGTERM,
as Ctrl-C stops it too), the demo stops every process it started and removes its temporary directory.
While it runs, the dashboard's address it printed answers."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.e2e.conftest import ROOT


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line mentions `text` (Linux: /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:  # it ended while we looked
                continue
            if text in cmdline:
                found.append(int(entry.name))
    return found


def _demo(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "demo", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},  # each line as it is printed, not at exit
    )


def _read_until(demo: subprocess.Popen[str], text: str) -> list[str]:
    """The lines the demo printed, up to the one holding `text`; fails if it ends first."""
    assert demo.stdout is not None
    seen = []
    for line in demo.stdout:  # pytest-timeout bounds this if the line never comes
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"the demo ended before {text!r}:\n" + "".join(seen))


def test_a_demo_stopped_midway_stops_its_processes_and_removes_its_directory() -> None:
    demo = _demo()
    try:
        seen = _read_until(demo, "all 3 pods serve 1.0.0")
        found = re.search(r"DSPY_REGISTRY_TOKEN_FILE=(\S+)/admin\.token", "".join(seen))
        assert found, "".join(seen)
        directory = found.group(1)
        assert len(_processes_mentioning(directory)) == 4  # the server and three pods, all running now
        dashboard = re.search(r"the dashboard is at (http://\S+/)", "".join(seen))
        assert dashboard, "".join(seen)
        with urllib.request.urlopen(dashboard.group(1), timeout=10) as page:
            assert "dashboard.js" in page.read().decode()
    finally:
        demo.send_signal(signal.SIGTERM)  # a failed check above still ends the demo, which cleans up
    rest, _ = demo.communicate(timeout=30)
    left = _processes_mentioning(directory)
    for pid in left:  # so that a failure here leaves nothing running behind it
        os.kill(pid, signal.SIGKILL)
    assert demo.returncode == 130, rest
    assert "interrupted" in rest
    assert left == []
    assert not Path(directory).exists()


def test_demo_keep_leaves_the_dashboard_up_until_stopped() -> None:
    demo = _demo("--keep")
    directory = ""
    try:
        text = "".join(_read_until(demo, "Ctrl-C stops the server"))
        found = re.search(r"The dashboard stays up at (http://\S+/)\nSign in with the token in (\S+)\n", text)
        assert found, text
        url, token_file = found.groups()
        directory = str(Path(token_file).parent)
        # After the story, the dashboard shows it: 1.2.0's canary rolled back by the analysis.
        token = Path(token_file).read_text().strip()
        request = urllib.request.Request(
            url + "api/dashboard/deployments?program=sentiment_classifier",
            headers={"Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            deployments = json.loads(answer.read())["deployments"]
        assert any(
            d["version"] == "1.2.0" and d["state"] == "DEPLOYMENT_STATE_ROLLED_BACK" for d in deployments
        ), deployments
        assert len(_processes_mentioning(directory)) == 1  # the server alone: the pods stopped
    finally:
        demo.send_signal(signal.SIGTERM)
    rest, _ = demo.communicate(timeout=30)
    left = _processes_mentioning(directory) if directory else []
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert demo.returncode == 0, rest  # asked to stay up, then stopped: a success
    assert left == []
    assert Path(directory).exists()  # --keep keeps the store and the logs
    shutil.rmtree(directory)

"""`make demo` runs whole in .ci/run; this checks what a successful run cannot show: stopped midway (SIGTERM,
as Ctrl-C stops it too), the demo stops every process it started and removes its temporary directory."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
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


def test_a_demo_stopped_midway_stops_its_processes_and_removes_its_directory() -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "demo"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},  # each line as it is printed, not at exit
    )
    try:
        assert demo.stdout is not None
        seen = []
        for line in demo.stdout:  # pytest-timeout bounds this if the line never comes
            seen.append(line)
            if "all 3 pods serve 1.0.0" in line:
                break
        else:
            raise AssertionError("the demo ended before its pods served:\n" + "".join(seen))
        found = re.search(r"DSPY_REGISTRY_TOKEN_FILE=(\S+)/admin\.token", "".join(seen))
        assert found, "".join(seen)
        directory = found.group(1)
        assert len(_processes_mentioning(directory)) == 4  # the server and three pods, all running now
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

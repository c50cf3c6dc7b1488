"""A test that fails with a store still open is reported, and pytest then exits: the fixtures close
what the test left open (tests/conftest.py). Before, aiosqlite's reader threads (not daemons) outlived
the failed test, and the run hung at exit after printing its failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.docs import ROOT

FAILS_WITH_A_STORE_OPEN = """
from dspy_registry.server.store.backends import open_store


async def test_fails_before_closing(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'registry.db'}")
    await store.open()
    assert False, "deliberately, the store still open"
"""

# Prints the threads that would keep the interpreter from exiting, then exits at once: a run with
# any left does not hang here too.
THREADS_LEFT = """
import os, threading
import pytest


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    left = [t.name for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    print(f"threads left: {left}", flush=True)
    os._exit(0)
"""


def test_a_test_that_fails_with_a_store_open_leaves_no_thread_to_wait_for(tmp_path: Path) -> None:
    (tmp_path / "test_fails.py").write_text(FAILS_WITH_A_STORE_OPEN)
    (tmp_path / "threads_left.py").write_text(THREADS_LEFT)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", "pyproject.toml", "--rootdir", ".", "-p", "no:cacheprovider"]
        + ["-p", "tests.conftest", "-p", "threads_left", str(tmp_path / "test_fails.py")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "1 failed" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    assert "threads left: []" in done.stdout, done.stdout[-3000:]

"""The README's install: the distribution builds as a wheel (not the editable install the tests use)
that brings the `dspy-registry` command, the client with its generated stubs, the dashboard's files
and the `dspy` extra."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.e2e.conftest import ROOT


def test_the_wheel_installs_the_client_and_the_command(tmp_path: Path) -> None:
    # Built from a copy of what the distribution is made of: setuptools' build/ folder in the checkout
    # keeps files a package mapping no longer names, and other runs share it.
    source = tmp_path / "source"
    for part in ("server", "client", "dspy_registry"):
        shutil.copytree(ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, source / part)
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            tmp_path,
            source,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("dspy_registry-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        scripts = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "dspy-registry = " in scripts
    assert "Provides-Extra: dspy" in metadata
    for module in (
        "cli.py",
        "client/registry.py",
        "server/app.py",
        "server/api/convert/deployment.py",
        "v1/registry_pb2.py",
        "v1/deployment_pb2_grpc.py",
        # The dashboard ships as it is: no build step, no CDN.
        "server/dashboard/static/index.html",
        "server/dashboard/static/dashboard.js",
        "server/dashboard/static/dashboard.css",
        "server/dashboard/static/vendor/uPlot.iife.min.js",
        "server/dashboard/static/vendor/uPlot.min.css",
        "server/dashboard/static/vendor/uPlot.LICENSE",
    ):
        assert f"dspy_registry/{module}" in names, module

    # Installed on its own (the dependencies are this environment's), it is what gets imported.
    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, wheel],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    probe = "import dspy_registry.client as c, dspy_registry.v1.registry_pb2; print(c.__file__); print(c.Registry)"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": str(site)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(str(site)), done.stdout
    command = subprocess.run(
        [site / "bin" / "dspy-registry", "serve", "--help"],
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert command.returncode == 0 and "--database" in command.stdout, command.stderr

"""The README's install: the distribution builds as a wheel (not the editable install the tests use)
that brings the `dspy-registry` command, the client with its generated stubs, the dashboard's files
and the `dspy` extra; installed alone, at the lowest versions it allows, it is the client side and no
server."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.e2e.conftest import PROCESSES_TIMEOUT, ROOT

pytestmark = PROCESSES_TIMEOUT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("wheel")
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
    [built_wheel] = tmp_path.glob("dspy_registry-*.whl")
    return built_wheel


def _metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        return next(archive.read(n).decode() for n in archive.namelist() if n.endswith(".dist-info/METADATA"))


def test_the_wheel_installs_the_client_and_the_command(wheel: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        scripts = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "dspy-registry = " in scripts
    assert "Provides-Extra: dspy" in metadata and "Provides-Extra: server" in metadata
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


def _generated_versions() -> tuple[str, str]:
    """The protobuf and grpcio versions that generated the committed stubs, which check for them at import."""
    stubs = ROOT / "client" / "v1"
    protobuf = re.search(r"# Protobuf Python Version: (\S+)", (stubs / "registry_pb2.py").read_text())
    grpcio = re.search(r"GRPC_GENERATED_VERSION = '(\S+)'", (stubs / "registry_pb2_grpc.py").read_text())
    assert protobuf and grpcio
    return protobuf[1], grpcio[1]


def _floors(metadata: str) -> dict[str, str]:
    """The lowest version of each requirement of the plain install (no extra); each must have one."""
    floors = {}
    for line in re.findall(r"^Requires-Dist: (.+)$", metadata, flags=re.M):
        if "extra ==" in line:
            continue
        found = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([^,;\s]+)", line.strip())
        assert found, f"no lower bound alone: {line}"
        floors[found[1].lower()] = found[2]
    return floors


def test_the_wheel_alone_is_the_client_side_at_the_lowest_versions_it_allows(
    wheel: Path, tmp_path: Path
) -> None:
    floors = _floors(_metadata(wheel))
    assert set(floors) == {"grpcio", "protobuf", "googleapis-common-protos", "rich", "shtab"}
    assert (floors["protobuf"], floors["grpcio"]) == _generated_versions()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    bin = venv / "bin"

    def run(*command: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DSPY_REGISTRY_", "PYTHON", "VIRTUAL_ENV"))
        }
        return subprocess.run(
            [str(c) for c in command],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=tmp_path,
            env=clean,
        )

    pinned = [f"{name}=={version}" for name, version in floors.items()]
    installed = run(bin / "pip", "install", "-q", *pinned, timeout=600)
    assert installed.returncode == 0, installed.stderr
    installed = run(bin / "pip", "install", "-q", "--no-deps", wheel, timeout=300)
    assert installed.returncode == 0, installed.stderr
    checked = run(bin / "pip", "check")
    assert checked.returncode == 0, checked.stdout

    helped = run(bin / "dspy-registry", "sidecar", "--help")
    assert helped.returncode == 0 and "--tls-ca" in helped.stdout, helped.stderr
    probe = (
        "import importlib.util as u; from dspy_registry.client import ProgramWatcher, SyncProgramWatcher; "
        "import dspy_registry.v1.deployment_pb2_grpc; "
        "print([m for m in ('asyncpg', 'aiohttp', 'opentelemetry', 'aiosqlite') if u.find_spec(m)])"
    )
    imported = run(bin / "python", "-c", probe)
    assert (imported.returncode, imported.stdout) == (0, "[]\n"), imported.stderr
    served = run(bin / "dspy-registry", "serve")
    assert served.returncode == 2
    assert served.stderr.count("\n") == 1 and "pip install 'dspy-registry[server]'" in served.stderr, (
        served.stderr
    )


def test_the_command_looks_for_each_distribution_of_the_server_extra() -> None:
    """dspy_registry/cli.py tells a client-only install which extra it lacks by a module of each
    distribution of `[server]`: its list lacked uvloop and opentelemetry-api once, written by hand."""
    from importlib import metadata, util

    from packaging.requirements import Requirement

    from dspy_registry.cli import SERVER_MODULES

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["server"]
    assert set(SERVER_MODULES) == {Requirement(line).name for line in extra}
    for distribution, module in SERVER_MODULES.items():
        if module is None:
            continue
        spec = util.find_spec(module)
        files = {
            metadata.distribution(distribution).locate_file(f) for f in metadata.files(distribution) or ()
        }
        # The module is the distribution's own, not a namespace another distribution shares.
        assert spec is not None and spec.origin is not None and Path(spec.origin) in files, (
            distribution,
            module,
        )

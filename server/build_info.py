"""What this server is: its version, the source revision it was built from, the Python it runs on.

`dspy_registry_build_info` carries them as labels (a gauge at 1, as Prometheus exporters do), so
that a dashboard can say which release each replica runs and an alert can tell a mixed fleet.
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

UNKNOWN = "unknown"
REVISION_VARIABLE = "DSPY_REGISTRY_REVISION"  # set by whoever builds an image from a checkout


@dataclass(frozen=True, kw_only=True)
class BuildInfo:
    version: str
    revision: str
    python: str

    def labels(self) -> dict[str, str]:
        return {"version": self.version, "revision": self.revision, "python": self.python}


def build_info() -> BuildInfo:
    try:
        version = metadata.version("dspy-registry")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        version = UNKNOWN
    return BuildInfo(version=version, revision=_revision(), python=platform.python_version())


def _revision() -> str:
    """$DSPY_REGISTRY_REVISION; else the commit of the git checkout this module is in (an editable
    install, `make run`); else "unknown" (an installed wheel knows no commit)."""
    if os.environ.get(REVISION_VARIABLE):
        return os.environ[REVISION_VARIABLE]
    here = Path(__file__).resolve().parent
    if "site-packages" in here.parts:  # installed, not a checkout: a git around it is someone else's
        return UNKNOWN
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):  # no git here
        return UNKNOWN
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else UNKNOWN

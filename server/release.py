"""The release this server is: its package's version, as `dspy-registry --version` prints it."""

from __future__ import annotations

from functools import cache
from importlib import metadata


@cache
def version() -> str:
    try:
        return metadata.version("dspy-registry")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown"

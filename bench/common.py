"""Helpers shared by the driver, the echo server and the load generator."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

ECHO_METHOD = "/bench.Echo/Echo"
GET_METHOD = "/dspy_registry.v1.RegistryService/GetProgramVersion"
REGISTER_METHOD = "/dspy_registry.v1.RegistryService/RegisterProgram"
DEPLOY_METHOD = "/dspy_registry.v1.DeploymentService/CreateDeployment"
STATUS_METHOD = "/dspy_registry.v1.DeploymentService/GetDeploymentStatus"


def has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on uvloop when it is importable, else on the default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of an already sorted list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * fraction // 1))  # ceil(n * fraction), at least 1
    return sorted_values[int(rank) - 1]


def emit(record: dict[str, Any]) -> None:
    """Print one JSON line on stdout and flush it."""
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()

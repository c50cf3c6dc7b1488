"""What many tests do with the raw stubs, written once: a call's status code, a refusal, a canary strategy."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
import pytest

from dspy_registry.v1 import deployment_pb2 as dpb


async def code_of(call: Awaitable[object]) -> grpc.StatusCode:
    """The status a call ends with: OK, or the code it was refused with."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def refusal(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    """The error a call must end with (the test fails if it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


def canary_strategy(*steps: tuple[int, float]) -> dpb.DeploymentStrategy:
    """A canary of (weight percent, seconds held) steps."""
    strategy = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_CANARY)
    for weight, pause in steps:
        strategy.canary.steps.add(weight_percent=weight).pause.FromNanoseconds(int(pause * 1e9))
    return strategy

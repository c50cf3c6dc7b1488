"""What many tests do with the raw stubs, written once: a call's status code, a refusal, a canary strategy,
a principal with grants and a token."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
import pytest

from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import access_pb2_grpc as apb_grpc
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


async def principal_token(admin: apb_grpc.AccessServiceStub, name: str, grants: list[tuple[int, str]]) -> str:
    """A new principal `name` with these (action, resource) grants; the secret of a token of its."""
    await admin.CreatePrincipal(apb.CreatePrincipalRequest(principal_id=name, principal=apb.Principal()))
    for action, resource in grants:
        await admin.GrantPermission(
            apb.GrantPermissionRequest(principal=f"principals/{name}", action=action, resource=resource)  # type: ignore[arg-type]
        )
    created = await admin.CreateToken(apb.CreateTokenRequest(parent=f"principals/{name}"))
    return str(created.secret)

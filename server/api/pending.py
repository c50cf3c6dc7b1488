"""Services whose RPCs later issues implement: each answers UNIMPLEMENTED, honestly.

They are registered from the proto descriptors so that reflection lists the
whole contract and clients get a clear status rather than a pretend answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from ..errors import Unimplemented
from .context import Context
from .guard import Guard
from .handlers import method_handler

# Which piece of work brings each service.
ARRIVES_WITH = {
    "dspy_registry.v1.DeploymentService": "the metrics and webhooks issue (#6)",
}


def _refusal(service: ServiceDescriptor, method: MethodDescriptor) -> Any:
    later = ARRIVES_WITH[service.full_name]
    message = f"{service.name}.{method.name} is not implemented yet; it arrives with {later}"

    async def unary(request: Any, context: Context) -> Any:
        raise Unimplemented(message)

    async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
        raise Unimplemented(message)
        yield  # pragma: no cover - makes this an async generator

    return streaming if method.server_streaming else unary


def partly_implemented(
    service: ServiceDescriptor, servicer: object, guard: Guard
) -> grpc.GenericRpcHandler[Any, Any]:
    """The servicer's RPCs, and UNIMPLEMENTED (after authentication) for every one it lacks."""
    handlers = {
        m.name: method_handler(service, m, getattr(servicer, m.name, None) or _refusal(service, m), guard)
        for m in service.methods
    }
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def implemented(service: ServiceDescriptor, servicer: object) -> list[str]:
    return [m.name for m in service.methods if callable(getattr(servicer, m.name, None))]

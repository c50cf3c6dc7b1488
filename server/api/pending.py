"""Services whose RPCs later issues implement: each answers UNIMPLEMENTED, honestly.

They are registered from the proto descriptors so that reflection lists the
whole contract and clients get a clear status rather than a pretend answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

from ..errors import Unimplemented
from .caller import Context

# Which piece of work brings each service.
ARRIVES_WITH = {
    "dspy_registry.v1.DeploymentService": "the deployments, watch and metrics issues (#4-#6)",
    "dspy_registry.v1.AccessService": "the access-control issue (#3)",
}


def _handler(service: ServiceDescriptor, method: MethodDescriptor) -> grpc.RpcMethodHandler[Any, Any]:
    later = ARRIVES_WITH[service.full_name]
    message = f"{service.name}.{method.name} is not implemented yet; it arrives with {later}"
    request_type: Any = GetMessageClass(method.input_type)
    response_type: Any = GetMessageClass(method.output_type)
    kwargs = {
        "request_deserializer": request_type.FromString,
        "response_serializer": response_type.SerializeToString,
    }

    async def unary(request: Any, context: Context) -> Any:
        raise Unimplemented(message)

    async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
        raise Unimplemented(message)
        yield  # pragma: no cover - makes this an async generator

    if method.client_streaming and method.server_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, **kwargs)
    if method.server_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, **kwargs)
    if method.client_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, **kwargs)
    return grpc.unary_unary_rpc_method_handler(unary, **kwargs)


def pending_service(service: ServiceDescriptor) -> grpc.GenericRpcHandler[Any, Any]:
    """A handler for every RPC of `service`, each answering UNIMPLEMENTED."""
    handlers = {m.name: _handler(service, m) for m in service.methods}
    return grpc.method_handlers_generic_handler(service.full_name, handlers)

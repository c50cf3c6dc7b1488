"""Builds the gRPC handlers of a service from its descriptor, once, at start-up.

Every behavior is wrapped here rather than in a per-call interceptor (which
re-creates the handler for each call): errors become a status with rich
details (the table in `status.py`), anything unexpected is logged with its
traceback and answered INTERNAL without leaking internals, and each call
leaves one structured log line with method, status, duration and request id.

Responses may be returned pre-serialized as bytes (a cached answer): the
serializer passes bytes through.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from ..access_log import ACCESS_LOG
from ..errors import RegistryError
from .caller import Context
from .status import code_for, to_status

log = logging.getLogger("dspy_registry.rpc")

Behavior = Callable[..., Any]


def _serialize(response: Message | bytes) -> bytes:
    return response if isinstance(response, bytes) else response.SerializeToString()


def _code(exc: Exception, context: Context) -> grpc.StatusCode:
    """The status code a failed call ends with, for the log line."""
    if isinstance(exc, grpc.aio.AbortError):  # the behavior aborted by itself
        code: grpc.StatusCode | None = context.code()
        return code or grpc.StatusCode.UNKNOWN
    if isinstance(exc, RegistryError):
        return code_for(exc)
    return grpc.StatusCode.INTERNAL


async def _abort(context: Context, exc: Exception, method: str) -> None:
    """End the call for `exc` (abort raises)."""
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    if isinstance(exc, RegistryError):
        await context.abort_with_status(to_status(exc))  # type: ignore[attr-defined]
    log.exception("unhandled error in %s", method)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log has the details")


def _log(method: str, code: grpc.StatusCode, start: float, request: Any = None) -> None:
    duration_ms = (time.perf_counter() - start) * 1000
    ACCESS_LOG.record(method, code.name, duration_ms, getattr(request, "request_id", ""))


def _unary(method: str, behavior: Behavior) -> Behavior:
    async def call(request: Any, context: Context) -> Any:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await behavior(request, context)
        except asyncio.CancelledError:  # the client went away or its deadline passed
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code = _code(exc, context)
            await _abort(context, exc, method)
        finally:
            _log(method, code, start, request)

    return call


def _server_streaming(method: str, behavior: Behavior) -> Behavior:
    async def call(request: Any, context: Context) -> AsyncIterator[Any]:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            async for item in behavior(request, context):
                yield item
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code = _code(exc, context)
            await _abort(context, exc, method)
        finally:
            _log(method, code, start, request)

    return call


def method_handler(
    service: ServiceDescriptor, method: MethodDescriptor, behavior: Behavior
) -> grpc.RpcMethodHandler[Any, Any]:
    name = f"/{service.full_name}/{method.name}"
    request_type: Any = GetMessageClass(method.input_type)
    kwargs: dict[str, Any] = {
        "request_deserializer": request_type.FromString,
        "response_serializer": _serialize,
    }
    if method.client_streaming and method.server_streaming:
        raise NotImplementedError(f"{name}: bidirectional streams are not part of this API")
    if method.server_streaming:
        return grpc.unary_stream_rpc_method_handler(_server_streaming(name, behavior), **kwargs)
    if method.client_streaming:
        # The request stream is the first argument; logging happens without a request.
        return grpc.stream_unary_rpc_method_handler(_unary(name, behavior), **kwargs)
    return grpc.unary_unary_rpc_method_handler(_unary(name, behavior), **kwargs)


def service_handler(service: ServiceDescriptor, servicer: object) -> grpc.GenericRpcHandler[Any, Any]:
    """Handlers for every RPC of `service`; the servicer must define each one (no silent gaps)."""
    missing = [m.name for m in service.methods if not callable(getattr(servicer, m.name, None))]
    if missing:
        raise TypeError(f"{type(servicer).__name__} does not implement {service.name}: {missing}")
    handlers = {m.name: method_handler(service, m, getattr(servicer, m.name)) for m in service.methods}
    return grpc.method_handlers_generic_handler(service.full_name, handlers)

"""One server interceptor for every RPC: error mapping and one structured log line.

Servicers raise the errors of `dspy_registry.server.errors`; this turns them
into a status with rich details (the table in `status.py`). Anything else is
a bug: it is logged with its traceback and answered INTERNAL without leaking
internals.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from ..errors import RegistryError
from .caller import Context
from .status import code_for, to_status

log = logging.getLogger("dspy_registry.rpc")


def _code(exc: Exception, context: Context) -> grpc.StatusCode:
    """The status code a failed call ends with, for the log line."""
    if isinstance(exc, grpc.aio.AbortError):  # the servicer aborted by itself
        code: grpc.StatusCode | None = context.code()
        return code or grpc.StatusCode.UNKNOWN
    if isinstance(exc, RegistryError):
        return code_for(exc)
    return grpc.StatusCode.INTERNAL


async def _abort(context: Context, exc: Exception, method: str) -> None:
    """End the call for `exc` (abort raises); an unexpected exception is a bug and logged."""
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    if isinstance(exc, RegistryError):
        await context.abort_with_status(to_status(exc))  # type: ignore[attr-defined]
    log.exception("unhandled error in %s", method)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log has the details")


def _log(method: str, code: grpc.StatusCode, start: float, request: Any = None) -> None:
    extra = {
        "method": method,
        "code": code.name,
        "duration_ms": round((time.perf_counter() - start) * 1000, 3),
    }
    request_id = getattr(request, "request_id", "") if request is not None else ""
    if request_id:
        extra["request_id"] = request_id
    log.info("rpc", extra=extra)


class RpcInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        if handler is None:
            return handler
        method: str = details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _unary_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _unary_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _stream_unary(method, handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # bidirectional streams: none in this API yet


def _unary_unary(method: str, behavior: Any) -> Any:
    async def wrapper(request: Any, context: Context) -> Any:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await behavior(request, context)
        except Exception as exc:
            code = _code(exc, context)
            await _abort(context, exc, method)
        finally:
            _log(method, code, start, request)

    return wrapper


def _unary_stream(method: str, behavior: Any) -> Any:
    async def wrapper(request: Any, context: Context) -> AsyncIterator[Any]:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            async for item in behavior(request, context):
                yield item
        except Exception as exc:
            code = _code(exc, context)
            await _abort(context, exc, method)
        finally:
            _log(method, code, start, request)

    return wrapper


def _stream_unary(method: str, behavior: Any) -> Any:
    async def wrapper(requests: Any, context: Context) -> Any:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await behavior(requests, context)
        except Exception as exc:
            code = _code(exc, context)
            await _abort(context, exc, method)
        finally:
            _log(method, code, start)

    return wrapper

"""Credentials for calls: `authorization: Bearer <token>` on every RPC of a channel.

    channel = grpc.aio.insecure_channel(target, interceptors=bearer_interceptors(token))

Over TLS, `grpc.access_token_call_credentials(token)` does the same; these
interceptors also work on plaintext channels (localhost, tests).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc


def _with_token(details: grpc.aio.ClientCallDetails, token: str) -> grpc.aio.ClientCallDetails:
    metadata = list(details.metadata or ()) + [("authorization", f"Bearer {token}")]
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        grpc.aio.Metadata(*metadata),
        details.credentials,
        details.wait_for_ready,
    )


class _Bearer:
    def __init__(self, token: str) -> None:
        self.token = token


# grpc.aio files each interceptor under the first call kind it implements,
# so each kind needs an object of its own.
class _UnaryUnary(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await continuation(_with_token(details, self.token), request)


class _UnaryStream(_Bearer, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await continuation(_with_token(details, self.token), request)


class _StreamUnary(_Bearer, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return await continuation(_with_token(details, self.token), requests)


class _StreamStream(_Bearer, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return await continuation(_with_token(details, self.token), requests)


def bearer_interceptors(token: str) -> list[Any]:
    """Client interceptors that send `token` with every call of a grpc.aio channel."""
    token = token.strip()
    return [kind(token) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]

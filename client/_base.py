"""What every method of `Registry` stands on: the channel, the raw stubs, and how calls are made.

A unary call that finds the server UNAVAILABLE is sent again, the same request (and request_id)
each time, so that the server applies a mutation once; any other failure, and the last
UNAVAILABLE, is raised as the typed exception of errors.py.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
from google.protobuf.message import Message

from dspy_registry.v1 import access_pb2_grpc as apb_grpc
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc

from .auth import bearer_interceptors
from .config import Settings, TlsArgument, resolve
from .errors import from_rpc_error

_Response = TypeVar("_Response", bound=Message)


MAX_RETRY_AFTER = 5.0  # seconds, at most, that a RetryInfo makes a call wait before trying again


class ClientBase:
    """The connection of a `Registry`: its channel, the three services' raw stubs, and the call helpers."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float | None = 30.0, retries: int = 3) -> None:
        """A client on a channel the caller made (with its own interceptors); `connect` makes one.

        Args:
            channel: The channel to call on; `close()` closes it.
            timeout: Each unary call's deadline in seconds (None: no deadline).
            retries: How often a call that found the server UNAVAILABLE is tried again.
        """
        self.channel = channel
        self.timeout = timeout
        self.retries = retries
        self._registry_service = pb_grpc.RegistryServiceStub(channel)  # type: ignore[no-untyped-call]
        self._deployment_service = dpb_grpc.DeploymentServiceStub(channel)  # type: ignore[no-untyped-call]
        self._access_service = apb_grpc.AccessServiceStub(channel)  # type: ignore[no-untyped-call]

    @classmethod
    def connect(
        cls,
        target: str | None = None,
        *,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        tls: TlsArgument = None,
        config_file: str | os.PathLike[str] | None = None,
        timeout: float | None = 30.0,
        retries: int = 3,
        options: Sequence[tuple[str, Any]] = (),
    ) -> Self:
        """A client of `target`; arguments left out come from the environment, then the config file.

        No call is made here: a server that cannot be reached shows at the first call.

        Args:
            target: host:port (else DSPY_REGISTRY_TARGET, the config file, then localhost:50051).
            token: The bearer token (else `token_file`, then the environment's and the config
                file's: see config.py).
            token_file: A file holding the token, as `dspy-registry serve` writes admin.token.
            tls: True for the system roots, a CA bundle path, or a `Tls(ca=, cert=, key=)` for mutual TLS
                (else DSPY_REGISTRY_TLS, DSPY_REGISTRY_TLS_CA, DSPY_REGISTRY_CLIENT_CERT/_KEY, the
                config file's: see config.py); False for plaintext.
            config_file: A TOML file of these settings (else DSPY_REGISTRY_CONFIG, then
                $XDG_CONFIG_HOME or ~/.config, /dspy-registry/config.toml).
            timeout: Each unary call's deadline in seconds.
            retries: How often a call that found the server UNAVAILABLE is tried again (with the
                same request_id).
            options: More gRPC channel options.

        Returns:
            The client; use it as an async context manager, or call `close()`.

        Raises:
            ConfigError: A bad value in a DSPY_REGISTRY_* variable or the config file.
            FileNotFoundError: A token file or TLS file named does not exist.
        """
        settings = resolve(target, token=token, token_file=token_file, tls=tls, config_file=config_file)
        return cls.from_settings(settings, timeout=timeout, retries=retries, options=options)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        timeout: float | None = 30.0,
        retries: int = 3,
        options: Sequence[tuple[str, Any]] = (),
    ) -> Self:
        """A client on settings already resolved (`config.resolve`, or the command line's flags):
        nothing is looked up again, so a setting left out is not filled from another place."""
        interceptors = bearer_interceptors(settings.token) if settings.token else None
        channel_options = [("grpc.max_receive_message_length", 8 << 20), *options]
        if settings.tls is not None:
            channel = grpc.aio.secure_channel(
                settings.target,
                settings.tls.credentials(),
                options=channel_options,
                interceptors=interceptors,
            )
        else:
            channel = grpc.aio.insecure_channel(
                settings.target, options=channel_options, interceptors=interceptors
            )
        return cls(channel, timeout=timeout, retries=retries)

    @property
    def registry_service(self) -> pb_grpc.RegistryServiceStub:
        """The raw RegistryService stub on this client's channel (no retries, no typed errors)."""
        return self._registry_service

    @property
    def deployment_service(self) -> dpb_grpc.DeploymentServiceStub:
        """The raw DeploymentService stub on this client's channel (no retries, no typed errors)."""
        return self._deployment_service

    @property
    def access_service(self) -> apb_grpc.AccessServiceStub:
        """The raw AccessService stub on this client's channel (no retries, no typed errors)."""
        return self._access_service

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        await self.channel.close(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- how calls are made

    async def _call(
        self, method: Callable[..., Any], request: Any, response_type: type[_Response]
    ) -> _Response:
        """One unary (or client-stream) call, retried on UNAVAILABLE; its response, typed.

        Also retried: RESOURCE_EXHAUSTED that says when to retry (RetryInfo: a limit on calls,
        streams or uploads at once, which passes), after the delay it names (at most 5 s).
        `method(request, timeout=...)` makes the call: a stub's method, or a function that builds a
        new request iterator for each attempt (a client stream is consumed by the call).
        """
        attempt = 0
        while True:
            try:
                response = await method(request, timeout=self.timeout)
            except grpc.aio.AioRpcError as err:
                error = from_rpc_error(err)
                if attempt < self.retries and err.code() == grpc.StatusCode.UNAVAILABLE:
                    # The same request (and request_id) again: the server applies a mutation once.
                    attempt += 1
                    await asyncio.sleep(min(2.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.0))
                    continue
                if attempt < self.retries and error.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    wait = error.retry_after
                    if wait is not None:
                        attempt += 1
                        await asyncio.sleep(min(MAX_RETRY_AFTER, wait) * random.uniform(1.0, 1.5))
                        continue
                raise error from err
            if not isinstance(response, response_type):
                # The stubs are untyped; this check is what makes the declared type true.
                raise TypeError(
                    f"{response_type.__name__} expected, the call returned {type(response).__name__}"
                )
            return response

    async def _stream(
        self, method: Callable[..., Any], request: Any, timeout: float | None = None
    ) -> AsyncIterator[Any]:
        call = method(request, timeout=timeout)
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from err
        finally:
            call.cancel()

    async def _pages(
        self, method: Callable[..., Any], request: Any, response_type: type[Message], items: str
    ) -> AsyncIterator[Any]:
        """The `items` of every page of a List call, fetching the next page as the last one runs out."""
        while True:
            response: Any = await self._call(method, request, response_type)
            for item in getattr(response, items):
                yield item
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

"""The synchronous twin of `Registry`, for scripts and notebooks-without-await.

    with SyncRegistry.connect("localhost:50051", token_file="admin.token") as registry:
        registry.register_program(name="sentiment", program=state, signature_name="text_classifier")
        for program in registry.list_programs(team="ml_platform"):
            print(program.name)

It runs a `Registry` on a private event loop in a background thread and
has the same methods, generated from the async ones (so they cannot drift):
a coroutine method returns its result, an async iterator method returns a
plain iterator. The same exceptions are raised.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ._deprecated import RENAMED, deprecation_message
from ._loop_thread import LoopThread
from .config import Settings, TlsArgument
from .registry import Registry

T = TypeVar("T")


class SyncRegistry:
    """A blocking client with every method of `Registry`. Use `SyncRegistry.connect(...)` in a `with`."""

    def __init__(self, make: Callable[[], Registry]) -> None:
        self._loop, self._registry = LoopThread.building("dspy-registry-client", make)

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
    ) -> SyncRegistry:
        """As `Registry.connect`."""
        return cls(
            lambda: Registry.connect(
                target,
                token=token,
                token_file=token_file,
                tls=tls,
                config_file=config_file,
                timeout=timeout,
                retries=retries,
                options=options,
            )
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        timeout: float | None = 30.0,
        retries: int = 3,
        options: Sequence[tuple[str, Any]] = (),
    ) -> SyncRegistry:
        """As `Registry.from_settings`: on settings already resolved, nothing looked up again."""
        return cls(
            lambda: Registry.from_settings(settings, timeout=timeout, retries=retries, options=options)
        )

    @property
    def registry(self) -> Registry:
        """The async client underneath."""
        return self._registry

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._loop.run(coroutine)

    def _call(self, method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        async def invoke() -> Any:
            result = method(self._registry, *args, **kwargs)
            return await result if asyncio.iscoroutine(result) else result

        result = self._run(invoke())
        if isinstance(result, AsyncIterator):
            return self._iterate(result)
        return result

    def _iterate(self, source: AsyncIterator[Any]) -> Iterator[Any]:
        async def step() -> tuple[bool, Any]:
            try:
                return True, await source.__anext__()
            except StopAsyncIteration:
                return False, None

        async def close() -> None:
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                await aclose()

        try:
            while True:
                more, item = self._run(step())
                if not more:
                    return
                yield item
        finally:
            # Leaving a loop early (break, an exception) must end the stream on the server too.
            if not self._loop.closed:
                self._run(close())

    def close(self) -> None:
        if self._loop.closed:
            return
        self._run(self._registry.close())
        self._loop.stop()

    def __enter__(self) -> SyncRegistry:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    if TYPE_CHECKING:
        # The generated methods below are invisible to mypy; let it accept them.
        def __getattr__(self, name: str) -> Any: ...


def _twin(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def blocking(self: SyncRegistry, *args: Any, **kwargs: Any) -> Any:
        return self._call(method, args, kwargs)

    return blocking


def _deprecated_twin(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    # The alias would warn on the event loop's thread, pointing into this module; warn here instead,
    # at the caller's line, and run what the alias wraps.
    wrapped: Callable[..., Any] = method.__wrapped__  # type: ignore[attr-defined]

    @functools.wraps(method)
    def blocking(self: SyncRegistry, *args: Any, **kwargs: Any) -> Any:
        warnings.warn(deprecation_message("SyncRegistry", name), DeprecationWarning, stacklevel=2)
        return self._call(wrapped, args, kwargs)

    return blocking


# Every public method of Registry and of the classes it is assembled from (a classmethod such as
# `connect` is no plain function, and is left out with `close`, which SyncRegistry has of its own).
for _name in dir(Registry):
    _method = inspect.getattr_static(Registry, _name)
    if not _name.startswith("_") and _name != "close" and inspect.isfunction(_method):
        setattr(SyncRegistry, _name, (_deprecated_twin if _name in RENAMED else _twin)(_name, _method))

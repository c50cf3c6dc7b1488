"""ProgramWatcher: keep the selected programs loaded, and hot-swap them as their targets change.

    async with ProgramWatcher.connect(
        [("sentiment", "production")], sidecar_id="pod-1", cache_dir=Path("cache")
    ) as watcher:                                                       # start() ... stop()
        with watcher.route("sentiment", routing_key=user_id) as program:   # one whole version, measured
            answer = run(program.value, request)
        watcher.feedback("sentiment", correct=answer == label, routing_key=user_id)

`connect` resolves the server, token and TLS exactly as `Registry.connect` does (config.py), and
the watcher makes its calls through that `Registry`: one retry policy, one error mapping, one
resume-from-revision path (`watch_targets(start_revision=)`). For synchronous serving code (Flask,
Ray Serve, plain threads), `SyncProgramWatcher` (sync_watcher.py) runs it on a thread of its own.

It holds one WatchTargets stream. For each change it fetches the artifacts it
lacks by digest (GetArtifact), checks their sha256, loads them, and swaps one
reference, so a request that took a version keeps it to the end. Then it
reports ACK; when fetching or loading fails it reports NACK with the error
and keeps serving what it had (Envoy's ACK/NACK). It reconnects with
exponential backoff and jitter and resumes from the last revision it saw.

With `cache_dir`, artifacts are kept on disk by digest with each target's
last good state, so after a restart it serves before it has reached the
server, and keeps serving while the server is unreachable.

Every call made through `route()` is measured (latency, and whether it
raised) for the version that answered, as is the labelled feedback given to
`feedback()`; every `metrics_interval` the windows go to ReportMetrics, where
the server's analysis judges a canary by them and rolls it back on a
regression.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc

from dspy_registry.v1 import deployment_pb2 as dpb

from .config import Settings, TlsArgument, resolve
from .dspy_interop import load_module
from .errors import RegistryError
from .measure import Measurements
from .registry import Registry
from .routing import takes_candidate

log = logging.getLogger("dspy_registry.client.watcher")

# loader(program, artifact bytes, media type) -> what get() hands out.
Loader = Callable[[str, bytes, str], Any]
# on_swap(program, environment, what it serves now): after each swap.
OnSwap = Callable[[str, str, "Serving"], Awaitable[None]]


def load_json_or_bytes(program: str, data: bytes, media_type: str) -> Any:
    """The default loader: parsed JSON for JSON media types (a DSPy program's saved state), else bytes."""
    if media_type.endswith("json"):
        return json.loads(data)
    return data


def dspy_module_loader(factory: Callable[[], Any], directory: Path | None = None) -> Loader:
    """A loader making a live module: `factory()` (e.g. your dspy.Module class), then `.load(path)`.

    The artifact is kept in `directory` as {program}-{digest}.json, or, without one, in a temporary
    file removed once loaded.
    """

    def load(program: str, data: bytes, media_type: str) -> Any:
        if directory is None:
            return load_module(factory, data)
        path = directory / f"{program}-{hashlib.sha256(data).hexdigest()[:16]}.json"
        write_atomically(path, data)
        module = factory()
        module.load(str(path))
        return module

    return load


@dataclass(frozen=True, kw_only=True)
class Loaded:
    """One version of a program, loaded."""

    program: str
    environment: str
    version: str
    digest: str
    value: Any


@dataclass(frozen=True, kw_only=True)
class Serving:
    """What one target serves; replaced whole on each change, never mutated."""

    stable: Loaded | None
    candidate: Loaded | None
    weight_percent: int
    revision: int


class ArtifactError(Exception):
    """An artifact that could not be fetched, verified or loaded."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class ProgramWatcher:
    """Keeps the selected programs loaded and swaps them as their targets change; see the module's doc.

    Use `ProgramWatcher.connect(...)` as an async context manager, or build one on a `Registry` (or a
    channel) of your own and call `start()` and `stop()`.
    """

    def __init__(
        self,
        client: Registry | grpc.aio.Channel,
        targets: Sequence[tuple[str, str]],
        *,
        sidecar_id: str,
        cache_dir: Path | None = None,
        loader: Loader = load_json_or_bytes,
        on_swap: OnSwap | None = None,
        heartbeat: float = 10.0,
        metrics_interval: float = 5.0,
        backoff: tuple[float, float] = (0.1, 10.0),
        rng: random.Random | None = None,
    ) -> None:
        self.targets = [(p, e) for p, e in targets]
        self.sidecar_id = sidecar_id
        self.cache_dir = cache_dir
        self.loader = loader
        self.on_swap = on_swap
        self.heartbeat = heartbeat
        self.metrics_interval = metrics_interval
        self.measurements = Measurements()
        self.backoff = backoff
        self.rng = rng or random.Random()
        self.revision = 0
        self.registry = client if isinstance(client, Registry) else Registry(client)
        self._owns_registry = False  # connect() made it: stop() closes it
        self._plaintext_hint = ""  # said when the server cannot be reached over plaintext
        self._serving: dict[tuple[str, str], Serving] = {}
        self._reports: dict[tuple[str, str, str], dpb.SidecarTargetStatus] = {}
        self._wanted: dict[tuple[str, str], set[str]] = {}  # the versions each target asks for now
        self._changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self.connected = asyncio.Event()

    @classmethod
    def connect(
        cls,
        targets: Sequence[tuple[str, str]],
        *,
        sidecar_id: str,
        target: str | None = None,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        tls: TlsArgument = None,
        config_file: str | os.PathLike[str] | None = None,
        timeout: float | None = 30.0,
        retries: int = 3,
        options: Sequence[tuple[str, Any]] = (),
        **watcher_options: Any,
    ) -> Self:
        """A watcher of `targets` on a `Registry` connected as `Registry.connect` connects.

        No call is made here: `start()` (or `async with`) begins; a server that cannot be reached
        is retried with backoff while what the disk cache holds is served.

        Args:
            targets: The (program, environment) pairs to serve.
            sidecar_id: This serving process's id in status reports (a pod name).
            target: host:port (else DSPY_REGISTRY_TARGET, the config file, then localhost:50051).
            token: The bearer token (else `token_file`, then the environment's and the config file's).
            token_file: A file holding the token.
            tls: True for the system roots, a CA bundle path, or a `Tls(ca=, cert=, key=)` for mutual TLS.
            config_file: A TOML file of these settings (else DSPY_REGISTRY_CONFIG, then the XDG location).
            timeout: Each unary call's deadline in seconds.
            retries: How often a call that found the server UNAVAILABLE is tried again.
            options: More gRPC channel options.
            watcher_options: `cache_dir`, `loader`, `on_swap`, `heartbeat`, `metrics_interval`,
                `backoff`, `rng`, as the constructor takes them.

        Returns:
            The watcher, not started; use it as an async context manager.

        Raises:
            ConfigError: A bad value in a variable or the config file.
            FileNotFoundError: A token file or TLS file named does not exist.
        """
        settings = resolve(target, token=token, token_file=token_file, tls=tls, config_file=config_file)
        return cls.from_settings(
            targets,
            settings,
            sidecar_id=sidecar_id,
            timeout=timeout,
            retries=retries,
            options=options,
            **watcher_options,
        )

    @classmethod
    def from_settings(
        cls,
        targets: Sequence[tuple[str, str]],
        settings: Settings,
        *,
        sidecar_id: str,
        timeout: float | None = 30.0,
        retries: int = 3,
        options: Sequence[tuple[str, Any]] = (),
        **watcher_options: Any,
    ) -> Self:
        """As `connect`, on settings already resolved (the sidecar's flags): nothing looked up again."""
        registry = Registry.from_settings(settings, timeout=timeout, retries=retries, options=options)
        watcher = cls(registry, targets, sidecar_id=sidecar_id, **watcher_options)
        watcher._owns_registry = True
        if settings.tls is None:
            watcher._plaintext_hint = (
                f"; this process connects to {settings.target} in plaintext: if the server serves TLS, "
                "name its CA (--tls-ca, DSPY_REGISTRY_TLS_CA or tls_ca in the config file)"
            )
        return watcher

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- serving -------------------------------------------------------------------------------

    def get(self, program: str, routing_key: str | None = None, environment: str | None = None) -> Loaded:
        """The version to run this request on: the candidate by weight (by key when given), else stable."""
        serving = self._find(program, environment)
        if serving.candidate is not None and (
            serving.stable is None or takes_candidate(program, serving.weight_percent, routing_key, self.rng)
        ):
            return serving.candidate
        assert serving.stable is not None
        return serving.stable

    @contextlib.contextmanager
    def route(
        self, program: str, routing_key: str | None = None, environment: str | None = None
    ) -> Iterator[Loaded]:
        """`get()`, measured: the block's latency, and an error if it raises, count for that version."""
        loaded = self.get(program, routing_key, environment)
        start = time.perf_counter()
        failed = False
        try:
            yield loaded
        except (Exception, asyncio.CancelledError):  # a call cut short by a timeout failed too
            failed = True
            raise
        finally:
            elapsed_ms = (time.perf_counter() - start) * 1000
            self.measurements.request(loaded.program, loaded.environment, loaded.version, elapsed_ms, failed)

    def feedback(
        self,
        program: str,
        correct: bool,
        routing_key: str | None = None,
        version: str | None = None,
        environment: str | None = None,
    ) -> None:
        """Labelled feedback on an answer: for `version`, else the version `routing_key` routes to.

        Without either, only a target with no candidate can say which version
        answered; with a candidate serving, that is a ValueError.
        """
        serving = self._find(program, environment)
        if version is None:
            if serving.candidate is not None and routing_key is None:
                raise ValueError(
                    f"{program} has a candidate: say which version answered (routing_key= or version=)"
                )
            version = self.get(program, routing_key, environment).version
        # A named version counts even if it was swapped out while it answered: it did answer.
        held = serving.stable or serving.candidate
        assert held is not None
        self.measurements.feedback(program, held.environment, version, correct)

    def serving(self, program: str, environment: str | None = None) -> Serving:
        return self._find(program, environment)

    def _find(self, program: str, environment: str | None) -> Serving:
        for (p, e), serving in self._serving.items():
            if p == program and (environment is None or e == environment):
                return serving
        raise LookupError(f"no version of {program} is loaded yet")

    async def wait_for(self, check: Callable[[ProgramWatcher], bool], timeout: float = 30.0) -> None:
        """Wait until `check(self)` holds (re-checked after each swap; LookupError counts as not yet)."""

        def holds() -> bool:
            try:
                return check(self)
            except LookupError:
                return False

        async with asyncio.timeout(timeout), self._changed:
            # not asyncio.wait_for: on Python 3.11 it can swallow a cancellation (CPython gh-86296)
            await self._changed.wait_for(holds)

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Serve what the disk cache holds, then watch (in the background)."""
        for program, environment in self.targets:
            await self._restore(program, environment)
        self._tasks = [
            asyncio.create_task(self._watch_forever(), name="watch-targets"),
            asyncio.create_task(self._heartbeat_forever(), name="sidecar-heartbeat"),
            asyncio.create_task(self._report_metrics_forever(), name="metrics"),
        ]

    async def stop(self) -> None:
        """Stop watching and tell the server this sidecar is leaving (and close the connection that
        `connect` made)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        try:
            await self.report_metrics()  # the last window too
            async with asyncio.timeout(2):
                await self.registry.report_sidecar_status(self.sidecar_id, leaving=True)
        except (RegistryError, TimeoutError):
            pass  # the server drops us after three silent heartbeats anyway
        if self._owns_registry:
            await self.registry.close()

    # --- watching ------------------------------------------------------------------------------

    async def _watch_forever(self) -> None:
        failures = 0
        while True:
            try:
                # From the last revision seen: what changed while away, or a snapshot if compacted.
                async for message in self.registry.watch_targets(
                    selectors=self.targets, start_revision=self.revision, sidecar_id=self.sidecar_id
                ):
                    self.connected.set()
                    failures = 0
                    await self._on_message(message)
            except RegistryError as err:
                hint = self._plaintext_hint if err.code == grpc.StatusCode.UNAVAILABLE else ""
                log.warning("watch ended (%s: %s)%s; reconnecting", err.code.name, err.message, hint)
            except Exception:  # e.g. a full disk: keep serving what we have, and try again
                log.exception("watch failed; reconnecting")
            self.connected.clear()
            failures += 1
            low, high = self.backoff
            # Full jitter: after a server restart, every sidecar must not come back at once.
            await asyncio.sleep(self.rng.uniform(low, min(high, low * 2**failures)))

    async def _on_message(self, message: dpb.WatchTargetsResponse) -> None:
        kind = message.WhichOneof("kind")
        if kind == "snapshot":
            targets = list(message.snapshot.targets)
        elif kind == "changes":
            targets = list(message.changes.targets)
        else:
            self.revision = message.revision
            return
        for target in targets:
            await self._apply(target)
        self.revision = message.revision
        await self._report()

    async def _apply(self, t: dpb.Target) -> None:
        key = (t.program, t.environment)
        current = self._serving.get(key)
        wanted = [t.stable] + ([t.candidate] if t.HasField("candidate") else [])
        self._wanted[key] = {v.version for v in wanted if v.digest}
        try:
            stable = (
                await self._version(t.program, t.environment, t.stable, current) if t.stable.digest else None
            )
            candidate = (
                await self._version(t.program, t.environment, t.candidate, current)
                if t.HasField("candidate") and t.candidate.digest
                else None
            )
        except ArtifactError:
            return  # NACKed in _version; the old version keeps serving
        serving = Serving(
            stable=stable,
            candidate=candidate,
            weight_percent=t.candidate.weight_percent if candidate else 0,
            revision=t.revision,
        )
        self._save_target(t)
        async with self._changed:
            # The swap: one assignment of a new dict, never a change to the one request threads
            # (SyncProgramWatcher) may be iterating.
            self._serving = {**self._serving, key: serving}
            self._changed.notify_all()
        if self.on_swap is not None and serving != current:
            try:
                await self.on_swap(t.program, t.environment, serving)
            except Exception:  # the hook's failure must not stop the watch
                log.exception("on_swap failed for %s in %s", t.program, t.environment)

    async def _version(self, program: str, environment: str, v: Any, current: Serving | None) -> Loaded:
        for held in (current.stable, current.candidate) if current else ():
            if held is not None and held.digest == v.digest and held.version == v.version:
                return held
        try:
            data, media_type = await self._artifact(program, v.digest)
            value = self.loader(program, data, media_type)
        except ArtifactError as err:
            self._record(program, environment, v, err.code, str(err))
            raise
        except Exception as err:  # a loader's failure is the sidecar's NACK, whatever it is
            self._record(program, environment, v, grpc.StatusCode.INVALID_ARGUMENT, f"load failed: {err}")
            raise ArtifactError(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from err
        self._record(program, environment, v, None, "")
        return Loaded(
            program=program, environment=environment, version=v.version, digest=v.digest, value=value
        )

    async def _artifact(self, program: str, digest: str) -> tuple[bytes, str]:
        cached = self._cached(digest)
        if cached is not None:
            return cached
        try:
            data, media_type = await self.registry._download(program, digest)
        except RegistryError as err:
            raise ArtifactError(err.code, f"fetching {digest}: {err.message}") from None
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise ArtifactError(grpc.StatusCode.DATA_LOSS, f"artifact {digest} does not match its digest")
        self._cache(digest, data, media_type)
        return data, media_type

    # --- reporting -----------------------------------------------------------------------------

    def _record(
        self, program: str, environment: str, v: Any, code: grpc.StatusCode | None, message: str
    ) -> None:
        entry = dpb.SidecarTargetStatus(
            program=program,
            environment=environment,
            version=v.version,
            digest=v.digest,
            result=dpb.APPLY_RESULT_ACK if code is None else dpb.APPLY_RESULT_NACK,
            revision=self.revision,
        )
        if code is not None:
            entry.error_detail.code = code.value[0]
            entry.error_detail.message = message
        entry.apply_time.GetCurrentTime()
        self._reports[(program, environment, v.version)] = entry

    def _entries(self) -> list[dpb.SidecarTargetStatus]:
        """ACKs of what is served now, and NACKs of versions that failed and are still wanted."""
        out = []
        for (program, environment, version), entry in sorted(self._reports.items()):
            serving = self._serving.get((program, environment))
            held = {x.version for x in (serving.stable, serving.candidate) if x} if serving else set()
            wanted = self._wanted.get((program, environment), set())
            if version in held if entry.result == dpb.APPLY_RESULT_ACK else version in wanted:
                out.append(entry)
        return out

    async def _report(self) -> None:
        try:
            # No longer than a heartbeat, retries included: the next one says it again.
            async with asyncio.timeout(max(self.heartbeat, 1.0)):
                await self.registry.report_sidecar_status(
                    self.sidecar_id,
                    targets=self._entries(),
                    heartbeat_interval=self.heartbeat,
                    revision=self.revision,
                )
        except RegistryError as err:
            log.warning("status report failed (%s: %s)", err.code.name, err.message)
        except TimeoutError:
            log.warning("status report failed (no answer in %.1f s)", max(self.heartbeat, 1.0))

    async def report_metrics(self) -> bool:
        """Send every closed window the server does not have yet; whether all went."""
        windows = self.measurements.close()
        for i in range(0, len(windows), 1000):  # the server takes at most 1000 per call
            chunk = windows[i : i + 1000]
            try:
                async with asyncio.timeout(max(self.metrics_interval, 1.0)):
                    await self.registry.report_metrics(self.sidecar_id, windows=chunk)
            except RegistryError as err:
                if err.code == grpc.StatusCode.INVALID_ARGUMENT:  # sending it again cannot help
                    log.error("metrics refused, dropped: %s", err.message)
                    self.measurements.sent(chunk)
                    continue
                # Kept and sent again next time; the server counts a window once.
                log.warning("metrics report failed (%s: %s)", err.code.name, err.message)
                return False
            except TimeoutError:
                log.warning("metrics report failed (no answer in %.1f s)", max(self.metrics_interval, 1.0))
                return False
            self.measurements.sent(chunk)
        return True

    async def _report_metrics_forever(self) -> None:
        while True:
            await asyncio.sleep(self.metrics_interval)
            await self.report_metrics()

    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            if self.connected.is_set():
                await self._report()

    # --- disk cache ----------------------------------------------------------------------------

    def _cached(self, digest: str) -> tuple[bytes, str] | None:
        if self.cache_dir is None:
            return None
        path = self.cache_dir / "artifacts" / digest.replace(":", "-")
        try:
            data = path.read_bytes()
            media_type = path.with_suffix(".type").read_text()
        except OSError:
            return None
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            log.warning("cached %s is corrupt; fetching it again", digest)
            return None
        return data, media_type

    def _cache(self, digest: str, data: bytes, media_type: str) -> None:
        if self.cache_dir is not None:
            path = self.cache_dir / "artifacts" / digest.replace(":", "-")
            write_atomically(path.with_suffix(".type"), media_type.encode())
            write_atomically(path, data)

    def _target_file(self, program: str, environment: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / "targets" / f"{program}@{environment}.pb"

    def _save_target(self, t: dpb.Target) -> None:
        path = self._target_file(t.program, t.environment)
        if path is not None:
            write_atomically(path, t.SerializeToString())

    async def _restore(self, program: str, environment: str) -> None:
        """Serve the last good state from disk, if whole; the server's answer replaces it later."""
        path = self._target_file(program, environment)
        if path is None or not path.exists():
            return
        target = dpb.Target.FromString(path.read_bytes())
        for v in (target.stable, target.candidate):
            if v.digest and self._cached(v.digest) is None:
                return
        await self._apply(target)


def write_atomically(path: Path, data: bytes) -> None:
    """Temporary file, fsync, rename: a reader sees the old file or the new one, never part of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

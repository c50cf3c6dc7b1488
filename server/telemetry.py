"""Telemetry: a span for every RPC, and the server's own metrics, to a configurable exporter.

Off unless asked for (`--telemetry-exporter`, `--metrics-listen`); then:

  spans    one per RPC, made by opentelemetry-instrumentation-grpc's aio server
           interceptor and named by the full method
           (`/dspy_registry.v1.RegistryService/GetSignature`); a caller's
           `traceparent` metadata makes it a child of the caller's span.
  metrics  rpc.server.duration                  histogram, ms: rpc.service, rpc.method, rpc.grpc.status_code
           dspy_registry.watch.streams          up-down count of open watch streams: watch=targets|events
           dspy_registry.watch.fanout.duration  histogram, s: from a commit reaching the hub to the last
                                                matching watcher's queue holding it; watch=targets|events
           dspy_registry.deployments            gauge: deployments by environment and state (store-wide)
           dspy_registry.rollbacks              counter: environment, cause=manual|auto (store-wide)
           dspy_registry.leader                 gauge: 1 on the replica that runs the background work
                                                (server/leader.py), 0 on the others

Store-wide numbers are exported by the leader only, so that a sum over the
replicas counts each deployment and rollback once (`leading`).

Spans and metrics go to the console or over OTLP (`--telemetry-exporter`);
metrics also to a Prometheus scrape endpoint (`--metrics-listen`).

Each App gets providers of its own, never the process-global ones: those can
be set once per process, and tests start many servers in one, each with
in-memory readers. Nothing else imports OpenTelemetry: the handlers (RPC
latency) and the hubs (fan-out delay) call plain callables the App sets, and
rollbacks and deployment states are read from committed events and the store.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, NoOpMeterProvider, Observation
from opentelemetry.trace import Status, StatusCode

from .domain.deployments import State
from .domain.events import EventKind, is_deployment_kind
from .domain.model import Event
from .store.base import Store
from .watch import Hub

if TYPE_CHECKING:  # the SDK and the exporters are imported only once telemetry is on
    from wsgiref.simple_server import WSGIServer

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from prometheus_client import CollectorRegistry

log = logging.getLogger("dspy_registry.telemetry")

EXPORTERS = ("none", "console", "otlp")
SERVICE_NAME = "dspy-registry"
OTLP_MISSING = (
    "--telemetry-exporter otlp needs the OTLP exporter: pip install 'dspy-registry[otlp]' "
    "(opentelemetry-exporter-otlp-proto-grpc)"
)

# Fan-out takes microseconds for a few watchers and milliseconds for thousands (the hub
# hands a change out over several turns of the loop): the SDK's default buckets, made for
# milliseconds, would put every one of these in the first.
FANOUT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# What the OpenTelemetry semantic conventions count as a server error; any other code is
# the caller's problem (NOT_FOUND, PERMISSION_DENIED, ...) and leaves the span's status unset.
SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

# The deployments gauge is re-read from the store at most this often.
DEPLOYMENT_COUNTS_INTERVAL = 1.0


class Telemetry:
    """One server's tracer and meter providers, its instruments, and what feeds them.

    Given providers (tests) stay the caller's: `stop()` shuts down only what
    `from_config` made.
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        *,
        metrics_listen: str = "",
        metrics_registry: CollectorRegistry | None = None,
        owned: bool = False,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.metrics_port = 0  # the Prometheus endpoint's port once started (for --metrics-listen ...:0)
        self._metrics_listen = metrics_listen
        self._metrics_registry = metrics_registry
        self._metrics_server: WSGIServer | None = None
        self._owned = owned
        # Whether this replica leads (App sets it to its Leadership's): store-wide numbers are its alone.
        self.leading: Callable[[], bool] = lambda: True
        self._hubs: dict[str, Hub] = {}
        self._counts: DeploymentCounts | None = None
        self._rpc_attributes: dict[tuple[str, grpc.StatusCode], dict[str, str | int]] = {}
        meter = (meter_provider or NoOpMeterProvider()).get_meter("dspy_registry.server")
        self._rpc_duration = meter.create_histogram(
            "rpc.server.duration", unit="ms", description="How long each RPC took, streams included"
        )
        self._fanout = meter.create_histogram(
            "dspy_registry.watch.fanout.duration",
            unit="s",
            description="From a commit reaching a watch hub to its last matching watcher's queue holding it",
            explicit_bucket_boundaries_advisory=FANOUT_BUCKETS,
        )
        self._rollbacks = meter.create_counter(
            "dspy_registry.rollbacks", unit="{rollback}", description="Deployments rolled back, by cause"
        )
        meter.create_observable_up_down_counter(
            "dspy_registry.watch.streams",
            callbacks=[self._observe_streams],
            unit="{stream}",
            description="Open WatchTargets (watch=targets) and WatchEvents (watch=events) streams",
        )
        meter.create_observable_gauge(
            "dspy_registry.deployments",
            callbacks=[self._observe_deployments],
            unit="{deployment}",
            description="Deployments in the store, by environment and state",
        )
        meter.create_observable_gauge(
            "dspy_registry.leader",
            callbacks=[self._observe_leader],
            unit="1",
            description="1 on the replica that runs the controller, analysis, webhooks and maintenance",
        )

    @classmethod
    def from_config(cls, exporter: str, metrics_listen: str) -> Telemetry | None:
        """What `--telemetry-exporter` and `--metrics-listen` ask for; None when neither is set."""
        if exporter not in EXPORTERS:
            raise ValueError(f"--telemetry-exporter must be one of {', '.join(EXPORTERS)}, not {exporter!r}")
        if exporter == "none" and not metrics_listen:
            return None
        from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
        from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # OTEL_SERVICE_NAME (and OTEL_RESOURCE_ATTRIBUTES) still win over the default name.
        resource = Resource.create(
            {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": SERVICE_NAME}
        )
        tracer_provider = None
        readers: list[MetricReader] = []
        if exporter != "none":
            span_exporter, metric_exporter = _exporters(exporter)
            tracer_provider = SdkTracerProvider(resource=resource)
            tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
            # Every OTEL_METRIC_EXPORT_INTERVAL ms (60 s unless set), and once more at shutdown.
            readers.append(PeriodicExportingMetricReader(metric_exporter))
        registry = None
        if metrics_listen:
            _split_address(metrics_listen)  # a bad address fails now, before anything starts
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import CollectorRegistry

            # A registry of this server's own, not prometheus_client's global one: nothing
            # else in the process (another server in a test) shows up on its endpoint.
            registry = CollectorRegistry()
            # One scope (this server's) only: otel_scope_* labels on every series would say nothing.
            readers.append(PrometheusMetricReader(scope_info_enabled=False, registry=registry))
        meter_provider = SdkMeterProvider(metric_readers=readers, resource=resource)
        return cls(
            tracer_provider,
            meter_provider,
            metrics_listen=metrics_listen,
            metrics_registry=registry,
            owned=True,
        )

    # -- wiring -----------------------------------------------------------------------------

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
        """For grpc.aio.server(interceptors=...): the instrumentation's span per RPC, when tracing."""
        if self.tracer_provider is None:
            return []
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        interceptor: grpc.aio.ServerInterceptor[Any, Any] = aio_server_interceptor(  # type: ignore[no-untyped-call]
            tracer_provider=self.tracer_provider
        )
        return [interceptor]

    def serve_metrics(self) -> None:
        """Open the Prometheus endpoint, if asked for (OSError when its port is taken)."""
        if self._metrics_listen and self._metrics_registry is not None and self._metrics_server is None:
            from prometheus_client import start_http_server

            host, port = _split_address(self._metrics_listen)
            # A daemon thread answers scrapes: a slow scraper never holds up the event loop.
            try:
                self._metrics_server, _ = start_http_server(port, host, registry=self._metrics_registry)
            except OSError as exc:
                raise OSError(f"cannot serve metrics on {self._metrics_listen}: {exc.strerror}") from exc
            self.metrics_port = int(self._metrics_server.server_port)
            log.info("metrics endpoint", extra={"address": f"http://{host}:{self.metrics_port}/metrics"})

    async def start(self, store: Store, hubs: Mapping[str, Hub]) -> None:
        """Feed the instruments from `store`'s commits and the watch `hubs`; serve /metrics if asked."""
        self.serve_metrics()
        self._hubs = dict(hubs)
        for name, hub in self._hubs.items():
            hub.on_handed_out = self._fanout_observer(name)
        self._counts = DeploymentCounts(store)
        await self._counts.start()
        store.commits.subscribe(self._on_commit, self._counts.changed)

    async def stop(self) -> None:
        """Stop feeding; flush and shut down the providers `from_config` made."""
        for hub in self._hubs.values():
            hub.on_handed_out = None
        if self._counts is not None:
            await self._counts.stop()
        if self._metrics_server is not None:
            server, self._metrics_server = self._metrics_server, None
            await asyncio.to_thread(_close_http, server)
        if self._owned:
            # Exporters may block on the network while flushing: not on the event loop.
            if self.tracer_provider is not None:
                await asyncio.to_thread(self.tracer_provider.shutdown)
            if self.meter_provider is not None:
                await asyncio.to_thread(self.meter_provider.shutdown)

    # -- what feeds the instruments ---------------------------------------------------------

    def observe_rpc(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """The handlers' hook (handlers.py), called at the end of every call of ours."""
        attributes = self._rpc_attributes.get((method, code))
        if attributes is None:
            service, _, name = method.lstrip("/").partition("/")
            attributes = self._rpc_attributes[(method, code)] = {
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.method": name,
                "rpc.grpc.status_code": code.value[0],
            }
        self._rpc_duration.record(seconds * 1000, attributes)
        if self.tracer_provider is not None:
            # The instrumentation learns a status from context.abort() and set_code(), not from
            # abort_with_status() (how a RegistryError ends a call, with its rich details): the
            # handlers know the code in every case, so the span gets it from here.
            span = trace.get_current_span()
            if span.is_recording():
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                if code in SERVER_ERRORS:
                    span.set_status(Status(StatusCode.ERROR, code.name))

    def _fanout_observer(self, watch: str) -> Callable[[int, float], None]:
        attributes = {"watch": watch}

        def observe(revision: int, seconds: float) -> None:
            self._fanout.record(seconds, attributes)

        return observe

    def _on_commit(self, events: Sequence[Event]) -> None:
        """Count rollbacks; mark the deployment counts stale. Other replicas' commits come here too."""
        changed = False
        automated: set[str] = set()
        for e in events:
            if not is_deployment_kind(e.kind):
                changed = changed or e.kind == EventKind.ENVIRONMENT_CREATED  # a row of zeros more
                continue
            changed = True
            # An automated rollback notes AUTO_ROLLBACK on the deployment, in the same
            # transaction and just before it ends ROLLED_BACK (domain/deployments.py roll_back).
            if e.kind == EventKind.DEPLOYMENT_AUTO_ROLLBACK:
                automated.add(e.resource)
            elif e.kind == EventKind.DEPLOYMENT_ROLLED_BACK and self.leading():
                cause = "auto" if e.resource in automated else "manual"
                self._rollbacks.add(1, {"environment": str(e.data.get("environment", "")), "cause": cause})
        if changed and self._counts is not None:
            self._counts.changed()

    # Observable callbacks run wherever metrics are collected: a periodic reader's thread or
    # a Prometheus scrape's. They only read what the event loop keeps up to date.

    def _observe_streams(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(len(hub), {"watch": name}) for name, hub in list(self._hubs.items())]

    def _observe_leader(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(1 if self.leading() else 0)]

    def _observe_deployments(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._counts is None or not self.leading():
            return []
        environments, counts = self._counts.snapshot
        # Every state of every environment, zeros too: a state that empties reads 0 instead of
        # keeping its last number in a scraper's view.
        return [
            Observation(
                counts.get((environment, state), 0), {"environment": environment, "state": state.name.lower()}
            )
            for environment in environments
            for state in State
        ]


class DeploymentCounts:
    """The deployments gauge's numbers, re-read from the store when deployments changed.

    The gauge's callback is synchronous and may run on another thread; the
    store is async. So the callback reads `snapshot`, which a task here
    replaces after each commit with a deployment event (at most once a second).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        # (environments, counts) as of the last read: one tuple, replaced whole, so that a
        # reader on another thread sees the old pair or the new, never half of each.
        self.snapshot: tuple[list[str], dict[tuple[str, State], int]] = ([], {})
        self._stale = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._read()
        self._task = asyncio.create_task(self._run(), name="deployment-counts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def changed(self) -> None:
        self._stale.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._stale.wait()
            self._stale.clear()
            began = loop.time()
            try:
                await self._read()
            except Exception:  # the store is away: keep the last numbers, try again
                log.warning("cannot read deployment counts", exc_info=True)
                self._stale.set()
            await asyncio.sleep(max(0.0, began + DEPLOYMENT_COUNTS_INTERVAL - loop.time()))

    async def _read(self) -> None:
        async with self.store.read() as tx:
            names = await tx.environment_names()
            counts = await tx.deployment_counts()
        self.snapshot = (sorted(names | {environment for environment, _ in counts}), counts)


def _exporters(exporter: str) -> tuple[Any, Any]:
    """(span exporter, metric exporter) for --telemetry-exporter."""
    if exporter == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(), ConsoleMetricExporter()
    # An optional extra: imported by name, so that neither the server nor mypy needs it installed.
    # The endpoint and headers come from the standard OTEL_EXPORTER_OTLP_* variables.
    try:
        traces = importlib.import_module("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
        metrics = importlib.import_module("opentelemetry.exporter.otlp.proto.grpc.metric_exporter")
    except ImportError as exc:
        raise ValueError(OTLP_MISSING) from exc
    return traces.OTLPSpanExporter(), metrics.OTLPMetricExporter()


def _split_address(address: str) -> tuple[str, int]:
    """HOST:PORT (or [IPv6]:PORT) of --metrics-listen."""
    host, colon, port = address.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit():
        raise ValueError(f"--metrics-listen wants HOST:PORT (such as 127.0.0.1:9464), not {address!r}")
    return host, int(port)


def _close_http(server: WSGIServer) -> None:
    server.shutdown()
    server.server_close()

"""Telemetry: a span for every RPC, and the server's own metrics, to a configurable exporter.

Off unless asked for (`--telemetry-exporter`, `--metrics-listen`); then:

  spans    one per RPC, made by opentelemetry-instrumentation-grpc's aio server
           interceptor and named by the full method
           (`/dspy_registry.v1.RegistryService/GetSignature`); a caller's
           `traceparent` metadata makes it a child of the caller's span. JSON log
           lines written within one carry its `trace_id` and `span_id`.
  metrics  rpc.server.call.duration and this server's own (`dspy_registry.*`): the
           table is docs/operations.md's, the instruments are made in `Telemetry.__init__`.

Store-wide numbers (deployments by state, paused deployments, live sidecars, rollbacks) are
exported by the leader only (`leading`, server/leader.py), so that a sum over the replicas counts
each once; `dspy_registry.leader` says which replica that is.

Metric names, units and attributes follow the OpenTelemetry semantic conventions
where they have one (the RPC duration, in seconds, with the conventions' buckets);
the Prometheus exporter turns `a.b` in unit `s` into `a_b_seconds`, and a counter
into `..._total`. Every counter and gauge is there from the start, at 0 (the labelled
ones for every label value known then, and for each environment as it appears), so
that an alert on an increase, or on an absent series, can be written.

Spans and metrics go to the console or over OTLP (`--telemetry-exporter`);
metrics also to a Prometheus scrape endpoint (`--metrics-listen`), with
prometheus_client's process, platform and garbage-collector collectors beside them.

Each App gets providers of its own, never the process-global ones: those can
be set once per process, and tests start many servers in one, each with
in-memory readers. Nothing else imports OpenTelemetry (but trace_logs.py, which
reads the current span): the handlers (RPC latency), the hubs (fan-out delay),
the store (transaction time), analysis (verdicts), the sidecars' use case (ACKs
and NACKs) and the notifier (webhook deliveries) call plain callables that
`start` sets, and rollbacks, deployment states and live sidecars are read from
committed events and the store.
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

from .build_info import build_info
from .domain.deployments import State
from .domain.events import EventKind, is_deployment_kind
from .domain.health import Verdict
from .domain.model import Event
from .domain.webhooks import DeliveryState
from .readiness import Readiness
from .store.base import Availability, Store
from .store_counts import Snapshot, StoreCounts
from .trace_logs import TraceIds
from .watch import Hub

if TYPE_CHECKING:  # the SDK and the exporters are imported only once telemetry is on
    from wsgiref.simple_server import WSGIServer

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from .notifier import Notifier
    from .usecases.deployments import Deployments
    from .usecases.sidecars import Sidecars

log = logging.getLogger("dspy_registry.telemetry")

EXPORTERS = ("none", "console", "otlp")
SERVICE_NAME = "dspy-registry"
OTLP_MISSING = (
    "--telemetry-exporter otlp needs the OTLP exporter: pip install 'dspy-registry[otlp]' "
    "(opentelemetry-exporter-otlp-proto-grpc)"
)

# The semantic conventions' boundaries for rpc.server.call.duration, in seconds.
RPC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# Fan-out takes microseconds for a few watchers and milliseconds for thousands (the hub
# hands a change out over several turns of the loop): the SDK's default buckets, made for
# milliseconds, would put every one of these in the first.
FANOUT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# A read on SQLite takes tens of microseconds; a write waits for its batch's fsync, and on a
# loaded PostgreSQL for the store-wide write lock.
STORE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

# What the OpenTelemetry semantic conventions count as a server error (error.type on the
# metric, ERROR on the span); any other code is the caller's problem (NOT_FOUND, ...).
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

# The label values of each counter, all pre-created at 0 (per environment where it has one).
CAUSES = ("manual", "auto")
VERDICTS = {Verdict.HEALTHY: "healthy", Verdict.UNHEALTHY: "unhealthy", Verdict.INCONCLUSIVE: "inconclusive"}
RESULTS = {True: "ack", False: "nack"}
DELIVERY_OUTCOMES = {
    DeliveryState.SUCCEEDED: "delivered",
    DeliveryState.PENDING: "retried",  # this attempt failed; another follows
    DeliveryState.FAILED: "failed",  # the last attempt failed: given up
}


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
        self._counts: StoreCounts | None = None
        self._store: Store | None = None
        self._availability: Callable[[], Availability | None] = lambda: None
        self._unhook: list[Callable[[], None]] = []
        self._zeroed: set[str] = set()  # environments whose counters are at 0 or more
        self._rpc_attributes: dict[tuple[str, grpc.StatusCode], dict[str, str]] = {}
        self._trace_ids = TraceIds()
        self._build = build_info().labels()
        meter = (meter_provider or NoOpMeterProvider()).get_meter("dspy_registry.server")
        self._rpc_duration = meter.create_histogram(
            "rpc.server.call.duration",
            unit="s",
            description="How long each incoming RPC took, from its arrival to its status (streams included)",
            explicit_bucket_boundaries_advisory=RPC_BUCKETS,
        )
        self._fanout = meter.create_histogram(
            "dspy_registry.watch.fanout.duration",
            unit="s",
            description="From a commit reaching a watch hub to its last matching watcher's queue holding it",
            explicit_bucket_boundaries_advisory=FANOUT_BUCKETS,
        )
        self._transactions = meter.create_histogram(
            "dspy_registry.store.transaction.duration",
            unit="s",
            description="Store transactions, from asking for one (a connection, the writer's turn) to its end",
            explicit_bucket_boundaries_advisory=STORE_BUCKETS,
        )
        self._rollbacks = meter.create_counter(
            "dspy_registry.rollbacks", unit="{rollback}", description="Deployments rolled back, by cause"
        )
        self._verdicts = meter.create_counter(
            "dspy_registry.analysis.verdicts",
            unit="{verdict}",
            description="Verdicts of the analysis of watched deployments, made on this replica",
        )
        self._results = meter.create_counter(
            "dspy_registry.sidecar.results",
            unit="{result}",
            description="ACKs and NACKs sidecars reported to this replica, each once (not every heartbeat)",
        )
        self._deliveries = meter.create_counter(
            "dspy_registry.webhook.deliveries",
            unit="{attempt}",
            description="Webhook delivery attempts made by this replica, by what came of them",
        )
        for outcome in DELIVERY_OUTCOMES.values():
            self._deliveries.add(0, {"outcome": outcome})
        gauges: list[tuple[str, Callable[[CallbackOptions], Iterable[Observation]], str, str]] = [
            (
                "dspy_registry.deployments",
                self._observe_deployments,
                "{deployment}",
                "Deployments in the store, by environment and state",
            ),
            (
                "dspy_registry.deployments.paused",
                self._observe_paused,
                "{deployment}",
                "Deployments in progress held for a person (a paused canary), by environment",
            ),
            (
                "dspy_registry.sidecars",
                self._observe_sidecars,
                "{sidecar}",
                "Live sidecars serving each version of each program in each environment (what they ACKed)",
            ),
            (
                "dspy_registry.store.up",
                self._observe_store,
                "1",
                "1 while this replica's store answers (access=read) and can commit writes (access=write)",
            ),
            (
                "dspy_registry.build_info",
                self._observe_build,
                "1",
                "1, labelled with this server's version, source revision and Python",
            ),
            (
                "dspy_registry.leader",
                self._observe_leader,
                "1",
                "1 on the replica that runs the controller, analysis, webhooks and maintenance (the leader)",
            ),
        ]
        for name, callback, unit, description in gauges:
            meter.create_observable_gauge(name, callbacks=[callback], unit=unit, description=description)
        meter.create_observable_up_down_counter(
            "dspy_registry.watch.streams",
            callbacks=[self._observe_streams],
            unit="{stream}",
            description="Open WatchTargets (watch=targets) and WatchEvents (watch=events) streams",
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
            from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

            # A registry of this server's own, not prometheus_client's global one: nothing
            # else in the process (another server in a test) shows up on its endpoint. The
            # standard collectors (process_*, python_gc_*, python_info) go on it by hand, as
            # the global registry would have them.
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
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

    def serve_metrics(self, readiness: Readiness) -> None:
        """Open the Prometheus endpoint, if asked for (OSError when its port is taken); it answers
        /healthz and /readyz from `readiness` too."""
        if self._metrics_listen and self._metrics_registry is not None and self._metrics_server is None:
            from .metrics_http import serve

            host, port = _split_address(self._metrics_listen)
            try:
                self._metrics_server = serve(host, port, self._metrics_registry, readiness)
            except OSError as exc:
                raise OSError(f"cannot serve metrics on {self._metrics_listen}: {exc.strerror}") from exc
            self.metrics_port = int(self._metrics_server.server_port)
            log.info("metrics endpoint", extra={"address": f"http://{host}:{self.metrics_port}/metrics"})

    async def start(
        self,
        store: Store,
        hubs: Mapping[str, Hub],
        *,
        availability: Callable[[], Availability | None] | None = None,
        deployments: Deployments | None = None,
        sidecars: Sidecars | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        """Feed the instruments: from `store`'s commits and transactions, the watch `hubs`, the
        store health probe's `availability`, and the hooks of analysis (`deployments`), `sidecars`
        and the `notifier`."""
        self._store = store
        self._hubs = dict(hubs)
        for name, hub in self._hubs.items():
            hub.on_handed_out = self._fanout_observer(name)
        store.timer.observe = self._observe_transaction
        if availability is not None:
            self._availability = availability
        if deployments is not None:
            deployments.on_verdict = self._observe_verdict
            self._unhook.append(lambda: setattr(deployments, "on_verdict", None))
        if sidecars is not None:
            sidecars.on_result = self._observe_result
            self._unhook.append(lambda: setattr(sidecars, "on_result", None))
        if notifier is not None:
            notifier.on_delivery = self._observe_delivery
            self._unhook.append(lambda: setattr(notifier, "on_delivery", None))
        if self.tracer_provider is not None:
            self._trace_ids.install()
        self._counts = StoreCounts(store, on_read=self._zero_environments, leading=lambda: self.leading())
        await self._counts.start()
        store.commits.subscribe(self._on_commit, self._counts.changed)

    def leadership_changed(self) -> None:
        """This replica took or gave up the lead: the store-wide numbers are read anew, so that a new
        leader exports them at once (a replica that does not lead reads only the environments)."""
        if self._counts is not None:
            self._counts.changed()

    async def stop(self) -> None:
        """Stop feeding; flush and shut down the providers `from_config` made."""
        for hub in self._hubs.values():
            hub.on_handed_out = None
        if self._store is not None:
            self._store.timer.observe = None
        for unhook in self._unhook:
            unhook()
        self._unhook = []
        self._trace_ids.remove()
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
            attributes = self._rpc_attributes[(method, code)] = {
                "rpc.system.name": "grpc",
                "rpc.method": method.lstrip("/"),  # dspy_registry.v1.RegistryService/GetSignature
                "rpc.response.status_code": code.name,
            }
            if code in SERVER_ERRORS:
                attributes["error.type"] = code.name
        self._rpc_duration.record(seconds, attributes)
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

    def _observe_transaction(self, kind: str, seconds: float) -> None:
        self._transactions.record(seconds, {"transaction": kind})

    def _observe_verdict(self, environment: str, verdict: Verdict) -> None:
        if verdict in VERDICTS:
            self._verdicts.add(1, {"environment": environment, "verdict": VERDICTS[verdict]})

    def _observe_result(self, environment: str, acked: bool) -> None:
        self._results.add(1, {"environment": environment, "result": RESULTS[acked]})

    def _observe_delivery(self, state: DeliveryState) -> None:
        self._deliveries.add(1, {"outcome": DELIVERY_OUTCOMES[state]})

    def _zero_environments(self, snapshot: Snapshot) -> None:
        """Every counter labelled by environment starts at 0 for each environment the store has."""
        for environment in snapshot.environments:
            if environment in self._zeroed:
                continue
            self._zeroed.add(environment)
            for cause in CAUSES:
                self._rollbacks.add(0, {"environment": environment, "cause": cause})
            for verdict in VERDICTS.values():
                self._verdicts.add(0, {"environment": environment, "verdict": verdict})
            for result in RESULTS.values():
                self._results.add(0, {"environment": environment, "result": result})

    def _on_commit(self, events: Sequence[Event]) -> None:
        """Count rollbacks; mark the store's counts stale. Other replicas' commits come here too."""
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

    def _snapshot(self) -> Snapshot:
        """The store's counts, on the leader; none on the other replicas (the leader exports them)."""
        if self._counts is None or not self.leading():
            return Snapshot()
        return self._counts.snapshot

    def _observe_deployments(self, options: CallbackOptions) -> Iterable[Observation]:
        snapshot = self._snapshot()
        # Every state of every environment, zeros too: a state that empties reads 0 instead of
        # keeping its last number in a scraper's view.
        return [
            Observation(
                snapshot.deployments.get((environment, state), 0),
                {"environment": environment, "state": state.name.lower()},
            )
            for environment in snapshot.environments
            for state in State
        ]

    def _observe_paused(self, options: CallbackOptions) -> Iterable[Observation]:
        snapshot = self._snapshot()
        return [Observation(snapshot.paused.get(e, 0), {"environment": e}) for e in snapshot.environments]

    def _observe_sidecars(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(n, {"program": program, "environment": environment, "version": version})
            for (program, environment, version), n in sorted(self._snapshot().sidecars.items())
        ]

    def _observe_store(self, options: CallbackOptions) -> Iterable[Observation]:
        found = self._availability()
        # Before the first probe, say nothing rather than guess.
        if found is None:
            return []
        return [
            Observation(int(found.readable), {"access": "read"}),
            Observation(int(found.writable), {"access": "write"}),
        ]

    def _observe_build(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(1, self._build)]

    def _observe_leader(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(1 if self.leading() else 0)]


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

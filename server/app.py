"""Composition root: config -> store -> use cases -> servicers -> grpc.aio server (-> REST gateway).

`build(config)` wires everything and opens nothing, so that what the server is made of can be read
(and built) apart from what starting it does; `App.start()` then opens the store, the ports, health
and the background loops, and `App.stop()` closes them in order.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from dspy_registry.v1 import access_pb2, deployment_pb2, registry_pb2

from .access_log import ACCESS_LOG
from .api.access import AccessServicer
from .api.deployment import DeploymentServicer
from .api.flow import Gate, Streams
from .api.guard import Guard
from .api.handlers import service_handler
from .api.registry import RegistryServicer
from .api.watch import EventWatch, TargetWatch, encode_changes, encode_events
from .config import Config
from .controller import Controller
from .dashboard.feed import LiveFeed
from .dashboard.routes import Dashboard
from .domain import versioning
from .domain.clock import SYSTEM_CLOCK, Clock
from .domain.environments import load_toml
from .domain.programs import UNARY_ARTIFACT_LIMIT
from .domain.webhooks import parse_networks
from .errors import ResourceExhausted
from .generic_handlers import GenericOnly
from .http_api import HttpServer, server_ssl
from .leader import Leadership
from .maintenance import Maintenance
from .notifier import Notifier
from .readiness import Readiness
from .replica_flush import ReplicaFlush
from .store.backends import open_store
from .store.base import MAX_REPLICA_NAME, Store, check_replica_name
from .store_health import StoreHealth
from .telemetry import Telemetry
from .usecases.access import Access
from .usecases.checks import Checks
from .usecases.deployments import Deployments
from .usecases.environments import Environments
from .usecases.live_sidecars import LiveSidecars
from .usecases.metrics import Metrics
from .usecases.registry import Registry
from .usecases.rollups import MetricRollups
from .usecases.sidecars import Sidecars
from .usecases.watches import Watches
from .usecases.webhooks import Webhooks
from .watch import Hub, deployment_events

log = logging.getLogger("dspy_registry.server")

# A stop that takes this long beyond its grace is stuck somewhere: say where, once, in the log.
SLOW_STOP_SECONDS = 15.0


def _report_slow_stop(seconds: float, stopping: Any) -> None:
    """Where the stop is, and every task's stack, for an operator (or a test run) whose server does
    not stop. The stop's own chain is walked from its coroutine: the task running it may reach it
    through an async generator (a test fixture), where a task's chain of awaits cannot be followed."""
    stacks = [f"the stop: {_chain(stopping)}"]
    stacks += [f"{task.get_name()}: {_chain(task.get_coro())}" for task in asyncio.all_tasks()]
    log.warning("stopping has taken over %.1f s; the tasks still running:\n%s", seconds, "\n".join(stacks))


def _chain(coro: Any) -> str:
    return " -> ".join(
        f"{f.f_code.co_name} ({f.f_code.co_filename.rsplit('/', 1)[-1]}:{f.f_lineno})"
        for f in _awaiting(coro)
    )


def _awaiting(coro: Any) -> list[Any]:
    """The frames of a suspended coroutine and of what it awaits, outermost first (a task's own
    get_stack() shows only the outermost)."""
    frames = []
    while coro is not None:
        frame = (
            getattr(coro, "cr_frame", None)
            or getattr(coro, "ag_frame", None)
            or getattr(coro, "gi_frame", None)
        )
        if frame is not None:
            frames.append(frame)
        coro = (
            getattr(coro, "cr_await", None)
            or getattr(coro, "ag_await", None)
            or getattr(coro, "gi_yieldfrom", None)
        )
    return frames


REGISTRY_SERVICE = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"]
DEPLOYMENT_SERVICE = deployment_pb2.DESCRIPTOR.services_by_name["DeploymentService"]
ACCESS_SERVICE = access_pb2.DESCRIPTOR.services_by_name["AccessService"]
# The services of the contract by full name, as health, reflection and the servicers know them.
SERVICES: Mapping[str, ServiceDescriptor] = {
    s.full_name: s for s in (REGISTRY_SERVICE, DEPLOYMENT_SERVICE, ACCESS_SERVICE)
}

# Room for the request's other fields around a 4 MiB unary artifact.
MAX_MESSAGE = UNARY_ARTIFACT_LIMIT + 256 * 1024
RECEIVE_WINDOW = 4 * 1024 * 1024  # bytes of a stream's requests grpc holds unread (server_options)
MIN_CLIENT_PING_MS = 10_000  # the keepalive interval docs/configuration.md asks of clients, at least
# On stop, once every call let in has ended: how long no new call must have come before grpc stops
# (see Gate.quiet), and how long grpc may then take to send the last statuses before it cancels
# what is left (streams whose client reads nothing: nothing else would end them).
QUIET_SECONDS = 0.2
FLUSH_SECONDS = 1.0


@dataclass(frozen=True, kw_only=True)
class Services:
    """The server wired and not started: nothing here has opened a file, a connection or a port, nor
    started a task. `App.start` opens the store, starts the hubs and the loops, and serves `servicers`.
    """

    store: Store
    access: Access  # start() bootstraps the first admin through it
    environments: Environments  # start() brings the configured environments up to date
    hubs: Mapping[str, Hub]  # "targets" (WatchTargets) and "events" (WatchEvents), as telemetry names them
    live: LiveFeed  # the dashboard's live streams (`--http-listen`)
    deployments: Deployments  # telemetry hears analysis's verdicts from it
    sidecars: Sidecars  # ... and the sidecars' ACKs and NACKs from this
    controller: Controller
    notifier: Notifier
    maintenance: Maintenance
    replica_flush: ReplicaFlush  # every replica's, leader or not: what it holds of the fleet, written
    leadership: Leadership  # runs the controller, the notifier and maintenance on the leader only
    guard: Guard
    servicers: Mapping[str, object]  # by full service name, as SERVICES
    gateway_secret: str  # the REST gateway's proof to the guard of who its callers are; "" without it


def build(config: Config, clock: Clock = SYSTEM_CLOCK) -> Services:
    """Wire the store, the use cases, the background loops and the servicers that `config` asks for;
    every one of them reads the time of day from `clock`.

    Raises:
        ValueError: a setting out of range, a database URL of no known scheme, a bad webhook network.
    """
    for name, value in (
        ("--max-concurrent-calls", config.max_concurrent_calls),
        ("--max-watch-streams", config.max_watch_streams),
        ("--max-concurrent-uploads", config.max_concurrent_uploads),
        ("--send-timeout", config.send_timeout_seconds),
    ):
        if not value > 0:
            raise ValueError(f"{name} must be positive, not {value}")
    if config.replica_name:
        check_replica_name(config.replica_name)
    # Read before anything is opened: a bad file fails the start with nothing to close.
    versioning_settings = _read_config(config.config) if config.config else None
    store = open_store(config.database)
    access = Access(store, clock=clock)
    # Shared by the REST gateway and the guard only: the gateway's proof of who its callers are.
    gateway_secret = secrets.token_urlsafe(32) if config.http_listen else ""
    guard = Guard(
        access,
        enabled=config.auth,
        client_certificates=bool(config.tls_client_ca),
        gateway_secret=gateway_secret,
    )
    environments = Environments(store, clock=clock)
    # What this replica holds in memory of the fleet, written by its flush (docs/operations.md).
    replica = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    fleet = LiveSidecars(store, replica, flush_seconds=config.telemetry_flush_seconds, clock=clock)
    rollups = MetricRollups(store, replica, clock=clock)
    deployments = Deployments(
        store, metrics_retention=config.metrics_retention_seconds, live=fleet, rollups=rollups, clock=clock
    )
    registry = Registry(
        store,
        guard_mode=config.semver_guard,
        upload_limit=config.upload_limit,
        max_concurrent_uploads=config.max_concurrent_uploads,
        versioning_settings=versioning_settings,
        clock=clock,
        after_register=deployments.auto_deploy,
    )
    webhooks = Webhooks(
        store, parse_networks(config.webhook_allow), clock=clock
    )  # a bad network fails the start
    checks = Checks(store, deployments)  # CI's reports; they move the deployments waiting for them
    watches = Watches(store)
    controller = Controller(deployments, clock=clock)
    notifier = Notifier(webhooks)
    maintenance = Maintenance(
        store,
        request_retention=config.request_retention_seconds,
        event_retention=config.event_retention_seconds,
        metrics_retention=config.metrics_retention_seconds,
        clock=clock,
    )
    leadership = Leadership(store, [maintenance, controller, notifier])
    targets = Hub(encode_changes)
    events = Hub(encode_events, deployment_events)
    live = LiveFeed(events)  # the dashboard's live streams share one watch of `events`
    sidecars = Sidecars(
        store, deployments, fleet, lambda: targets.revision, clock=clock, on_report=live.touched
    )
    deployment_servicer = DeploymentServicer(
        environments,
        deployments,
        guard,
        TargetWatch(watches, targets, guard),
        EventWatch(watches, events, guard),
        sidecars,
        Metrics(
            store,
            fleet,
            rollups,
            retention_seconds=config.metrics_retention_seconds,
            clock=clock,
            on_report=live.touched,
        ),
        webhooks,
        checks=checks,
        leader=lambda: leadership.leader,
    )
    return Services(
        store=store,
        access=access,
        environments=environments,
        hubs={"targets": targets, "events": events},
        live=live,
        deployments=deployments,
        sidecars=sidecars,
        controller=controller,
        notifier=notifier,
        maintenance=maintenance,
        leadership=leadership,
        replica_flush=ReplicaFlush(
            fleet,
            rollups,
            interval=config.telemetry_flush_seconds,
            metrics_retention=config.metrics_retention_seconds,
        ),
        guard=guard,
        servicers={
            REGISTRY_SERVICE.full_name: RegistryServicer(registry, guard, deployments, checks=checks),
            DEPLOYMENT_SERVICE.full_name: deployment_servicer,
            ACCESS_SERVICE.full_name: AccessServicer(access, guard),
        },
        gateway_secret=gateway_secret,
    )


class App:
    """A server: `build(config)`'s services behind a grpc.aio server. `start()` opens the store
    (migrations), then serves; `stop()` ends it."""

    def __init__(
        self, config: Config, telemetry: Telemetry | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        """`telemetry`: providers of the caller's (tests); by default what the config asks for.
        `clock`: where every use case reads the time of day (a test's own, to let a pause pass)."""
        self.config = config
        self.clock = clock
        self.services = build(config, clock)
        self.store = self.services.store
        self.controller = self.services.controller
        self.notifier = self.services.notifier
        self.maintenance = self.services.maintenance
        self.replica_flush = self.services.replica_flush
        self.leadership = self.services.leadership
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.telemetry = (
            telemetry
            if telemetry is not None
            else Telemetry.from_config(config.telemetry_exporter, config.metrics_listen)
        )
        interceptors = self.telemetry.server_interceptors() if self.telemetry else []
        self.server = grpc.aio.server(interceptors=interceptors or None, options=server_options(config))
        self._intercepted = bool(interceptors)  # server streams' handlers are then generators (handlers.py)
        self.port = 0
        # Every call passes the gate first; server streams send through `streams` (api/flow.py).
        self.gate = Gate(config.max_concurrent_calls, config.max_watch_streams)
        self.streams = Streams(config.send_timeout_seconds)
        self.http: HttpServer | None = None
        self.http_port = 0
        # Health follows the store (server/store_health.py): NOT_SERVING while the database is away.
        self.store_health = StoreHealth(self.store, self.health, ["", *SERVICES])
        # /readyz on the REST and metrics ports says what health says on the gRPC port.
        self.readiness = Readiness(lambda: self.store_health.current)

    async def start(self) -> int:
        """Open the store (migrations), bring the environments and the first admin about, serve the
        services on the configured ports, then start health and the background loops. The port."""
        if self.telemetry is not None:
            # First: a port in use fails before the store is open.
            self.telemetry.serve_metrics(self.readiness)
        await self.store.open()
        services = self.services
        async with self.store.read() as tx:
            revision = await tx.current_revision()
        for hub in services.hubs.values():
            hub.start(revision)
        for hub in services.hubs.values():
            self.store.commits.subscribe(hub.on_commit, hub.on_reset)
        if self.telemetry is not None:
            self.telemetry.leading = lambda: self.leadership.leading
            self.leadership.on_change = self.telemetry.leadership_changed
            await self.telemetry.start(
                self.store,
                services.hubs,
                availability=lambda: self.store_health.current,
                deployments=services.deployments,
                sidecars=services.sidecars,
                notifier=self.notifier,
            )
        self.store.commits.subscribe(self.controller.on_commit)
        self.store.commits.subscribe(self.notifier.on_commit, self.notifier.on_reset)
        await _unless_read_only(
            "bringing the environments up to date",
            services.environments.seed(
                load_toml(Path(self.config.config).read_text()) if self.config.config else None
            ),
        )
        if self.config.auth:
            await services.access.bootstrap(Path(self.config.admin_token_file))
        else:
            log.warning("authentication is OFF (--no-auth): every caller acts as admin")
        tls = await self._serve()
        self.streams.start()
        self.replica_flush.start()  # on every replica: what it holds of the fleet, written
        # The controller, the notifier and maintenance run where the leader lock is held.
        await self.leadership.start(self.replica_name())
        # Migrations ran in store.open(): only now does health say SERVING (if the store answers).
        await self.store_health.start()
        self.readiness.started = True
        host = self.config.listen.rsplit(":", 1)[0]
        log.info(
            "serving",
            extra={
                "address": f"{host}:{self.port}",
                "database": _redact(self.store.url),
                "tls": "mutual" if self.config.tls_client_ca else ("on" if tls else "off"),
                "auth": self.config.auth,
            },
        )
        return self.port

    async def _serve(self) -> bool:
        """The servicers, health and reflection on the gRPC port (and the REST routes on theirs);
        whether the gRPC port is TLS."""
        services = self.services
        observe = self.telemetry.observe_rpc if self.telemetry else None
        self.server.add_generic_rpc_handlers(
            [
                service_handler(
                    SERVICES[name],
                    servicer,
                    services.guard,
                    observe,
                    gate=self.gate,
                    streams=self.streams,
                    intercepted=self._intercepted,
                )
                for name, servicer in services.servicers.items()
            ]
        )
        names = [
            *SERVICES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        generic = GenericOnly(self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, generic)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(names),  # type: ignore[attr-defined]  # exported, not declared
            generic,
        )
        credentials = server_credentials(self.config)
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(self.config.listen)
            else:
                self.port = self.server.add_secure_port(self.config.listen, credentials)
        except RuntimeError as exc:  # grpc's way of saying the address is taken or unusable
            raise OSError(f"cannot listen on {self.config.listen}: {exc}") from None
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        if self.config.http_listen:
            # The REST routes call the gRPC services over a private Unix socket of their own.
            self.http = HttpServer(
                self.config.http_listen,
                services.gateway_secret,
                server_ssl(self.config.tls_cert, self.config.tls_key),
                self.config.grace_seconds,
                readiness=self.readiness,
                extra=Dashboard(services.live).install,
            )
            try:
                self.server.add_insecure_port(self.http.grpc_address)
            except RuntimeError as exc:  # e.g. a TMPDIR too long for a socket path (107 bytes)
                raise OSError(
                    f"cannot open the REST routes' socket {self.http.grpc_address}: {exc}"
                ) from None
        await self.server.start()
        if self.http is not None:
            try:
                self.http_port = await self.http.start()
            except OSError as exc:
                raise OSError(f"cannot listen on {self.config.http_listen}: {exc}") from None
        return credentials is not None

    async def stop(self, grace: float | None = None) -> None:
        """Stop: refuse new calls, end the watch streams now, give the calls in progress `grace` seconds.

        Health goes NOT_SERVING and every call from now on is refused UNAVAILABLE with nothing done
        (a client sends it again, to another replica). WatchTargets and WatchEvents streams end at
        once with UNAVAILABLE, so that sidecars resume elsewhere instead of waiting out the grace.
        The calls already let in have `grace` seconds (the config's by default) to finish; this
        returns as soon as they have, then closes the store.
        """
        grace = self.config.grace_seconds if grace is None else grace
        stopping = self._stop(grace)
        watchdog = asyncio.get_running_loop().call_later(
            grace + SLOW_STOP_SECONDS, _report_slow_stop, grace + SLOW_STOP_SECONDS, stopping
        )
        try:
            await stopping
        finally:
            watchdog.cancel()

    async def _stop(self, grace: float) -> None:
        started = time.monotonic()
        self.readiness.stopping = True  # /readyz says 503 from now on
        await self.store_health.stop()  # first: it must not turn health SERVING again
        await self.health.enter_graceful_shutdown()
        self.gate.close()
        calls, watches = self.gate.calls, self.gate.watches
        for hub in self.services.hubs.values():
            hub.close()
        await self.services.live.stop()  # the dashboard's live streams end now, as the watches do
        # The REST routes' requests in progress finish meanwhile: their gRPC calls are the gate's.
        http = asyncio.ensure_future(self.http.stop()) if self.http is not None else None
        drained = await self.gate.drained(grace)
        if http is not None:
            await http
        # Only now does grpc stop. It cancels (CANCELLED, which clients do not retry) every call it
        # received but had not handed over yet, so first the gate answers those, UNAVAILABLE.
        quiet = drained and await self.gate.quiet(QUIET_SECONDS, grace - (time.monotonic() - started))
        left = max(0.0, grace - (time.monotonic() - started))
        await self.server.stop(min(FLUSH_SECONDS, left) if drained else 0)
        await self.streams.stop()
        await self.replica_flush.stop()  # no report comes in now: the last batch holds every one answered
        await self.leadership.stop()
        if self.telemetry is not None:
            await self.telemetry.stop()  # after the server: the last calls' spans are flushed too
        await self.store.close()
        ACCESS_LOG.flush()
        log.info(
            "stopped",
            extra={
                "calls_in_progress": calls,
                "watch_streams_ended": watches,
                "calls_cut_at_grace": self.gate.calls,
                "refused": self.gate.refused_since_close,
                "quiet": quiet,
                "seconds": round(time.monotonic() - started, 3),
            },
        )

    def replica_name(self) -> str:
        """--replica-name, else the host:port this replica serves on (the machine's name for a
        wildcard address, which names no one replica)."""
        if self.config.replica_name:
            return self.config.replica_name
        host = self.config.listen.rsplit(":", 1)[0]
        if host.strip("[]") in ("", "0.0.0.0", "::"):
            host = socket.gethostname()
        return f"{host[: MAX_REPLICA_NAME - 6]}:{self.port}"

    async def wait(self) -> None:
        await self.server.wait_for_termination()


async def _unless_read_only(what: str, step: Awaitable[object]) -> None:
    """A start-up write on a store that opened read-only (its disk is full) is skipped, not fatal:
    reads are still worth serving. The next start with room makes it."""
    try:
        await step
    except ResourceExhausted as exc:
        log.warning("%s skipped: %s", what, exc.message)


def _redact(url: str) -> str:
    """Drop a password from a database URL before it reaches a log."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


def _read_config(path: str) -> versioning.Versioning:
    """The --config file's [versioning] settings, its environments checked too (start() applies them)."""
    text = Path(path).read_text()
    load_toml(text)
    return versioning.load_toml(text)


def server_options(config: Config) -> list[tuple[str, Any]]:
    """Hardening defaults (docs/configuration.md, "Connections", tells clients what to expect)."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_concurrent_streams", config.max_concurrent_streams),
        ("grpc.so_reuseport", 0),
        # After a restart every sidecar reconnects at once. grpc core cancels calls
        # beyond 1 000 pending (soft) / 3 000 (hard) by default, which would cancel
        # part of that burst; the watch hub, not this queue, is what bounds the work.
        ("grpc.server.max_pending_requests", 20_000),
        ("grpc.server.max_pending_requests_hard_limit", 30_000),
        # Watch streams sit idle for long: let clients keep them alive with pings
        # every 10 s or more, even with no call in flight ... The server takes them from
        # half that, so that a ping a busy server reads late does not make the next one
        # early. (This option was spelt min_recv_ping_interval_without_data_ms, which grpc
        # ignores: its default, 5 minutes, closed idle watch streams pinged every 10 s with
        # GOAWAY "too many pings" at their third ping.)
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_MS // 2),
        ("grpc.http2.max_ping_strikes", 2),
        # ... and find dead clients by pinging every 60 s, closing after 20 s without an answer.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        # What a client may send ahead of what the server has read, per stream: a fixed window.
        # grpc grows it by bandwidth probing otherwise, and uploads sent faster than the server
        # spools them sat in its buffers: six 48 MiB uploads held 145 MiB there (55 MiB with
        # this). It only bounds what clients send (requests are small but for uploads): at
        # 100 ms of round trip an upload still moves 40 MiB/s.
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", RECEIVE_WINDOW),
    ]


def server_credentials(config: Config) -> grpc.ServerCredentials | None:
    """TLS from --tls-cert/--tls-key; with --tls-client-ca, client certificates are required."""
    if not config.tls_cert and not config.tls_key:
        if config.tls_client_ca:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (config.tls_cert and config.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    pair = (Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())
    client_ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )

"""Server configuration: flags, then environment variables, then defaults."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from .api.flow import DEFAULT_MAX_CALLS, DEFAULT_MAX_WATCHES, SEND_TIMEOUT_SECONDS
from .domain.guard import GuardMode
from .domain.programs import DEFAULT_UPLOAD_LIMIT
from .usecases.artifacts import DEFAULT_MAX_CONCURRENT_UPLOADS

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATABASE = "sqlite:///.dspy-registry/registry.db"
DEFAULT_ADMIN_TOKEN_FILE = ".dspy-registry/admin.token"


@dataclass(frozen=True, kw_only=True)
class Config:
    listen: str = DEFAULT_LISTEN
    database: str = DEFAULT_DATABASE
    semver_guard: GuardMode = GuardMode.ENFORCE
    upload_limit: int = DEFAULT_UPLOAD_LIMIT
    grace_seconds: float = 10.0
    request_retention_seconds: float = 24 * 3600.0
    event_retention_seconds: float = 24 * 3600.0
    metrics_retention_seconds: float = 3600.0
    auth: bool = True
    admin_token_file: str = DEFAULT_ADMIN_TOKEN_FILE
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    max_concurrent_streams: int = 1000
    max_concurrent_calls: int = DEFAULT_MAX_CALLS  # calls in progress (not watches); more: RESOURCE_EXHAUSTED
    max_watch_streams: int = DEFAULT_MAX_WATCHES  # WatchTargets and WatchEvents streams open
    max_concurrent_uploads: int = DEFAULT_MAX_CONCURRENT_UPLOADS
    send_timeout_seconds: float = SEND_TIMEOUT_SECONDS  # a stream whose client takes nothing this long is cut
    webhook_allow: tuple[str, ...] = ()  # networks webhooks may reach although private or loopback
    config: str = ""
    log_level: str = "info"
    log_format: str = "json"
    telemetry_exporter: str = "none"  # none, console or otlp: where spans and metrics go
    metrics_listen: str = ""  # host:port of a Prometheus scrape endpoint; "" for none
    http_listen: str = ""  # host:port of the REST routes (http_api.py); "" for none
    replica_name: str = ""  # how this replica is named as the leader (server/leader.py); "" for host:port


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--listen",
        default=env("DSPY_REGISTRY_LISTEN", DEFAULT_LISTEN),
        help="host:port to serve on; port 0 picks a free one (env DSPY_REGISTRY_LISTEN)",
    )
    parser.add_argument(
        "--database",
        default=env("DSPY_REGISTRY_DATABASE", DEFAULT_DATABASE),
        help="sqlite:///relative/path, sqlite:////absolute/path or postgresql://… "
        "(env DSPY_REGISTRY_DATABASE)",
    )
    parser.add_argument(
        "--semver-guard",
        choices=[m.value for m in GuardMode],
        default=env("DSPY_REGISTRY_SEMVER_GUARD", GuardMode.ENFORCE.value),
        help="refuse (enforce), accept with a warning (warn) or ignore (off) a version "
        "bump smaller than its signature changes need",
    )
    parser.add_argument(
        "--upload-limit",
        type=int,
        default=int(env("DSPY_REGISTRY_UPLOAD_LIMIT", str(DEFAULT_UPLOAD_LIMIT))),
        help="largest artifact UploadProgram accepts, in bytes (default 64 MiB)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=float(env("DSPY_REGISTRY_GRACE", "10")),
        help="seconds in-flight calls get to finish on SIGTERM/SIGINT",
    )
    parser.add_argument(
        "--request-retention",
        type=float,
        default=float(env("DSPY_REGISTRY_REQUEST_RETENTION", "24")),
        help="hours a mutation's request_id is remembered: a retry within it gets the first answer",
    )
    parser.add_argument(
        "--event-retention",
        type=float,
        default=float(env("DSPY_REGISTRY_EVENT_RETENTION", "24")),
        help="hours of the event log kept for watchers to resume from; older ones get a fresh snapshot",
    )
    parser.add_argument(
        "--metrics-retention",
        type=float,
        default=float(env("DSPY_REGISTRY_METRICS_RETENTION", "1")),
        help="hours sidecars' metric windows are kept; analysis looks at most this far back",
    )
    parser.add_argument(
        "--admin-token-file",
        default=env("DSPY_REGISTRY_ADMIN_TOKEN_FILE", DEFAULT_ADMIN_TOKEN_FILE),
        help="where the first start of an empty store writes the admin token (mode 0600)",
    )
    parser.add_argument(
        "--no-auth",
        action="store_true",
        default=env("DSPY_REGISTRY_NO_AUTH", "") == "1",
        help="serve without authentication: every caller acts as admin (development and "
        "benchmarks only; env DSPY_REGISTRY_NO_AUTH=1)",
    )
    parser.add_argument(
        "--tls-cert", default=env("DSPY_REGISTRY_TLS_CERT", ""), help="PEM server certificate"
    )
    parser.add_argument("--tls-key", default=env("DSPY_REGISTRY_TLS_KEY", ""), help="PEM server private key")
    parser.add_argument(
        "--tls-client-ca",
        default=env("DSPY_REGISTRY_TLS_CLIENT_CA", ""),
        help="PEM CA bundle: require client certificates signed by it (mutual TLS); a "
        "certificate's subject maps to the principal that lists it",
    )
    parser.add_argument(
        "--max-concurrent-streams",
        type=int,
        default=int(env("DSPY_REGISTRY_MAX_CONCURRENT_STREAMS", "1000")),
        help="concurrent calls one HTTP/2 connection may hold open",
    )
    parser.add_argument(
        "--max-concurrent-calls",
        type=int,
        default=int(env("DSPY_REGISTRY_MAX_CONCURRENT_CALLS", str(DEFAULT_MAX_CALLS))),
        help="calls in progress at once (watch streams aside); more are refused RESOURCE_EXHAUSTED "
        "with a retry hint",
    )
    parser.add_argument(
        "--max-watch-streams",
        type=int,
        default=int(env("DSPY_REGISTRY_MAX_WATCH_STREAMS", str(DEFAULT_MAX_WATCHES))),
        help="WatchTargets and WatchEvents streams open at once; more are refused RESOURCE_EXHAUSTED "
        "with a retry hint",
    )
    parser.add_argument(
        "--max-concurrent-uploads",
        type=int,
        default=int(env("DSPY_REGISTRY_MAX_CONCURRENT_UPLOADS", str(DEFAULT_MAX_CONCURRENT_UPLOADS))),
        help="UploadProgram calls at once; more are refused RESOURCE_EXHAUSTED with a retry hint",
    )
    parser.add_argument(
        "--send-timeout",
        type=float,
        default=float(env("DSPY_REGISTRY_SEND_TIMEOUT", str(SEND_TIMEOUT_SECONDS))),
        help="seconds a stream (a watch, an artifact download) waits for a client that takes no "
        "message before it is cut with RESOURCE_EXHAUSTED",
    )
    parser.add_argument(
        "--webhook-allow",
        action="append",
        default=[env("DSPY_REGISTRY_WEBHOOK_ALLOW")] if env("DSPY_REGISTRY_WEBHOOK_ALLOW") else None,
        metavar="CIDR[,CIDR...]",
        help="networks webhook URLs may resolve to although they are private, loopback or link-local "
        "(refused otherwise), e.g. 127.0.0.0/8; repeatable (env DSPY_REGISTRY_WEBHOOK_ALLOW)",
    )
    parser.add_argument(
        "--config",
        default=env("DSPY_REGISTRY_CONFIG", ""),
        help="a TOML file defining environments, their policies and the deployment defaults "
        "(shaped like DSPy.rb's DSPy.configure block); applied at each start",
    )
    parser.add_argument("--log-level", default=env("DSPY_REGISTRY_LOG_LEVEL", "info"))
    parser.add_argument(
        "--log-format", choices=["json", "text"], default=env("DSPY_REGISTRY_LOG_FORMAT", "json")
    )
    parser.add_argument(
        "--telemetry-exporter",
        choices=["none", "console", "otlp"],
        default=env("DSPY_REGISTRY_TELEMETRY_EXPORTER", "none"),
        help="send a span per RPC and the server's metrics to stdout (console) or to an OpenTelemetry "
        "collector (otlp: needs the [otlp] extra; OTEL_EXPORTER_OTLP_ENDPOINT, default localhost:4317)",
    )
    parser.add_argument(
        "--metrics-listen",
        default=env("DSPY_REGISTRY_METRICS_LISTEN", ""),
        metavar="HOST:PORT",
        help="serve the metrics for Prometheus at http://HOST:PORT/metrics (env DSPY_REGISTRY_METRICS_LISTEN)",
    )
    parser.add_argument(
        "--http-listen",
        default=env("DSPY_REGISTRY_HTTP_LISTEN", ""),
        metavar="HOST:PORT",
        help="serve the REST routes (/api/registry/..., /api/openapi.json) at http://HOST:PORT; port 0 "
        "picks a free one (env DSPY_REGISTRY_HTTP_LISTEN)",
    )
    parser.add_argument(
        "--replica-name",
        default=env("DSPY_REGISTRY_REPLICA_NAME", ""),
        metavar="NAME",
        help="this server's name among the replicas on one database, as GetDeploymentStatus and the "
        "logs name the leader; default: host:port it serves on (env DSPY_REGISTRY_REPLICA_NAME)",
    )


def from_arguments(args: argparse.Namespace) -> Config:
    return Config(
        listen=args.listen,
        database=args.database,
        semver_guard=GuardMode(args.semver_guard),
        upload_limit=args.upload_limit,
        grace_seconds=args.grace,
        request_retention_seconds=args.request_retention * 3600,
        event_retention_seconds=args.event_retention * 3600,
        metrics_retention_seconds=args.metrics_retention * 3600,
        auth=not args.no_auth,
        admin_token_file=args.admin_token_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        max_concurrent_streams=args.max_concurrent_streams,
        max_concurrent_calls=args.max_concurrent_calls,
        max_watch_streams=args.max_watch_streams,
        max_concurrent_uploads=args.max_concurrent_uploads,
        send_timeout_seconds=args.send_timeout,
        webhook_allow=tuple(args.webhook_allow or ()),
        config=args.config,
        log_level=args.log_level,
        log_format=args.log_format,
        telemetry_exporter=args.telemetry_exporter,
        metrics_listen=args.metrics_listen,
        http_listen=args.http_listen,
        replica_name=args.replica_name,
    )

"""Server configuration: flags, then environment variables, then defaults.

A variable's value is parsed when `serve` runs, not when the command line is built: a bad one
(DSPY_REGISTRY_GRACE=10s) stops `serve` with one line naming it, and no other command of the CLI.
Booleans accept 1/0/true/false/yes/no.
"""

from __future__ import annotations

import argparse
import os
import ssl
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .api.flow import DEFAULT_MAX_CALLS, DEFAULT_MAX_WATCHES, SEND_TIMEOUT_SECONDS
from .domain.guard import GuardMode
from .domain.programs import DEFAULT_UPLOAD_LIMIT
from .store.backends import backend
from .usecases.artifacts import DEFAULT_MAX_CONCURRENT_UPLOADS

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATABASE = "sqlite:///.dspy-registry/registry.db"
DEFAULT_ADMIN_TOKEN_FILE = ".dspy-registry/admin.token"
ENVIRONMENTS_VARIABLE = "DSPY_REGISTRY_ENVIRONMENTS"  # the --environments file
# The name the environments file had before; the client's config file has it now (client/config.py).
OLD_ENVIRONMENTS_VARIABLE = "DSPY_REGISTRY_CONFIG"

_T = TypeVar("_T")


class ConfigError(ValueError):
    """A setting `serve` cannot use, naming where it came from."""


@dataclass(frozen=True)
class _Variable:
    """An option's value as its environment variable gave it, parsed by from_arguments."""

    name: str
    raw: str


def _env(name: str, default: Any) -> Any:
    raw = os.environ.get(name)
    return default if raw is None or raw == "" else _Variable(name, raw)


def _boolean(value: str) -> bool:
    word = value.strip().lower()
    if word not in ("1", "0", "true", "false", "yes", "no"):
        raise ValueError("expected one of 1, 0, true, false, yes, no")
    return word in ("1", "true", "yes")


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return value

    return parse


def _number(kind: Callable[[str], _T]) -> Callable[[str], _T]:
    def parse(value: str) -> _T:
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"not {'an integer' if kind is int else 'a number'}") from None

    return parse


def _value(given: Any, parse: Callable[[str], _T]) -> _T:
    """A flag's value as argparse parsed it, or its variable's, parsed here."""
    if not isinstance(given, _Variable):
        return given  # type: ignore[no-any-return]
    try:
        return parse(given.raw)
    except ValueError as err:
        raise ConfigError(f"{given.name}={given.raw!r}: {err}") from None


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
    # How often each replica writes the sidecar heartbeats and metric windows it holds in memory.
    telemetry_flush_seconds: float = 5.0
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


LOG_LEVELS = ["debug", "info", "warning", "error", "critical"]


def add_database_argument(parser: argparse.ArgumentParser) -> None:
    """`--database`, one definition for every command that opens the store (serve, migrate, admin);
    `database_url` reads it."""
    parser.add_argument(
        "--database",
        type=_database_flag,
        default=_env("DSPY_REGISTRY_DATABASE", DEFAULT_DATABASE),
        help="sqlite:///relative/path, sqlite:////absolute/path or postgresql://… "
        "(env DSPY_REGISTRY_DATABASE)",
    )


def database_url(args: argparse.Namespace) -> str:
    """The database URL `--database` or its variable gives.

    Raises:
        ConfigError: The variable names no backend of ours (a flag's value argparse refuses itself).
    """
    return _value(args.database, _database_url)


def _database_url(url: str) -> str:
    backend(url)  # the scheme of a backend, else a ValueError naming the URL
    return url


def _database_flag(url: str) -> str:
    try:
        return _database_url(url)
    except ValueError as err:  # argparse words a ValueError as "invalid value", dropping the message
        raise argparse.ArgumentTypeError(str(err)) from None


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    env = _env
    parser.add_argument(
        "--listen",
        default=env("DSPY_REGISTRY_LISTEN", DEFAULT_LISTEN),
        help="host:port to serve on; port 0 picks a free one (env DSPY_REGISTRY_LISTEN)",
    )
    add_database_argument(parser)
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
        default=env("DSPY_REGISTRY_UPLOAD_LIMIT", DEFAULT_UPLOAD_LIMIT),
        help="largest artifact UploadProgram accepts, in bytes (default 64 MiB)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=env("DSPY_REGISTRY_GRACE", 10.0),
        help="seconds in-flight calls get to finish on SIGTERM/SIGINT",
    )
    parser.add_argument(
        "--request-retention",
        type=float,
        default=env("DSPY_REGISTRY_REQUEST_RETENTION", 24.0),
        help="hours a mutation's request_id is remembered: a retry within it gets the first answer",
    )
    parser.add_argument(
        "--event-retention",
        type=float,
        default=env("DSPY_REGISTRY_EVENT_RETENTION", 24.0),
        help="hours of the event log kept for watchers to resume from; older ones get a fresh snapshot",
    )
    parser.add_argument(
        "--metrics-retention",
        type=float,
        default=env("DSPY_REGISTRY_METRICS_RETENTION", 1.0),
        help="hours sidecars' metric windows are kept; analysis looks at most this far back",
    )
    parser.add_argument(
        "--telemetry-flush",
        type=float,
        default=env("DSPY_REGISTRY_TELEMETRY_FLUSH", 5.0),
        help="seconds between a replica's batched writes of the heartbeats and metric windows it holds "
        "in memory (docs/operations.md); a replica that dies loses at most this much",
    )
    parser.add_argument(
        "--admin-token-file",
        default=env("DSPY_REGISTRY_ADMIN_TOKEN_FILE", DEFAULT_ADMIN_TOKEN_FILE),
        help="the first start of an empty store adopts the admin token this file holds (a mounted "
        "Secret; `dspy-registry admin generate-token` makes one), or, when there is no such file, "
        "writes a new one there (mode 0600) (env DSPY_REGISTRY_ADMIN_TOKEN_FILE)",
    )
    parser.add_argument(
        "--no-auth",
        action="store_true",
        default=env("DSPY_REGISTRY_NO_AUTH", False),
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
        default=env("DSPY_REGISTRY_MAX_CONCURRENT_STREAMS", 1000),
        help="concurrent calls one HTTP/2 connection may hold open",
    )
    parser.add_argument(
        "--max-concurrent-calls",
        type=int,
        default=env("DSPY_REGISTRY_MAX_CONCURRENT_CALLS", DEFAULT_MAX_CALLS),
        help="calls in progress at once (watch streams aside); more are refused RESOURCE_EXHAUSTED "
        "with a retry hint",
    )
    parser.add_argument(
        "--max-watch-streams",
        type=int,
        default=env("DSPY_REGISTRY_MAX_WATCH_STREAMS", DEFAULT_MAX_WATCHES),
        help="WatchTargets and WatchEvents streams open at once; more are refused RESOURCE_EXHAUSTED "
        "with a retry hint",
    )
    parser.add_argument(
        "--max-concurrent-uploads",
        type=int,
        default=env("DSPY_REGISTRY_MAX_CONCURRENT_UPLOADS", DEFAULT_MAX_CONCURRENT_UPLOADS),
        help="UploadProgram calls at once; more are refused RESOURCE_EXHAUSTED with a retry hint",
    )
    parser.add_argument(
        "--send-timeout",
        type=float,
        default=env("DSPY_REGISTRY_SEND_TIMEOUT", SEND_TIMEOUT_SECONDS),
        help="seconds a stream (a watch, an artifact download) waits for a client that takes no "
        "message before it is cut with RESOURCE_EXHAUSTED",
    )
    parser.add_argument(
        "--webhook-allow",
        action="append",
        default=[os.environ["DSPY_REGISTRY_WEBHOOK_ALLOW"]]
        if os.environ.get("DSPY_REGISTRY_WEBHOOK_ALLOW")
        else None,
        metavar="CIDR[,CIDR...]",
        help="networks webhook URLs may resolve to although they are private, loopback or link-local "
        "(refused otherwise), e.g. 127.0.0.0/8; repeatable (env DSPY_REGISTRY_WEBHOOK_ALLOW)",
    )
    parser.add_argument(
        "--environments",
        "--config",
        dest="config",
        default=env(ENVIRONMENTS_VARIABLE, ""),
        help="a TOML file defining environments, their policies and the deployment defaults "
        f"(shaped like DSPy.rb's DSPy.configure block); applied at each start (env {ENVIRONMENTS_VARIABLE})",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        type=str.lower,
        default=env("DSPY_REGISTRY_LOG_LEVEL", "info"),
    )
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
    """The Config the parsed `args` ask for.

    Raises:
        ConfigError: A variable's value that cannot be used.
    """
    return Config(
        listen=_value(args.listen, str),
        database=database_url(args),
        semver_guard=GuardMode(_value(args.semver_guard, _choice(*(m.value for m in GuardMode)))),
        upload_limit=_value(args.upload_limit, _number(int)),
        grace_seconds=_value(args.grace, _number(float)),
        request_retention_seconds=_value(args.request_retention, _number(float)) * 3600,
        event_retention_seconds=_value(args.event_retention, _number(float)) * 3600,
        metrics_retention_seconds=_value(args.metrics_retention, _number(float)) * 3600,
        telemetry_flush_seconds=_value(args.telemetry_flush, _number(float)),
        auth=not _value(args.no_auth, _boolean),
        admin_token_file=_value(args.admin_token_file, str),
        tls_cert=_value(args.tls_cert, str),
        tls_key=_value(args.tls_key, str),
        tls_client_ca=_value(args.tls_client_ca, str),
        max_concurrent_streams=_value(args.max_concurrent_streams, _number(int)),
        max_concurrent_calls=_value(args.max_concurrent_calls, _number(int)),
        max_watch_streams=_value(args.max_watch_streams, _number(int)),
        max_concurrent_uploads=_value(args.max_concurrent_uploads, _number(int)),
        send_timeout_seconds=_value(args.send_timeout, _number(float)),
        webhook_allow=tuple(args.webhook_allow or ()),
        config=_value(args.config, str) or _old_environments_file(os.environ),
        log_level=_value(args.log_level, lambda level: _choice(*LOG_LEVELS)(level.lower())),
        log_format=_value(args.log_format, _choice("json", "text")),
        telemetry_exporter=_value(args.telemetry_exporter, _choice("none", "console", "otlp")),
        metrics_listen=_value(args.metrics_listen, str),
        http_listen=_value(args.http_listen, str),
        replica_name=_value(args.replica_name, str),
    )


def check_tls_files(args: argparse.Namespace) -> None:
    """Read and parse the TLS files `args` name, as the server will use them; `serve` calls it before
    anything starts (from_arguments reads no file: the manifests' test parses paths of a pod's).

    A file that cannot be used is a setting that cannot be used, as a token file is for the client's
    commands: one line naming it and why, exit 2. It was found once the store was open and the admin
    principal written, exit 1 with errno's words and no setting named; and a file that is not a PEM
    key failed as a port grpc could not bind.

    Raises:
        ConfigError: A file missing, unreadable or not PEM, or a key that is not the certificate's.
    """
    files: dict[str, str] = {}
    named: dict[str, str] = {}  # each file as its flag or variable named it, for the messages
    for field, flag in (
        ("tls_cert", "--tls-cert"),
        ("tls_key", "--tls-key"),
        ("tls_client_ca", "--tls-client-ca"),
    ):
        given = getattr(args, field)
        path = files[field] = _value(given, str)
        named[field] = f"{given.name if isinstance(given, _Variable) else flag} {path}"
        if path:
            try:
                Path(path).read_bytes()
            except OSError as err:
                raise ConfigError(f"{named[field]}: cannot be read: {err.strerror}") from None
    if bool(files["tls_cert"]) != bool(files["tls_key"]):
        raise ConfigError("--tls-cert and --tls-key go together (both or neither)")
    if files["tls_client_ca"] and not files["tls_cert"]:
        raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if files["tls_cert"]:
        try:
            # A password callable: an encrypted key fails here, where OpenSSL would ask a terminal.
            context.load_cert_chain(files["tls_cert"], files["tls_key"], password=lambda: b"")
        except ssl.SSLError as err:
            pair = f"{named['tls_cert']} and {named['tls_key']}"
            raise ConfigError(
                f"{pair}: not a PEM certificate and its unencrypted private key ({err})"
            ) from None
    if files["tls_client_ca"]:
        try:
            context.load_verify_locations(cafile=files["tls_client_ca"])
        except ssl.SSLError as err:
            raise ConfigError(f"{named['tls_client_ca']}: no PEM CA certificate in it ({err})") from None


def _old_environments_file(env: Mapping[str, str]) -> str:
    """The environments file DSPY_REGISTRY_CONFIG names, for `serve` alone (deprecated_settings warns).

    The client's config file has that name now, and a shell that exports it for the CLI runs `serve`
    too: a file with no table in it (the client's keys are all top-level) is the client's, not read.
    """
    path = env.get(OLD_ENVIRONMENTS_VARIABLE, "")
    if not path:
        return ""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return path  # the start reports what is wrong with it, as it always did
    return path if any(isinstance(value, dict) for value in data.values()) else ""


def deprecated_settings(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> list[str]:
    """A warning for each setting `args` took from a deprecated place (serve logs them once logging is
    set up)."""
    if isinstance(args.config, _Variable) or args.config or not _old_environments_file(env):
        return []
    return [
        f"{OLD_ENVIRONMENTS_VARIABLE} naming the environments file is deprecated: "
        f"use {ENVIRONMENTS_VARIABLE} (or --environments)"
    ]

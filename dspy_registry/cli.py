"""`dspy-registry`: the command line. `serve` runs the control plane; `sidecar` follows it; `migrate`
and `admin` work on the store itself; the rest (client/cli.py) are the operators' commands against a
running server."""

# Here, above the two packages, because the command is the one place that needs both: the client
# installs and imports without the server, and the server without the client.

from __future__ import annotations

import argparse
import importlib.util
import sys
from types import ModuleType
from typing import NamedTuple

from .client import cli_help, doctor, sidecar
from .client.cli import add_operator_commands, run_operator

SERVER_EXTRA = "pip install 'dspy-registry[server]'"


# The [server] extra of pyproject.toml, each distribution by a module of its own that shows it is
# installed (None: serve runs without it), so that a client-only install is told which extra it lacks;
# looking them up imports none of them. tests/e2e/test_install.py holds this to pyproject's list.
SERVER_MODULES: dict[str, str | None] = {
    "grpcio-health-checking": "grpc_health",
    "grpcio-reflection": "grpc_reflection",
    "grpcio-status": "grpc_status",
    "aiosqlite": "aiosqlite",
    "asyncpg": "asyncpg",
    "semver": "semver",
    "aiohttp": "aiohttp",
    "opentelemetry-api": "opentelemetry.trace",
    "opentelemetry-sdk": "opentelemetry.sdk.trace",  # opentelemetry.sdk is a namespace: a folder, not a file
    "opentelemetry-instrumentation-grpc": "opentelemetry.instrumentation.grpc",
    "opentelemetry-exporter-prometheus": "opentelemetry.exporter.prometheus",
    "prometheus-client": "prometheus_client",
    "uvloop": None,  # not on Windows (the extra's marker): serve falls back to asyncio's own loop
}

# What each command of the server's says in `--help`, written here so that a client-only install,
# where the server's modules cannot be imported, lists the same commands.
SERVER_HELP = {
    "serve": "run the control plane server (the [server] extra)",
    "migrate": "apply the database's schema migrations and exit (--check: only say whether any are pending)",
    "admin": "recover access on the database itself (no server needed; the [server] extra)",
}


class Server(NamedTuple):
    serve: ModuleType
    config: ModuleType
    migrate: ModuleType
    admin: ModuleType


def _server() -> Server | str:
    """The server's modules the commands need; or, in a client-only install (`pip install
    dspy-registry` leaves the [server] extra out), the name of a module that is missing."""
    for name in filter(None, SERVER_MODULES.values()):
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except ModuleNotFoundError:  # a parent package (opentelemetry) is missing
            return name
    from .server import admin_commands, config, migrate, serve

    return Server(serve, config, migrate, admin_commands)


def build_parser(server: Server | str | None = None) -> argparse.ArgumentParser:
    """The whole command line: every command, each `--help` with its description and example
    (tests/deploy checks the manifests' flags against it). Without the server's modules, `serve`,
    `migrate` and `admin` take anything and say which extra to install."""
    server = _server() if server is None else server
    access_help = server.serve.ACCESS_HELP if isinstance(server, Server) else None
    parser = argparse.ArgumentParser(
        prog="dspy-registry",
        description=__doc__,
        epilog=access_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {cli_help.version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    if isinstance(server, Server):
        serve_parser = commands.add_parser(
            "serve",
            help=SERVER_HELP["serve"],
            epilog=access_help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        server.config.add_serve_arguments(serve_parser)
        migrate_parser = commands.add_parser(
            "migrate",
            help=SERVER_HELP["migrate"],
            description=server.migrate.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        server.migrate.add_migrate_arguments(migrate_parser)
        server.admin.add_admin_arguments(commands)
    else:
        for name, help in SERVER_HELP.items():
            missing = commands.add_parser(name, help=help, add_help=False)
            missing.add_argument("ignored", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    sidecar_parser = commands.add_parser(
        "sidecar",
        help="follow programs' targets and keep their artifacts in a directory",
        description=sidecar.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sidecar.add_sidecar_arguments(sidecar_parser)
    completion_parser = commands.add_parser(
        "completion",
        help="print the shell completion script for bash, zsh or fish",
        description=cli_help.COMPLETION_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    completion_parser.add_argument("shell", choices=cli_help.SHELLS)
    add_operator_commands(parser, commands)
    doctor.add_doctor_command(commands)
    cli_help.document(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    server = _server()
    parser = build_parser(server)
    args = parser.parse_args(argv)
    if args.command == "completion":
        print(cli_help.completion(parser, args.shell))
        return 0
    if args.command == "doctor":
        return doctor.run(args)
    if getattr(args, "operator", None) is not None:
        return run_operator(args)
    if args.command == "sidecar":
        return sidecar.main(args)
    if not isinstance(server, Server):  # serve, migrate or admin, in a client-only install
        print(
            f"dspy-registry {args.command}: the server is not installed ({server} is missing): {SERVER_EXTRA}",
            file=sys.stderr,
        )
        return 2
    if args.command == "migrate":
        code: int = server.migrate.run(args)
        return code
    if args.command == "admin":
        return int(args.admin(args))
    code = server.serve.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

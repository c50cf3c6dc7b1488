"""`dspy-registry`: the command line. `serve` runs the control plane; `sidecar` follows it; `admin`
works on the store itself; the rest (client/cli.py) are the operators' commands against a running
server."""

# Here, above the two packages, because the command is the one place that needs both: the client
# installs and imports without the server, and the server without the client.

from __future__ import annotations

import argparse
import importlib.util
import sys
from types import ModuleType
from typing import NamedTuple

from .client import sidecar
from .client.cli import add_operator_commands, run_operator

SERVER_EXTRA = "pip install 'dspy-registry[server]'"


# The [server] extra's top-level modules (pyproject.toml); looking them up imports none of them.
SERVER_MODULES = (
    "grpc_health",
    "grpc_reflection",
    "grpc_status",
    "aiosqlite",
    "asyncpg",
    "semver",
    "aiohttp",
    "opentelemetry.sdk",
    "opentelemetry.instrumentation.grpc",
    "opentelemetry.exporter.prometheus",
    "prometheus_client",
)


class Server(NamedTuple):
    serve: ModuleType
    config: ModuleType
    admin: ModuleType


def _server() -> Server | str:
    """The server's modules the command needs; or, in a client-only install (`pip install
    dspy-registry` leaves the [server] extra out), the name of a module that is missing."""
    for name in SERVER_MODULES:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except ModuleNotFoundError:  # a parent package (opentelemetry) is missing
            return name
    from .server import admin_commands, config, serve

    return Server(serve, config, admin_commands)


def build_parser(server: Server | str | None = None) -> argparse.ArgumentParser:
    """Every command's arguments (tests/deploy checks the manifests' flags against this parser).
    Without the server's modules, `serve` and `admin` take anything and say which extra to install."""
    server = _server() if server is None else server
    installed = isinstance(server, Server)
    access_help = server.serve.ACCESS_HELP if isinstance(server, Server) else None
    parser = argparse.ArgumentParser(
        prog="dspy-registry",
        description=__doc__,
        epilog=access_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser(
        "serve",
        help="run the control plane server (the [server] extra)",
        epilog=access_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=installed,
    )
    if isinstance(server, Server):
        server.config.add_serve_arguments(serve_parser)
    else:
        serve_parser.add_argument("ignored", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    sidecar_parser = commands.add_parser(
        "sidecar",
        help="follow programs' targets and keep their artifacts in a directory",
        description=sidecar.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sidecar.add_sidecar_arguments(sidecar_parser)
    add_operator_commands(parser, commands)
    if isinstance(server, Server):
        server.admin.add_admin_arguments(commands)
    else:
        admin_parser = commands.add_parser(
            "admin", help="recover access on the database itself (the [server] extra)", add_help=False
        )
        admin_parser.add_argument("ignored", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    server = _server()
    args = build_parser(server).parse_args(argv)
    if getattr(args, "operator", None) is not None:
        return run_operator(args)
    if args.command == "sidecar":
        return sidecar.main(args)
    if not isinstance(server, Server):  # serve or admin, in a client-only install
        print(
            f"dspy-registry {args.command}: the server is not installed ({server} is missing): {SERVER_EXTRA}",
            file=sys.stderr,
        )
        return 2
    if args.command == "admin":
        return int(args.admin(args))
    code: int = server.serve.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

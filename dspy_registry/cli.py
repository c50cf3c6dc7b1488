"""`dspy-registry`: the command line. `serve` runs the control plane; `sidecar` follows it; the rest
(client/cli.py) are the operators' commands against a running server."""

# Here, above the two packages, because the command is the one place that needs both: the client
# installs and imports without the server, and the server without the client.

from __future__ import annotations

import argparse
import logging
import sys

from .client import sidecar
from .client.cli import add_operator_commands, run_operator
from .server import serve
from .server.admin_commands import add_admin_arguments
from .server.config import add_serve_arguments

log = logging.getLogger("dspy_registry.server")


def build_parser() -> argparse.ArgumentParser:
    """Every command's arguments (tests/deploy checks the manifests' flags against this parser)."""
    parser = argparse.ArgumentParser(
        prog="dspy-registry",
        description=__doc__,
        epilog=serve.ACCESS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser(
        "serve",
        help="run the control plane server",
        epilog=serve.ACCESS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_serve_arguments(serve_parser)
    sidecar_parser = commands.add_parser(
        "sidecar",
        help="follow programs' targets and keep their artifacts in a directory",
        description=sidecar.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sidecar.add_sidecar_arguments(sidecar_parser)
    add_operator_commands(parser, commands)
    add_admin_arguments(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "admin", None) is not None:
        return int(args.admin(args))
    if getattr(args, "operator", None) is not None:
        return run_operator(args)
    if args.command == "sidecar":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
        try:
            serve.run_loop(sidecar.run(args))
        except OSError as exc:
            log.error("cannot start: %s", exc)
            return 1
    if args.command == "serve":
        return serve.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`dspy-registry`: the command line. `serve` runs the control plane; `sidecar` follows it; the rest
(client/cli.py) are the operators' commands against a running server."""

# Here, above the two packages, because the command is the one place that needs both: the client
# installs and imports without the server, and the server without the client.

from __future__ import annotations

import argparse
import logging
import sys

from .client import cli_help, doctor, sidecar
from .client.cli import add_operator_commands, run_operator
from .server import migrate, serve
from .server.config import add_serve_arguments

log = logging.getLogger("dspy_registry.server")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every command, each `--help` with its description and example."""
    parser = argparse.ArgumentParser(
        prog="dspy-registry",
        description=__doc__,
        epilog=serve.ACCESS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {cli_help.version()}")
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
    migrate_parser = commands.add_parser(
        "migrate",
        help="apply the database's schema migrations and exit (--check: only say whether any are pending)",
        description=migrate.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    migrate.add_migrate_arguments(migrate_parser)
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
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "completion":
        print(cli_help.completion(parser, args.shell))
        return 0
    if args.command == "migrate":
        return migrate.run(args)
    if args.command == "doctor":
        return doctor.run(args)
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

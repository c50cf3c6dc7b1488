"""`dspy-registry admin …`: commands on the store itself, with no server and no token.

`reset-token` is how access comes back when the admin token is lost: whoever can reach the database
(the same DSN the server reads) is trusted already. `generate-token` makes a token for a Secret that
the server's first start then adopts (`--admin-token-file`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .config import add_database_argument, database_url
from .domain import access
from .errors import RegistryError

if TYPE_CHECKING:
    from .usecases.admin import Reset

EXIT_FAILED = 1
EXIT_USAGE = 2


def add_admin_arguments(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `admin` command and its subcommands (dspy_registry/cli.py calls this)."""
    parser = commands.add_parser("admin", help="recover access on the database itself (no server needed)")
    parser.set_defaults(admin=run)
    subcommands = parser.add_subparsers(dest="admin_command", required=True)
    reset = subcommands.add_parser(
        "reset-token",
        help="revoke the admin principal's tokens and issue a new one (audited)",
        description="Revoke every token of the `admin` principal, make sure it is enabled and holds "
        "admin on *, and issue a new token, in one audited transaction on the database. Running "
        "servers honour it within a second. The new token is printed, or written with --token-file.",
    )
    add_database_argument(reset)
    reset.add_argument(
        "--token-file",
        type=Path,
        help="write the new token to this file (mode 0600) instead of printing it",
    )
    subcommands.add_parser(
        "generate-token",
        help="print a new admin token to put in a Secret (--admin-token-file adopts it; nothing is stored)",
    )


def run(args: argparse.Namespace) -> int:
    if args.admin_command == "generate-token":
        print(access.new_bearer_token())
        return 0
    try:
        reset = asyncio.run(_reset(database_url(args)))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ValueError) else EXIT_FAILED
    except RegistryError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    token = access.bearer_token(reset.issued.token.id, reset.issued.secret)
    where = "printed below"
    if args.token_file is not None:
        from .usecases.admin import write_secret

        write_secret(args.token_file, token)
        where = f"in {args.token_file} (mode 0600)"
    print(
        f"admin: {len(reset.revoked)} token(s) revoked; the new one, "
        f"{access.secret_prefix(reset.issued.token.id)}…, is {where}",
        file=sys.stderr,
    )
    if args.token_file is None:
        print(token)
    return 0


async def _reset(database: str) -> Reset:
    # Imported here: the store drivers are of no use to the other commands of the process.
    from .domain.clock import SYSTEM_CLOCK
    from .store.backends import open_store
    from .store.sqlite import path_from_url
    from .usecases.admin import reset_token

    if database.startswith("sqlite://") and not Path(path_from_url(database)).is_file():
        # Opening it would create an empty store: a mistyped path must not look like a success.
        raise FileNotFoundError(f"no database at {database}")
    store = open_store(database)
    await store.open()
    try:
        return await reset_token(store, SYSTEM_CLOCK)
    finally:
        await store.close()

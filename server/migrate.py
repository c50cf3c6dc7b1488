"""`dspy-registry migrate`: the database's schema brought to this release's, with no server started.

Every server migrates its database as it starts; this command does it ahead of a rolling upgrade,
so that no new replica's start waits on it, or only says with `--check` whether any are pending.
Replicas of the old release that are running keep serving (migrations only add tables, columns and
indexes); one that restarts afterwards refuses the newer schema, as this command does, naming both
schema versions: a release that does not know a table must not write beside it.

Exit codes: 0 the schema is this release's (after applying, or already); 1 the database could not
be reached or opened, or its schema is newer than this release's; 2 a URL of no backend's scheme;
3 `--check` found migrations pending.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from .config import ConfigError, add_database_argument, database_url
from .errors import RegistryError
from .store import migrations
from .store.backends import applied_migrations, open_store

EXIT_FAILED = 1
EXIT_USAGE = 2  # a setting that cannot be used, as argparse's own usage errors
EXIT_PENDING = 3


def add_migrate_arguments(parser: argparse.ArgumentParser) -> None:
    add_database_argument(parser)
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"apply nothing: list the pending migrations and exit {EXIT_PENDING} when there are any, 0 when none",
    )


async def _migrate(url: str, check: bool) -> int:
    todo = migrations.pending(await applied_migrations(url))
    for migration in todo:
        print(f"{'pending' if check else 'applying'} {migration.number}: {migration.name}")
    if check:
        print(f"{len(todo)} pending; this release's schema is version {migrations.latest()}")
        return EXIT_PENDING if todo else 0
    if todo:
        # The store applies them as it opens (under the same lock a starting replica takes), then closes.
        store = open_store(url)
        try:
            await store.open()
        finally:
            await store.close()
    print(f"the schema is at version {migrations.latest()}")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        url = database_url(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(_migrate(url, args.check))
    except (OSError, ValueError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED

"""`dspy-registry serve`: the control plane in this process, until SIGTERM or SIGINT.

The command line itself is dspy_registry/cli.py, above the server and the client: it adds the options
of config.py to its `serve` command and hands the parsed arguments to `run`.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from . import logs
from .config import Config, ConfigError, check_tls_files, deprecated_settings, from_arguments
from .errors import RegistryError

ACCESS_HELP = """\
access control:
  Every RPC but health and reflection needs `authorization: Bearer <token>`.
  principals  users or service accounts (AccessService/CreatePrincipal), each with
              a team; a disabled principal's calls fail with UNAUTHENTICATED.
  grants      an action -- read, register, deploy, rollback, approve, admin -- on a
              program (or signature) name or a glob such as sentiment_* or *
              (GrantPermission); admin implies the rest. No grant, no access:
              PERMISSION_DENIED, whether the program exists or not.
  tokens      random secrets shown once by CreateToken, stored as hashes,
              optionally expiring, revocable (RevokeToken). With --tls-client-ca a
              client certificate whose subject a principal lists also identifies it.
  The first start of an empty store creates the `admin` principal (admin on *)
  with the token --admin-token-file holds (a mounted Secret), or else writes a
  new one there (mode 0600); `dspy-registry admin reset-token` replaces a lost one:
    grpcurl -plaintext -H "authorization: Bearer $(cat .dspy-registry/admin.token)" \\
      localhost:50051 dspy_registry.v1.AccessService/WhoAmI
  Every mutation and every refused call is in the audit log (ListAuditEvents).
"""

log = logging.getLogger("dspy_registry.server")


# glibc's mallopt parameters (malloc.h).
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def tune_malloc() -> None:
    """glibc's malloc, set for a server that now and then takes a message of megabytes.

    By default glibc raises its mmap threshold each time it frees a large mapped block, so
    that later megabyte requests come from the heap and leave it fragmented, and it gives
    each busy thread (grpc's, the SQLite readers') an arena of its own that keeps what it
    once held. With a fixed threshold and two arenas, 310 000 hostile requests grew the
    server 95 → 103 MiB, against 124 → 141 MiB with the defaults (the fuzz test of
    `make soak`). A MALLOC_* variable in the environment says otherwise and is kept.
    """
    if any(name.startswith("MALLOC_") for name in os.environ):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 128 << 10)
        libc.mallopt(_M_ARENA_MAX, 2)
    except (OSError, AttributeError):  # not glibc (musl, macOS): its own defaults stand
        pass


def tune_collector() -> None:
    """Once started: everything allocated so far lives as long as the process, so it is kept out of
    the cyclic collector's way, and the young generation is collected less often (a watch stream
    holds a handful of objects; at 10 000 streams the default thresholds' full collections walked
    them all again and again)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


async def serve(config: Config) -> None:
    # Imported here: the server (aiohttp, the store drivers, telemetry) is 0.65 s of imports that
    # the operator commands, one process per command, have no use for.
    from .app import App

    tune_malloc()  # before the threads that would each take an arena start
    app = App(config)
    try:
        await app.start()
    except BaseException:
        # Close what started (the store's thread, the metrics port) so that the process can exit.
        await app.stop(grace=0)
        raise
    tune_collector()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"grace_seconds": config.grace_seconds})
    try:
        await app.stop()
    except BaseException:
        # grpc's threads would keep the process alive: whatever failed, the server stops.
        log.exception("stopping failed; the gRPC server stops at once")
        await app.server.stop(0)
        raise


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop where there is one (the server's and the sidecar's event loop)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        asyncio.run(main)
    else:
        uvloop.run(main)


def run(args: argparse.Namespace) -> int:
    """`serve` with the parsed `args`: 0 once stopped by a signal, 1 when the server cannot start, 2 on a
    bad setting in a variable or a TLS file that cannot be used."""
    try:
        config = from_arguments(args)
        check_tls_files(args)
    except ConfigError as exc:
        print(f"dspy-registry serve: error: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.log_level, config.log_format)
    for warning in deprecated_settings(args):
        log.warning(warning)
    try:
        run_loop(serve(config))
    except (OSError, ValueError, RegistryError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0

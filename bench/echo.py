"""A bare grpc.aio echo server: `/bench.Echo/Echo` returns the request bytes.

The fan-out floor too: `/bench.Echo/Watch` streams, to each caller, a snapshot and then every
message `/bench.Echo/Publish` is given, shaped like a WatchTargetsResponse (the next revision, the
given bytes as its `changes`), so that bench.watch_client reads it as it reads the registry's;
Publish answers with the revision (field 1). Each stream waits in the registry's own mailbox and
sends with context.write, as the registry's watches do, and a message is handed to the mailboxes
DELIVERIES_PER_TURN at a time per turn of the event loop, as the registry's hub hands a change out;
nothing else: no store, no authorization, no matching, no per-stream encoding (one bytes object
goes to every stream). Handing it to every mailbox in one turn, as this did before, woke all the
streams at once: at 10 000 their 10 000 sends ran back to back without the loop taking a
completion in between, which made this "ceiling" slower than the registry (2.2 s against 1.3 s
to the last watcher in the run of docs/benchmarks.md before this change). It runs with the
registry's process settings too (server/serve.py `tune_malloc`, `tune_collector`): without the
collector's thresholds, its full collections over 10 000 streams' objects made it spend more CPU
per delivery than the registry (117 against 83 µs at 10 000 streams; with them 55–58 against
69–75 µs, load average 25).

Run as `python -m bench.echo --listen HOST:PORT`; stops on SIGTERM/SIGINT.
It serves grpc.health.v1 too, so the driver waits for it like for the registry.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dspy_registry.server.generic_handlers import GenericOnly
from dspy_registry.server.serve import tune_collector, tune_malloc
from dspy_registry.server.watch import DELIVERIES_PER_TURN, QUEUE_SIZE, Mailbox

from . import wire
from .common import run

IDLE_SECONDS = 5.0  # a wait's timer, as a registry watch waits (its progress interval)


async def _echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return request


class _Fanout:
    SNAPSHOT = b"\x12\x00"  # WatchTargetsResponse{snapshot: {}} at revision 0

    def __init__(self) -> None:
        self.mailboxes: set[Mailbox] = set()
        self.revision = 0

    async def watch(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        # The registry's own per-stream mailbox (server/watch.py) and its write primitive
        # (context.write, as server/api/flow.py's pump): what is left is the transport.
        mailbox = Mailbox(QUEUE_SIZE)
        self.mailboxes.add(mailbox)
        write = context.write
        try:
            await write(self.SNAPSHOT)
            while True:
                if mailbox.empty():  # waits on the mailbox's future, as the registry's watch does
                    await mailbox.wait(IDLE_SECONDS)
                    if mailbox.empty():
                        continue
                await write(mailbox.get_nowait()[1])
        finally:
            self.mailboxes.discard(mailbox)
            mailbox.close()

    async def watch_yielding(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """`watch` with grpc.aio's other send primitive: the handler yields, grpc sends (`--send yield`)."""
        mailbox = Mailbox(QUEUE_SIZE)
        self.mailboxes.add(mailbox)
        try:
            yield self.SNAPSHOT
            while True:
                got = await mailbox.get(IDLE_SECONDS)
                if got is not None:
                    yield got[1]
        finally:
            self.mailboxes.discard(mailbox)
            mailbox.close()

    async def publish(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        self.revision += 1
        revision = wire.varint_field(1, self.revision)
        message = (self.revision, revision + wire.bytes_field(wire.WATCH_CHANGES, request))
        self._hand_out(message, list(self.mailboxes))
        return revision

    def _hand_out(self, message: tuple[int, bytes], mailboxes: list[Mailbox]) -> None:
        # No backlog kept in revision order, as the hub keeps: the benchmark publishes the next
        # message only once every stream has had this one.
        for _ in range(min(DELIVERIES_PER_TURN, len(mailboxes))):
            mailboxes.pop().put_nowait(message)
        if mailboxes:
            asyncio.get_running_loop().call_soon(self._hand_out, message, mailboxes)


async def serve(listen: str, send: str = "write") -> None:
    # The registry's limits on pending calls (server/app.py server_options): grpc's defaults would
    # cancel part of the burst of watch streams opening at once.
    options = [
        ("grpc.so_reuseport", 0),
        ("grpc.server.max_pending_requests", 20_000),
        ("grpc.server.max_pending_requests_hard_limit", 30_000),
    ]
    tune_malloc()  # the registry's process settings (server/serve.py), so that they are not the difference
    server = grpc.aio.server(options=options)
    fanout = _Fanout()
    # No serializers: the handler sees and returns the raw bytes.
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(_echo),
            "Watch": grpc.unary_stream_rpc_method_handler(
                fanout.watch if send == "write" else fanout.watch_yielding
            ),
            "Publish": grpc.unary_unary_rpc_method_handler(fanout.publish),
        },
    )
    server.add_generic_rpc_handlers([handler])
    checker = health.aio.HealthServicer()  # type: ignore[attr-defined]
    # Served as a generic handler, as the registry serves it (server/generic_handlers.py): a
    # method registered the generated way makes grpc.aio wait on one more future for every call it
    # takes, and the floor must not pay what the registry no longer does.
    health_pb2_grpc.add_HealthServicer_to_server(checker, GenericOnly(server))
    if server.add_insecure_port(listen) == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    tune_collector()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.echo", description=__doc__)
    parser.add_argument("--listen", required=True)
    parser.add_argument(
        "--send",
        choices=["write", "yield"],
        default="write",
        help="Watch sends with context.write (the registry's way) or yields to grpc",
    )
    args = parser.parse_args()
    run(serve(args.listen, args.send))


if __name__ == "__main__":
    main()

"""`python -m bench.watch_client`: hold N watch streams and say when each revision reached all of them.

One load generator for every server the fan-out is measured on, so that the clients' own cost
(on the same two shared cores as the server) is the same for each:

  registry  dspy-registry's WatchTargets on program `p` in staging (server-streaming)
  etcd      etcd's Watch on one key (bidirectional; the request side stays open, as etcd
            cancels a watch whose client stops sending)
  echo      the bare grpc.aio server's /bench.Echo/Watch (bench/echo.py), the ceiling

Every message is read as raw bytes (no protobuf decoding), stamped once with the clock, and
only its revision is read from it (bench/wire.py). Prints `ready` once every stream is
established (registry/echo: its snapshot; etcd: its `created` reply; a stream refused with
UNAVAILABLE or RESOURCE_EXHAUSTED before that is opened again a moment later), then for each revision
every stream has received `rev <revision> <time_ns of the last arrival>`. Stops when stdin closes.

`--target` may name several addresses (replicas of one registry, comma-separated): the streams
are dealt over them in turn, and the `--channels` connections too (rounded up to as many per
address), so that the clients hold about as many connections whatever the number of replicas.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from dspy_registry.v1 import deployment_pb2 as dpb

from . import wire
from .common import run
from .loadgen import bearer_metadata

WATCH_METHOD = "/dspy_registry.v1.DeploymentService/WatchTargets"
ECHO_WATCH_METHOD = "/bench.Echo/Watch"
ETCD_KEY = b"bench/p/staging"
PEERS = ("registry", "etcd", "echo")
OPEN_ATTEMPTS = 10  # tries to open one stream
RETRIED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # what read() returns once the stream ends

# A stream: opened on a channel, yields (revision or None when the message is only the stream's
# confirmation, arrival time in ns) per message.
Stream = Callable[[grpc.aio.Channel], AsyncIterator[tuple[int | None, int]]]


def _watch_targets(method: str, metadata: tuple[tuple[str, str], ...] | None) -> Stream:
    request = dpb.WatchTargetsRequest()
    request.selectors.add(program="p", environment="staging")
    payload = request.SerializeToString()

    async def stream(channel: grpc.aio.Channel) -> AsyncIterator[tuple[int | None, int]]:
        call = channel.unary_stream(method, None, None)(payload, metadata=metadata)
        async for raw in call:
            now = time.time_ns()
            revision, kind = wire.watch_targets_kind(raw)
            if kind == wire.WATCH_SNAPSHOT:
                yield None, now
            elif kind == wire.WATCH_CHANGES:
                yield revision, now
            # progress bookmarks carry no change

    return stream


def _etcd() -> Stream:
    create = wire.etcd_watch_create(ETCD_KEY)

    async def stream(channel: grpc.aio.Channel) -> AsyncIterator[tuple[int | None, int]]:
        method: Any = channel.stream_stream(wire.ETCD_WATCH_METHOD, None, None)
        call = method()  # no request iterator: the requests are written
        await call.write(create)  # and no done_writing: etcd ends the watch when the client does
        while True:
            raw = await call.read()
            if raw is _EOF:
                return
            now = time.time_ns()
            yield (None if wire.etcd_created(raw) else wire.etcd_revision(raw)), now

    return stream


def stream_for(peer: str, token_file: str | None) -> Stream:
    if peer == "registry":
        return _watch_targets(WATCH_METHOD, bearer_metadata(token_file))
    if peer == "echo":
        return _watch_targets(ECHO_WATCH_METHOD, None)
    if peer == "etcd":
        return _etcd()
    raise ValueError(f"unknown peer {peer!r}")


async def _main(args: argparse.Namespace) -> None:
    stream = stream_for(args.peer, args.token_file)
    targets = args.target.split(",")
    per_target = -(-args.channels // len(targets))
    by_target = [
        [
            grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(per_target)
        ]
        for target in targets
    ]
    channels = [channel for group in by_target for channel in group]
    counts: dict[int, int] = defaultdict(int)
    established = 0
    all_ready = asyncio.Event()

    async def hold(i: int) -> None:
        nonlocal established
        # A little jitter, as real sidecars would add when they all (re)connect at once.
        await asyncio.sleep(random.uniform(0, args.open_seconds))
        group = by_target[i % len(by_target)]  # stream i on address i mod N, on its channels in turn
        channel = group[i // len(by_target) % len(group)]
        for attempt in range(OPEN_ATTEMPTS):
            opened = False
            try:
                async for revision, at in stream(channel):
                    if revision is None:
                        opened = True
                        established += 1
                        if established == args.streams:
                            all_ready.set()
                        continue
                    counts[revision] += 1
                    if counts[revision] == args.streams:
                        sys.stdout.write(f"rev {revision} {at}\n")
                        sys.stdout.flush()
                return
            except grpc.aio.AioRpcError as exc:
                # A server that sheds part of an opening burst says UNAVAILABLE or RESOURCE_EXHAUSTED:
                # retried after a while, as a sidecar would. Once open, a stream that ends fails the run.
                if opened or exc.code() not in RETRIED or attempt == OPEN_ATTEMPTS - 1:
                    raise
            await asyncio.sleep(random.uniform(0.5, 2.0))

    tasks = [asyncio.create_task(hold(i)) for i in range(args.streams)]
    done: asyncio.Future[list[None]] = asyncio.ensure_future(asyncio.gather(*tasks))
    ready: asyncio.Future[bool] = asyncio.ensure_future(all_ready.wait())
    either: list[asyncio.Future[Any]] = [done, ready]
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if done.done():
        done.result()  # a stream failed (or ended) before all were open: show why
        raise SystemExit("every stream ended before all were established")
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for task in tasks:
        task.cancel()
    await asyncio.gather(done, return_exceptions=True)
    for channel in channels:
        await channel.close(None)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.watch_client", description=__doc__)
    parser.add_argument("--peer", choices=PEERS, default="registry")
    parser.add_argument("--target", required=True, help="an address, or several comma-separated")
    parser.add_argument("--token-file")
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--channels", type=int, default=8, help="connections (split over the addresses)")
    parser.add_argument("--open-seconds", type=float, default=2.0, help="spread the opens over this long")
    run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()

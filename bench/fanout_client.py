"""`python -m bench.fanout_client`: hold N WatchTargets streams and say when each revision reached all.

Prints `ready` once every stream has its snapshot, then, for each revision
every stream has received, `rev <revision> <time_ns of the last arrival>`.
Stops when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import defaultdict
from typing import Any

import grpc

from dspy_registry.v1 import deployment_pb2 as dpb

from .common import run
from .loadgen import bearer_metadata

WATCH_METHOD = "/dspy_registry.v1.DeploymentService/WatchTargets"


async def _main(args: argparse.Namespace) -> None:
    metadata = bearer_metadata(args.token_file)
    channels = [
        grpc.aio.insecure_channel(args.target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(args.channels)
    ]
    request = dpb.WatchTargetsRequest()
    request.selectors.add(program="p", environment="staging")
    payload = request.SerializeToString()
    counts: dict[int, int] = defaultdict(int)
    snapshots = 0
    all_ready = asyncio.Event()

    async def hold(i: int) -> None:
        nonlocal snapshots
        # A little jitter, as real sidecars would add when they all (re)connect at once.
        await asyncio.sleep(random.uniform(0, args.open_seconds))
        call = channels[i % len(channels)].unary_stream(
            WATCH_METHOD, request_serializer=None, response_deserializer=dpb.WatchTargetsResponse.FromString
        )(payload, metadata=metadata)
        async for message in call:
            kind = message.WhichOneof("kind")
            if kind == "snapshot":
                snapshots += 1
                if snapshots == args.streams:
                    all_ready.set()
            elif kind == "changes":
                counts[message.revision] += 1
                if counts[message.revision] == args.streams:
                    sys.stdout.write(f"rev {message.revision} {time.time_ns()}\n")
                    sys.stdout.flush()

    tasks = [asyncio.create_task(hold(i)) for i in range(args.streams)]
    done: asyncio.Future[list[None]] = asyncio.ensure_future(asyncio.gather(*tasks))
    ready: asyncio.Future[bool] = asyncio.ensure_future(all_ready.wait())
    either: list[asyncio.Future[Any]] = [done, ready]
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if done.done():
        done.result()  # a stream failed before all were open: show why
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for task in tasks:
        task.cancel()
    await asyncio.gather(done, return_exceptions=True)
    for channel in channels:
        await channel.close(None)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout_client")
    parser.add_argument("--target", required=True)
    parser.add_argument("--token-file")
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--open-seconds", type=float, default=2.0, help="spread the opens over this long")
    run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()

"""The load generator: keeps N unary calls in flight for a fixed time, prints one JSON line.

Run as `python -m bench.loadgen --target HOST:PORT --workload echo|get|get_env|register|deploy|status
--concurrency N --seconds S [--token-file PATH]`. Each of the N workers issues one call at a time
(so exactly N are in flight) over one of `--channels` channels (separate TCP
connections), first for `--warmup` seconds (not counted), then for the measured
window. Requests and responses travel as raw bytes so the client spends as
little CPU as possible deserializing; the echo ceiling and the registry reads
are measured with the very same code path.

With `--token-file PATH` every call carries the metadata
`authorization: Bearer <the file's contents>` (built once, sent per call);
without it calls carry no metadata (the echo server, or a registry started
with --no-auth).

Workloads:
  echo      `/bench.Echo/Echo` with the serialized GetProgramVersion request.
  get       GetProgramVersion(name="programs/p/versions/1.2.0").
  get_env   GetProgramVersion(name="programs/p", environment="development"): the version served.
  register  RegisterProgram of a new version 1.0.N with a distinct 10 KB artifact.
  deploy    CreateDeployment(program="p", environment="staging", strategy REPLACE), the
            version alternating 1.0.0, 1.1.0, 1.0.0, ... call by call (a counter shared by
            every worker), so each call moves the stable version.
  status    GetDeploymentStatus(program="p", environment="staging").
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from . import fixtures
from .common import (
    DEPLOY_METHOD,
    ECHO_METHOD,
    GET_METHOD,
    REGISTER_METHOD,
    STATUS_METHOD,
    emit,
    has_uvloop,
    percentile,
    run,
)

# Given a channel, make a function that performs one call and returns when it is done.
CallFactory = Callable[[grpc.aio.Channel], Callable[[], Awaitable[Any]]]

# What every call sends as metadata; None sends none.
Metadata = tuple[tuple[str, str], ...] | None

CALL_TIMEOUT_S = 30.0


@dataclass
class Tally:
    latencies_ns: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


def bearer_metadata(token_file: str | None) -> Metadata:
    """The metadata tuple every call sends: the bearer token read from `token_file`, if any."""
    if token_file is None:
        return None
    with open(token_file, encoding="utf-8") as f:
        token = f.read().strip()
    if not token:
        raise SystemExit(f"{token_file} holds no token")
    return (("authorization", f"Bearer {token}"),)


def _fixed_request(method: str, payload: bytes, metadata: Metadata) -> CallFactory:
    def factory(channel: grpc.aio.Channel) -> Callable[[], Awaitable[Any]]:
        call = channel.unary_unary(method, None, None)  # no serializers: bytes in, bytes out
        return lambda: call(payload, timeout=CALL_TIMEOUT_S, metadata=metadata)

    return factory


def _registrations(metadata: Metadata) -> CallFactory:
    counter = itertools.count()  # shared by every worker: each call a new version

    def factory(channel: grpc.aio.Channel) -> Callable[[], Awaitable[Any]]:
        call = channel.unary_unary(REGISTER_METHOD, None, None)

        def one() -> Awaitable[Any]:
            n = next(counter)
            request = fixtures.register_request(f"1.0.{n}", n)
            return call(request.SerializeToString(), timeout=CALL_TIMEOUT_S, metadata=metadata)

        return one

    return factory


def _deployments(metadata: Metadata) -> CallFactory:
    payloads = [fixtures.deploy_request(v).SerializeToString() for v in fixtures.DEPLOY_VERSIONS]
    counter = itertools.count()  # shared by every worker: the version alternates call by call

    def factory(channel: grpc.aio.Channel) -> Callable[[], Awaitable[Any]]:
        call = channel.unary_unary(DEPLOY_METHOD, None, None)

        def one() -> Awaitable[Any]:
            payload = payloads[next(counter) % len(payloads)]
            return call(payload, timeout=CALL_TIMEOUT_S, metadata=metadata)

        return one

    return factory


WORKLOADS = ("echo", "get", "get_env", "register", "deploy", "status")


def workload(name: str, metadata: Metadata = None) -> CallFactory:
    payload = fixtures.get_request().SerializeToString()
    if name == "echo":
        return _fixed_request(ECHO_METHOD, payload, metadata)
    if name == "get":
        return _fixed_request(GET_METHOD, payload, metadata)
    if name == "get_env":
        return _fixed_request(GET_METHOD, fixtures.get_by_environment_request().SerializeToString(), metadata)
    if name == "register":
        return _registrations(metadata)
    if name == "deploy":
        return _deployments(metadata)
    if name == "status":
        return _fixed_request(STATUS_METHOD, fixtures.status_request().SerializeToString(), metadata)
    raise ValueError(f"unknown workload {name!r}")


async def _worker(call: Callable[[], Awaitable[Any]], deadline_ns: int, tally: Tally) -> None:
    clock = time.perf_counter_ns
    while (start := clock()) < deadline_ns:
        try:
            await call()
        except grpc.aio.AioRpcError as exc:
            tally.errors[exc.code().name] += 1
        tally.latencies_ns.append(clock() - start)


async def _window(calls: list[Callable[[], Awaitable[Any]]], seconds: float) -> tuple[Tally, float]:
    """Run every worker until `seconds` pass; return the tally and the wall time."""
    tally = Tally()
    start = time.perf_counter_ns()
    deadline = start + int(seconds * 1e9)
    await asyncio.gather(*(_worker(call, deadline, tally) for call in calls))
    return tally, (time.perf_counter_ns() - start) / 1e9


async def measure(
    target: str,
    name: str,
    concurrency: int,
    seconds: float,
    warmup: float,
    channels: int,
    metadata: Metadata = None,
) -> dict[str, Any]:
    factory = workload(name, metadata)
    # A local subchannel pool per channel: separate connections, not one shared.
    opened = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channels)
    ]
    try:
        for channel in opened:
            await asyncio.wait_for(channel.channel_ready(), 10.0)
        per_channel = [factory(channel) for channel in opened]
        calls = [per_channel[i % channels] for i in range(concurrency)]
        warm = (await _window(calls, warmup))[0] if warmup > 0 else Tally()
        tally, elapsed = await _window(calls, seconds)
    finally:
        for channel in opened:
            await channel.close(None)
    latencies_ms = sorted(ns / 1e6 for ns in tally.latencies_ns)
    errors = sum(tally.errors.values())
    ok = len(latencies_ms) - errors
    return {
        "calls": len(latencies_ms),
        "warmup_calls": len(warm.latencies_ns),  # for figures per call over the whole run
        "seconds": round(elapsed, 3),
        "throughput_per_s": round(ok / elapsed, 1),
        "p50_ms": round(percentile(latencies_ms, 0.50), 3),
        "p99_ms": round(percentile(latencies_ms, 0.99), 3),
        "errors": errors,
        "error_codes": dict(tally.errors),
        "concurrency": concurrency,
        "channels": channels,
        "uvloop_client": has_uvloop(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loadgen", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--workload", required=True, choices=WORKLOADS)
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring")
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument(
        "--token-file",
        help="send `authorization: Bearer <its contents>` on every call (default: no metadata)",
    )
    args = parser.parse_args()
    metadata = bearer_metadata(args.token_file)
    # The client's own collector pauses would show up as server latency.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    result = run(
        measure(
            args.target, args.workload, args.concurrency, args.seconds, args.warmup, args.channels, metadata
        )
    )
    emit(result)


if __name__ == "__main__":
    main()

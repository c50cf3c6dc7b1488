"""`python -m bench fleet --costs`: what each call a pod makes costs one replica in CPU, one kind at a time.

One replica on a throwaway PostgreSQL database, programs prepared as `python -m bench fleet` does,
and an in-process client (its own process, not the replica's) of `--pods` sidecars:

  join        each sidecar's first report (written at once: a telemetry transaction)
  heartbeat   `--rounds` more of the same report from each (held in memory)
  change      a report that changes what the sidecar serves (written at once), as an ACK of a
              deployment does
  window      `--rounds` ReportMetrics calls of one window each, per sidecar (merged in memory)
  progress    each sidecar's WatchTargets stream left open `--seconds`: the progress message the
              server sends every 5 s on each (the client's default), and nothing else

For each, the replica's CPU (user + system, from /proc) divided by the calls or messages: ms each,
less what the replica spends when nothing is asked (its own loops: the store probe, the leader's
poll and duties, flushes), measured first for 10 s (`idle_cpu_ms_per_s`).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2

from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc

from .fleet import Replica, _database, _prepare
from .fleet_pods import BOUNDS_MS, _timestamp

CONCURRENCY = 32
IDLE_SECONDS = 10.0


async def _each(calls: list[Callable[[], Awaitable[Any]]]) -> None:
    """Run the calls, CONCURRENCY at a time."""
    pending = iter(calls)

    async def worker() -> None:
        for call in pending:
            await call()

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


def _report(pod: int, version: str, digest: str) -> dpb.ReportSidecarStatusRequest:
    """A report of `version` ACKed; of nothing with no version."""
    interval = duration_pb2.Duration(seconds=10)
    entries = [
        dpb.SidecarTargetStatus(
            program="p", environment="staging", version=version, digest=digest, result=dpb.APPLY_RESULT_ACK
        )
    ]
    return dpb.ReportSidecarStatusRequest(
        sidecar_id=f"pod-{pod}", targets=entries if version else [], heartbeat_interval=interval
    )


def _window(pod: int, version: str, end: datetime) -> dpb.ReportMetricsRequest:
    window = dpb.MetricWindow(
        program="p",
        environment="staging",
        version=version,
        start_time=_timestamp((end - timedelta(seconds=5)).timestamp()),
        end_time=_timestamp(end.timestamp()),
        request_count=10,
    )
    window.latency.bounds_ms.extend(BOUNDS_MS)
    window.latency.counts.extend([0, 10, 0, 0, 0, 0])
    window.latency.sum_ms = 800.0
    return dpb.ReportMetricsRequest(sidecar_id=f"pod-{pod}", windows=[window])


async def _measure(replica: Replica, args: argparse.Namespace, metadata: Any) -> dict[str, float]:
    channel = grpc.aio.insecure_channel(replica.address)
    stub = deployment_pb2_grpc.DeploymentServiceStub(channel)  # type: ignore[no-untyped-call]
    figures: dict[str, float] = {}
    try:
        status = await stub.GetDeploymentStatus(
            dpb.GetDeploymentStatusRequest(program="p", environment="staging"), metadata=metadata
        )
        stable = status.target.stable

        # What the replica spends doing nothing asked (its loops: the store probe, the leader's
        # poll and duties, flushes), per second: taken off each figure below for its duration.
        cpu, started = replica.cpu_seconds(), time.monotonic()
        await asyncio.sleep(IDLE_SECONDS)
        idle = (replica.cpu_seconds() - cpu) / (time.monotonic() - started)
        figures["idle_cpu_ms_per_s"] = round(idle * 1000, 2)

        def spent(cpu: float, started: float) -> float:
            return replica.cpu_seconds() - cpu - idle * (time.monotonic() - started)

        async def timed(name: str, calls: list[Callable[[], Awaitable[Any]]]) -> None:
            cpu, started = replica.cpu_seconds(), time.monotonic()
            await _each(calls)
            figures[f"{name}_ms"] = round(spent(cpu, started) / len(calls) * 1000, 3)

        pods = range(args.pods)

        def report(pod: int, version: str = stable.version, digest: str = stable.digest) -> Awaitable[Any]:
            return stub.ReportSidecarStatus(_report(pod, version, digest), metadata=metadata)  # type: ignore[no-any-return]

        def window(pod: int, ago: int) -> Awaitable[Any]:
            end = now - timedelta(seconds=ago)
            return stub.ReportMetrics(_window(pod, stable.version, end), metadata=metadata)  # type: ignore[no-any-return]

        now = datetime.now(UTC)
        await timed("join", [partial(report, p) for p in pods])
        await timed("heartbeat", [partial(report, p) for _ in range(args.rounds) for p in pods])
        await timed("window", [partial(window, p, r) for r in range(args.rounds) for p in pods])
        # What it serves changed (here: nothing any more), as every pod's ACK of a deployment does:
        # written at once.
        await timed("change", [partial(report, p, "", "") for p in pods])
        # Streams: opened, then left alone; the progress messages are all the server sends.
        calls = []
        for p in pods:
            request = dpb.WatchTargetsRequest(sidecar_id=f"pod-{p}")
            request.selectors.add(program="p", environment="staging")
            calls.append(stub.WatchTargets(request, metadata=metadata))
        received = [0]

        async def drain(call: Any) -> None:
            async for _ in call:
                received[0] += 1

        drains = [asyncio.create_task(drain(c)) for c in calls]
        while received[0] < args.pods:  # every snapshot in
            await asyncio.sleep(0.1)
        cpu, first = replica.cpu_seconds(), received[0]
        started = time.monotonic()
        await asyncio.sleep(args.seconds)
        messages = received[0] - first
        figures["progress_ms"] = round(spent(cpu, started) / max(messages, 1) * 1000, 3)
        figures["progress_messages_per_s"] = round(messages / (time.monotonic() - started), 1)
        for c in calls:
            c.cancel()
        await asyncio.gather(*drains, return_exceptions=True)
    finally:
        await channel.close(None)
    return figures


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dspy-registry-costs-") as tmp, _database(args.postgres) as url:
        replica = Replica(0, url, Path(tmp), args.server_log_level, False)
        try:
            replica.wait_serving()
            metadata = (("authorization", f"Bearer {replica.token_file.read_text().strip()}"),)
            _prepare(replica.address, metadata)
            figures = asyncio.run(_measure(replica, args, metadata))
        finally:
            replica.stop()
    return {
        "figure": "fleet_rpc_costs",
        "pods": args.pods,
        "rounds": args.rounds,
        "backend": "postgres",
        **figures,
    }

"""`python -m bench.fleet_pods`: simulated serving pods, as many as asked, in one process (bench/fleet.py).

Each pod is what a sidecar does to the control plane, without loading artifacts: a WatchTargets
stream on one program in one environment, through channels that spread their calls over every
replica (`round_robin` over all the addresses); an ACK (ReportSidecarStatus) of each change it
receives; a heartbeat (the same report) every `--heartbeat` seconds and a metric window per served
version (ReportMetrics) every `--metrics-interval` seconds, both at the client's defaults. A pod
whose index is a multiple of `--error-every` fails every request its candidate serves.

It prints `acked <pods>` every 5 s until every pod has ACKed its first snapshot, `ready` then, and
`converged <stable> <time_ns> <received_ns> <ack_p50_ms> <ack_max_ms>` each time every pod has ACKed
a target with that stable version and no candidate: the time of the last ACK, when the last pod's
stream gave it that target, and how long the pods' ACKs of it took to be answered (median, slowest).
A report that fails UNAVAILABLE is retried, as the client library does. A `mark` line on stdin
(the driver is about to kill a replica) starts `moved ...` lines: the pods whose stream broke since,
and when each reported (its ACK, or the heartbeat after it) once it had a snapshot on
another replica. It stops when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import time
import zlib
from typing import Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc

from .common import run
from .loadgen import bearer_metadata

BOUNDS_MS = [50.0, 100.0, 250.0, 500.0, 1000.0]
DETAILS_CHARS = 90  # of a broken stream's details: enough to tell a server's reason from a lost socket
_DIGITS = re.compile(r"\d+")
RETRIES = 4  # the client's default


class Pod:
    def __init__(self, index: int, args: argparse.Namespace, stub: Any, fleet: Fleet) -> None:
        self.id = f"pod-{index}"
        self.args = args
        self.stub = stub
        self.fleet = fleet
        self.failing = index % args.error_every == 0
        self.target: dpb.Target | None = None
        self.revision = 0
        self.moving = False  # its stream broke after the driver's mark: it has not ACKed on another since
        self.reopened = False  # its stream (since it last broke) gave it a snapshot
        self.received_ns = 0  # when its stream last gave it a target
        self.ack_ns = 0  # how long its last report of a target just received took to be answered

    async def watch(self) -> None:
        request = dpb.WatchTargetsRequest(sidecar_id=self.id)
        request.selectors.add(program=self.args.program, environment=self.args.environment)
        await asyncio.sleep(random.uniform(0, self.args.open_seconds))
        while True:
            try:
                async for message in self.stub.WatchTargets(request, metadata=self.fleet.metadata):
                    self.revision = message.revision
                    kind = message.WhichOneof("kind")
                    if kind in ("snapshot", "changes"):
                        for target in getattr(message, kind).targets:
                            self.target = target
                        self.reopened = True
                        self.received_ns = time.time_ns()
                        await self.report(acking=True)
            except grpc.aio.AioRpcError as err:
                # A replica stopped, or cut a slow stream: resume elsewhere, as a sidecar does.
                self.reopened = False
                if self.fleet.mark_ns:
                    self.fleet.broke(err)
                    if not self.moving:
                        self.moving = True
                        self.fleet.moved[self.id] = 0
            await asyncio.sleep(random.uniform(0.5, 1.5))

    def _served(self) -> list[tuple[str, str]]:
        t = self.target
        if t is None or not t.stable.version:
            return []
        served = [(t.stable.version, t.stable.digest)]
        if t.HasField("candidate"):
            served.append((t.candidate.version, t.candidate.digest))
        return served

    async def report(self, acking: bool = False) -> bool:
        entries = [
            dpb.SidecarTargetStatus(
                program=self.args.program,
                environment=self.args.environment,
                version=version,
                digest=digest,
                result=dpb.APPLY_RESULT_ACK,
                revision=self.revision,
            )
            for version, digest in self._served()
        ]
        interval = duration_pb2.Duration()
        interval.FromNanoseconds(int(self.args.heartbeat * 1e9))
        request = dpb.ReportSidecarStatusRequest(
            sidecar_id=self.id, targets=entries, heartbeat_interval=interval, revision=self.revision
        )
        asked = time.time_ns()
        if not await _call(self.stub.ReportSidecarStatus, request, self.fleet):
            return False
        if acking:
            self.ack_ns = time.time_ns() - asked
        self.fleet.acked(self)
        if self.moving and self.reopened:
            # Moved: a report (the ACK of the new stream's snapshot, or, if that one failed, the next
            # heartbeat, which ACKs the same target) taken since the stream reopened.
            self.moving = False
            self.fleet.moved[self.id] = time.time_ns()
        return True

    async def heartbeat(self) -> None:
        await asyncio.sleep(random.uniform(0, self.args.heartbeat))
        while True:
            if self.target is not None:
                await self.report()
            await asyncio.sleep(self.args.heartbeat)

    async def metrics(self) -> None:
        await asyncio.sleep(random.uniform(0, self.args.metrics_interval))
        while True:
            end = time.time()
            start = end - self.args.metrics_interval
            windows = []
            t = self.target
            served = self._served()
            for version, _ in served:
                candidate = t is not None and t.HasField("candidate") and version == t.candidate.version
                share = (
                    (t.candidate.weight_percent / 100 if candidate else 1 - t.candidate.weight_percent / 100)
                    if t
                    else 1
                )
                requests = max(1, round(self.args.requests_per_second * self.args.metrics_interval * share))
                errors = requests if candidate and self.failing else 0
                window = dpb.MetricWindow(
                    program=self.args.program,
                    environment=self.args.environment,
                    version=version,
                    start_time=_timestamp(start),
                    end_time=_timestamp(end),
                    request_count=requests,
                    error_count=errors,
                )
                counts = [0] * (len(BOUNDS_MS) + 1)
                counts[1] = requests
                window.latency.bounds_ms.extend(BOUNDS_MS)
                window.latency.counts.extend(counts)
                window.latency.sum_ms = 80.0 * requests
                windows.append(window)
            if windows:
                await _call(
                    self.stub.ReportMetrics,
                    dpb.ReportMetricsRequest(sidecar_id=self.id, windows=windows),
                    self.fleet,
                )
            await asyncio.sleep(self.args.metrics_interval)


async def _call(method: Any, request: Any, fleet: Fleet) -> bool:
    """One report, retried on UNAVAILABLE as the client library does (client/_base.py): a replica that
    died under it is left out by round_robin, and the retry reaches another. Whether it was taken."""
    for attempt in range(RETRIES + 1):
        try:
            await method(request, metadata=fleet.metadata, timeout=30)
            return True
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE or attempt == RETRIES:
                fleet.failed_reports += 1
                return False
            fleet.retried_reports += 1
            await asyncio.sleep(min(2.0, 0.1 * 2 ** (attempt + 1)) * random.uniform(0.5, 1.0))
    return False


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


class Fleet:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.metadata = bearer_metadata(args.token_file)
        self.acks: dict[str, str] = {}  # pod -> the stable version of its last ACK with no candidate
        self.ready = False
        self.said: set[str] = set()
        self.failed_reports = 0  # given up on (after retries, or not UNAVAILABLE)
        self.retried_reports = 0
        self.pods: list[Pod] = []
        self.mark_ns = 0  # when the driver said `mark` (it is about to kill a replica)
        # Pods whose stream broke after the mark -> when each ACKed a snapshot on another replica (0: not yet).
        self.moved: dict[str, int] = {}
        # Streams broken after the mark, by status code and details (numbers left out): who cut them
        # and why — the killed replica's connection, or a survivor's hub (which says why in its own words).
        self.broken: dict[str, int] = {}

    def broke(self, err: grpc.aio.AioRpcError) -> None:
        code = err.code().name if err.code() is not None else "UNKNOWN"
        why = f"{code}: {_DIGITS.sub('N', err.details() or '')[:DETAILS_CHARS]}"
        self.broken[why] = self.broken.get(why, 0) + 1

    def acked(self, pod: Pod) -> None:
        t = pod.target
        self.acks[pod.id] = "" if t is None or t.HasField("candidate") else t.stable.version
        if len(self.acks) < len(self.pods):
            return
        if not self.ready:
            self.ready = True
            _say("ready")
        versions = set(self.acks.values())
        if len(versions) == 1 and (version := versions.pop()) and version not in self.said:
            self.said = {version}
            # Where the time went: the last pod's stream delivering the change, and the ACKs' answers.
            received = max(p.received_ns for p in self.pods)
            acks_ms = sorted(p.ack_ns / 1e6 for p in self.pods)
            median, slowest = acks_ms[len(acks_ms) // 2], acks_ms[-1]
            _say(f"converged {version} {time.time_ns()} {received} {median:.1f} {slowest:.1f}")


async def _shown(work: Any) -> None:
    """`work`, whose failure (a bug here: the loops outlive every RPC error) reaches stderr, where the
    driver's caller sees it, rather than ending one pod's loop without a word."""
    try:
        await work
    except Exception as exc:
        sys.stderr.write(f"a pod's loop failed: {exc!r}\n")
        raise


async def _progress(fleet: Fleet) -> None:
    """How many pods have ACKed, for the driver to say where a fleet that never gets ready stopped."""
    while not fleet.ready:
        await asyncio.sleep(5)
        _say(f"acked {len(fleet.acks)}")


async def _moves(fleet: Fleet) -> None:
    """After the mark, twice a second: `moved <streams broken> <resumed elsewhere> <last resumed, ns>
    <reports given up> <reports retried>` and `broken <JSON: streams broken by status code and
    details>`; once every broken one resumed, its ids (`moved-ids`)."""
    told = False
    while True:
        await asyncio.sleep(0.5)
        back = [t for t in fleet.moved.values() if t]
        _say(
            f"moved {len(fleet.moved)} {len(back)} {max(back, default=0)} "
            f"{fleet.failed_reports} {fleet.retried_reports}"
        )
        _say("broken " + json.dumps(fleet.broken, separators=(",", ":")))
        if fleet.moved and len(back) == len(fleet.moved) and not told:
            told = True
            _say("moved-ids " + ",".join(sorted(fleet.moved)))


async def _commands(fleet: Fleet, tasks: list[asyncio.Task[None]]) -> None:
    """The driver's lines on stdin until it closes it: `mark` before it kills a replica."""
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        if line.strip() == "mark" and not fleet.mark_ns:
            fleet.mark_ns = time.time_ns()
            tasks.append(asyncio.create_task(_shown(_moves(fleet))))
            _say("marked")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _main(args: argparse.Namespace) -> None:
    target = "ipv4:" + args.targets
    options = [("grpc.lb_policy_name", "round_robin"), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(args.channels)]
    fleet = Fleet(args)
    for i in range(args.first, args.first + args.pods):
        # Spread by the pod's own name, so that a pod's channel is the same in every run.
        channel = channels[zlib.crc32(str(i).encode()) % len(channels)]
        fleet.pods.append(Pod(i, args, dpb_grpc.DeploymentServiceStub(channel), fleet))  # type: ignore[no-untyped-call]
    tasks = [
        asyncio.create_task(_shown(work()))
        for pod in fleet.pods
        for work in (pod.watch, pod.heartbeat, pod.metrics)
    ]
    tasks.append(asyncio.create_task(_progress(fleet)))
    await _commands(fleet, tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close(None)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet_pods")
    parser.add_argument("--targets", required=True, help="host:port,host:port,... of every replica")
    parser.add_argument("--token-file")
    parser.add_argument("--first", type=int, default=0, help="the first pod's index")
    parser.add_argument("--pods", type=int, required=True)
    parser.add_argument("--channels", type=int, default=4, help="connections to each replica")
    parser.add_argument("--program", default="p")
    parser.add_argument("--environment", default="staging")
    parser.add_argument("--heartbeat", type=float, default=10.0)
    parser.add_argument("--metrics-interval", type=float, default=5.0)
    parser.add_argument("--requests-per-second", type=float, default=2.0, help="per pod")
    parser.add_argument(
        "--error-every", type=int, default=20, help="every n-th pod fails its candidate's requests"
    )
    parser.add_argument(
        "--open-seconds", type=float, default=5.0, help="spread the watches' opening over this long"
    )
    run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()

"""`python -m tests.e2e.fake_pod`: a serving process whose program's health the test controls.

It embeds ProgramWatcher for one program in one environment and drives
traffic through `watcher.route()` from `--concurrency` tasks. What each
version does comes from the `--control` JSON file (re-read as it changes):

    {"default": {"error_rate": 0, "latency_ms": 1, "accuracy": 0.9, "think_ms": 1},
     "versions": {"1.3.0": {"error_rate": 0.2}}}

Errors and wrong answers are spread exactly (every 5th call for 0.2), so a
figure is never noise. It appends JSON lines to `--log`: each swap (what it
serves, when) and each metrics report the server acknowledged (cumulative
requests per version, when), which is how the test times detection and
rollback across the fleet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

from dspy_registry.client.auth import bearer_interceptors
from dspy_registry.client.watcher import ProgramWatcher, Serving

HEALTHY = {"error_rate": 0.0, "latency_ms": 1.0, "accuracy": 0.9, "think_ms": 1.0}


class Pod:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.control_path = Path(args.control)
        self.control: dict[str, Any] = {}
        self.control_mtime = 0.0
        self.log = open(args.log, "a", buffering=1)  # noqa: SIM115 - open for the process's life
        self.calls: Counter[str] = Counter()  # per version, for exact spreading of errors
        self.requests: Counter[str] = Counter()  # per version, routed so far

    def behaviour(self, version: str) -> dict[str, float]:
        if self.control_path.exists() and self.control_path.stat().st_mtime != self.control_mtime:
            self.control_mtime = self.control_path.stat().st_mtime
            self.control = json.loads(self.control_path.read_text())
        out = dict(HEALTHY)
        out.update(self.control.get("default", {}))
        out.update(self.control.get("versions", {}).get(version, {}))
        return out

    def write(self, **entry: Any) -> None:
        self.log.write(json.dumps({"t": time.time(), **entry}) + "\n")

    async def on_swap(self, program: str, environment: str, serving: Serving) -> None:
        self.write(
            event="swap",
            stable=serving.stable.version if serving.stable else None,
            candidate=serving.candidate.version if serving.candidate else None,
            weight=serving.weight_percent,
        )

    async def serve(self, watcher: ProgramWatcher, rng: random.Random) -> None:
        while True:
            try:
                program = watcher.get(self.args.program)
            except LookupError:  # nothing loaded yet
                await asyncio.sleep(0.05)
                continue
            b = HEALTHY
            try:
                with watcher.route(self.args.program, routing_key=str(rng.random())) as program:
                    b = self.behaviour(program.version)
                    n = self.calls[program.version]
                    self.calls[program.version] += 1
                    await asyncio.sleep(b["latency_ms"] / 1000)
                    wrong = _every(n, 1 - b["accuracy"])
                    if _every(n, b["error_rate"]):
                        raise RuntimeError("injected failure")
                watcher.feedback(self.args.program, correct=not wrong, version=program.version)
            except RuntimeError:
                pass
            finally:
                self.requests[program.version] += 1  # measured now (a call counts when it ends)
            await asyncio.sleep(b["think_ms"] / 1000)

    async def report(self, watcher: ProgramWatcher) -> None:
        while True:
            await asyncio.sleep(self.args.metrics_interval)
            routed = dict(self.requests)  # before the windows close: the server has at least these
            if await watcher.report_metrics():
                self.write(event="reported", requests=routed)


def _every(n: int, rate: float) -> bool:
    """Whether call n is one of the `rate` share, spread evenly (0.2: calls 4, 9, 14, ...)."""
    return math.floor((n + 1) * rate) > math.floor(n * rate)


async def main(args: argparse.Namespace) -> None:
    pod = Pod(args)
    token = Path(args.token_file).read_text().strip()
    channel = grpc.aio.insecure_channel(args.server, interceptors=bearer_interceptors(token))
    watcher = ProgramWatcher(
        channel,
        [(args.program, args.environment)],
        sidecar_id=args.id,
        on_swap=pod.on_swap,
        heartbeat=1,
        metrics_interval=3600,  # this pod reports itself, to log what the server acknowledged
    )
    await watcher.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    rng = random.Random(args.id)
    tasks = [asyncio.create_task(pod.serve(watcher, rng)) for _ in range(args.concurrency)]
    tasks.append(asyncio.create_task(pod.report(watcher)))
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await watcher.stop()
    await channel.close(None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.fake_pod")
    for flag in ("--server", "--token-file", "--program", "--environment", "--id", "--control", "--log"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--metrics-interval", type=float, default=0.25)
    asyncio.run(main(parser.parse_args()))

"""`python -m demo.pod`: one serving pod of the demo — a process embedding ProgramWatcher.

It follows `sentiment_classifier` in production: each version the registry
deploys is fetched, checked against its digest and loaded as a
`SentimentProgram` (demo/program.py) from the artifact's demos; a version
that does not load is NACKed and the old one keeps serving. Meanwhile it
answers a stream of users' requests — the demo's labelled traffic set,
replayed at `--rate` requests a second, each from a random user — through
`watcher.route()` (which times each call for the version that answered) and
gives the users' verdicts to `watcher.feedback()`. The watcher reports those
measurements to the registry every `--metrics-interval` seconds; that is
what the server's analysis judges a canary by.

It writes JSON lines to `--log`: each swap, and on SIGTERM/SIGINT a summary
of what each version answered and how many answers were right.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

import grpc

from dspy_registry.client.auth import bearer_interceptors
from dspy_registry.client.watcher import ProgramWatcher, Serving

from .program import LABELS, PROGRAM, TRAFFIC, SentimentProgram

ENVIRONMENT = "production"


def load(program: str, data: bytes, media_type: str) -> SentimentProgram:
    """The watcher's loader: the artifact (a DSPy saved state) made into a live program."""
    return SentimentProgram.from_artifact(data)


class Pod:
    def __init__(self, log: TextIO, rate: float, rng: random.Random) -> None:
        self.log = log
        self.rate = rate
        self.rng = rng
        self.answered: Counter[str] = Counter()  # per version
        self.correct: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()

    def write(self, **entry: Any) -> None:
        self.log.write(json.dumps({"t": time.time(), **entry}) + "\n")
        self.log.flush()

    async def on_swap(self, program: str, environment: str, serving: Serving) -> None:
        self.write(
            event="swap",
            stable=serving.stable.version if serving.stable else None,
            candidate=serving.candidate.version if serving.candidate else None,
            weight=serving.weight_percent,
        )

    async def serve(self, watcher: ProgramWatcher) -> None:
        await watcher.wait_for(lambda w: w.serving(PROGRAM).stable is not None, timeout=60)
        period = 1 / self.rate
        next_at = time.monotonic()
        while True:
            text, label = self.rng.choice(TRAFFIC)
            user = f"user-{self.rng.randrange(100_000)}"  # the canary's routing key
            try:
                with watcher.route(PROGRAM, routing_key=user) as loaded:
                    prediction = loaded.value(text)
                    if prediction.sentiment not in LABELS:  # the signature's enum, as dspy would parse it
                        raise ValueError(f"sentiment {prediction.sentiment!r} is not one of {LABELS}")
            except Exception:  # a version that fails a request: route() counted it as an error
                self.errors[loaded.version] += 1
            else:
                right = prediction.sentiment == label
                watcher.feedback(PROGRAM, correct=right, version=loaded.version)
                self.correct[loaded.version] += right
            self.answered[loaded.version] += 1
            # A steady rate whatever each call took; no catching up in bursts after a stall.
            next_at = max(next_at + period, time.monotonic())
            await asyncio.sleep(next_at - time.monotonic())


async def main(args: argparse.Namespace) -> None:
    token = Path(args.token_file).read_text().strip()
    channel = grpc.aio.insecure_channel(args.server, interceptors=bearer_interceptors(token))
    with open(args.log, "a") as log:
        pod = Pod(log, args.rate, random.Random(args.id))
        watcher = ProgramWatcher(
            channel,
            [(PROGRAM, ENVIRONMENT)],
            sidecar_id=args.id,
            loader=load,
            on_swap=pod.on_swap,
            heartbeat=1.0,
            metrics_interval=args.metrics_interval,
        )
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await watcher.start()
        serving = asyncio.create_task(pod.serve(watcher))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        await watcher.stop()  # sends the last metrics, and tells the registry this pod is leaving
        pod.write(
            event="exit",
            answered=dict(pod.answered),
            correct=dict(pod.correct),
            errors=dict(pod.errors),
        )
    await channel.close(None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m demo.pod", description=__doc__)
    for flag in ("--server", "--token-file", "--id", "--log"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--rate", type=float, default=100.0, help="requests a second")
    parser.add_argument("--metrics-interval", type=float, default=0.5, help="seconds between reports")
    asyncio.run(main(parser.parse_args()))

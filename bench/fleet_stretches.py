"""`python -m bench fleet --stretches`: how long a replica's periodic fleet work holds its event loop.

A call that reaches a replica waits for whatever runs on its event loop when it arrives; the work a
replica does every few seconds for the whole fleet is what a call can meet there. In this process,
on a throwaway PostgreSQL database, with the server's own code:

  flush   three replicas (LiveSidecars, one store) each holding `--pods` sidecars, of which a sixth
          were heard again since the last flush (a pod's heartbeat reaches each of three replicas
          every 30 s under round_robin, a flush runs every 5 s): each one's flush, `--rounds` times
  gauge   the leader's read of the live sidecars for the `dspy_registry_sidecars` gauge (StoreCounts),
          over the three replicas' rows, `--rounds` times

For each: the rows a flush wrote, the CPU each took (the thread's CPU clock, so that other work on
the machine adds little), and the longest stretch of it on a core without a turn of the event loop
(a callback that asks to run again at every turn reads the clock): median and largest.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from dspy_registry.server.domain.sidecars import Applied, Report
from dspy_registry.server.store.backends import open_store
from dspy_registry.server.store_counts import StoreCounts
from dspy_registry.server.usecases.live_sidecars import LiveSidecars

from .fleet import _database

REPLICAS = 3
HEARD_SINCE = 6  # one sidecar in six heard again between two flushes


class _Turns:
    """The thread's CPU time between consecutive turns of the event loop, while on."""

    def __init__(self) -> None:
        self.stretches: list[float] = []
        self._on = False
        self._last = 0

    def _tick(self) -> None:
        now = time.thread_time_ns()
        self.stretches.append((now - self._last) / 1e6)
        self._last = now
        if self._on:
            asyncio.get_running_loop().call_soon(self._tick)

    async def longest(self, work: Callable[[], Awaitable[Any]]) -> float:
        self.stretches, self._on, self._last = [], True, time.thread_time_ns()
        asyncio.get_running_loop().call_soon(self._tick)
        await work()
        self._on = False
        await asyncio.sleep(0)
        return max(self.stretches)


def _report(pod: int, targets: tuple[Applied, ...]) -> Report:
    return Report(
        sidecar_id=f"pod-{pod}",
        principal="admin",
        targets=targets,
        heartbeat_seconds=10.0,
        time=datetime.now(UTC),
        revision=7,
    )


def _summary(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"median": round(values[len(values) // 2], 2), "max": round(values[-1], 2)}


async def _measure(url: str, pods: int, rounds: int) -> dict[str, Any]:
    store = open_store(url)
    await store.open()
    # The collector as `dspy-registry serve` sets it once started: what was allocated until then
    # frozen, the young generation collected every 50 000 allocations (the default, 700, would pause
    # this process over the fleet's reports far more often than a server).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        applied = Applied(
            program="p",
            environment="staging",
            version="1.0.0",
            digest="sha256:" + "a" * 64,
            acked=True,
            error_code=0,
            error_message="",
            revision=7,
            apply_time=datetime.now(UTC),
        )
        replicas = [LiveSidecars(store, f"replica-{i}") for i in range(REPLICAS)]
        for live in replicas:
            for pod in range(pods):
                live.held[f"pod-{pod}"] = _report(pod, (applied,))
            await live.flush()
        turns = _Turns()
        rows: set[int] = set()
        flush_cpu: list[float] = []
        flush_stretch: list[float] = []
        for n in range(2 * rounds):
            for live in replicas:
                for pod in range(n % HEARD_SINCE, pods, HEARD_SINCE):
                    live.held[f"pod-{pod}"] = _report(pod, (applied,))
                if n % 2:  # every other round: the longest stretch, with the turns counted
                    flush_stretch.append(await turns.longest(live.flush))
                else:
                    began = time.thread_time()
                    rows.add(await live.flush())
                    flush_cpu.append((time.thread_time() - began) * 1000)
        counted: list[int] = []

        async def gauge() -> None:
            counts = StoreCounts(store)  # a replica taking the lead: it reads the live sidecars at once
            await counts.start()
            await counts.stop()
            counted.append(sum(counts.snapshot.sidecars.values()))

        gauge_cpu: list[float] = []
        gauge_stretch: list[float] = []
        for _ in range(rounds):
            began = time.thread_time()
            await gauge()
            gauge_cpu.append((time.thread_time() - began) * 1000)
            gauge_stretch.append(await turns.longest(gauge))
        return {
            "flush_rows_written": sorted(rows),
            "flush_cpu_ms": _summary(flush_cpu),
            "flush_longest_stretch_ms": _summary(flush_stretch),
            "gauge_sidecars_counted": sorted(set(counted)),
            "gauge_cpu_ms": _summary(gauge_cpu),
            "gauge_longest_stretch_ms": _summary(gauge_stretch),
        }
    finally:
        await store.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    with _database(args.postgres) as url:
        figures = asyncio.run(_measure(url, args.pods, args.rounds))
    return {
        "figure": "fleet_stretches",
        "pods": args.pods,
        "replicas": REPLICAS,
        "rounds": args.rounds,
        "backend": "postgres",
        **figures,
    }

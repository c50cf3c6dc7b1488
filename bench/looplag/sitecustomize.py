"""How long a replica's event loop is held, and by what: `python -m bench fleet --loop-lag` puts this
directory on the replicas' PYTHONPATH, so that Python loads it at start. Bench only — the server never
imports it.

  lag      a callback asks the loop to run it again TICK_S later, every time: how late it runs is
           how long the loop was held by something else (by milliseconds, counted since start)
  stalls   a watchdog thread looks at the loop every WATCH_S; while the loop has not ticked for
           STALL_S it samples the loop thread's stack (Python frames only, innermost first; none
           while it is in C: uvloop, or waiting for the GIL) and the innermost frame of every other
           thread: each stall of STALL_S or more is listed with when it ended, how long it was,
           how much of it the loop's thread ran on a core (its CPU clock) and how much it was
           runnable but waited for one (the kernel's schedstat): the rest it slept, on the GIL or
           in a system call; and the stacks seen during it, so that what held the loop can be read
  gc       the collector's passes (gc.callbacks), by generation: how many, their total and longest
           time, and each that took STALL_S or more, with when

The counts so far are written to $BENCH_LOOP_LAG_FILE once a second, and the stalls and long
collector passes since the last write appended to it + ".stalls" (one JSON line each: rewriting them
all each second held the GIL for milliseconds itself), for the driver to read at the measured window's
ends. The watchdog costs the replica a thread waking every WATCH_S (it takes the
GIL to look): enough to move a p99 a little, which is why it is an option of its own.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import sys
import threading
import time
from typing import Any

PATH = os.environ.get("BENCH_LOOP_LAG_FILE", "")
TICK_S = 0.002
WATCH_S = 0.002
STALL_S = 0.005
MAX_STALLS = 20_000  # each with its stacks; a run of minutes has hundreds
FRAMES = 12  # innermost frames kept per sample


def _install(path: str) -> None:
    import asyncio
    import asyncio.events

    main = threading.get_ident()  # sitecustomize runs on the main thread
    lag_ms: collections.Counter[int] = collections.Counter()  # lag, whole ms -> ticks
    stalls: list[dict[str, Any]] = []
    samples: dict[float, list[str]] = {}  # the loop's last tick -> stacks seen since it
    others: dict[float, list[str]] = {}  # ... and the other threads' innermost frames
    sched = [0, 0]  # the loop thread's CPU time and time queued for a core (ns) at its last tick
    sched_fd: list[int] = []
    beat = [0.0]  # the loop's last tick (perf_counter), 0 before it runs
    gcs: dict[int, list[float]] = {0: [0, 0.0, 0.0], 1: [0, 0.0, 0.0], 2: [0, 0.0, 0.0]}  # n, total, max
    long_gcs: list[dict[str, Any]] = []
    gc_began = [0.0]

    def tick(loop: asyncio.AbstractEventLoop, due: float) -> None:
        now = time.perf_counter()
        late = now - due
        lag_ms[int(late * 1000)] += 1
        if not sched_fd:
            sched_fd.append(os.open(f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY))
        # The thread's CPU clock, not schedstat's first field: that is brought up to date only at the
        # scheduler's ticks while the thread runs (4 ms apart here). Its second field, the time spent
        # runnable but waiting for a core, is added as the thread gets a core back: current here.
        ran = time.thread_time_ns()
        queued = int(os.pread(sched_fd[0], 128, 0).split()[1])
        if late >= STALL_S and len(stalls) < MAX_STALLS:
            stalls.append(
                {
                    "end": time.time(),
                    "ms": round(late * 1000, 2),
                    "ran_ms": round((ran - sched[0]) / 1e6, 2),
                    "queued_ms": round((queued - sched[1]) / 1e6, 2),
                    "stacks": dict(collections.Counter(samples.pop(beat[0], []))),
                    "others": dict(collections.Counter(others.pop(beat[0], []))),
                }
            )
        else:
            samples.pop(beat[0], None)
            others.pop(beat[0], None)
        sched[:] = [ran, queued]
        beat[0] = now
        loop.call_later(TICK_S, tick, loop, now + TICK_S)

    def stack(frame: Any, depth: int) -> str:
        names: list[str] = []
        while frame is not None and len(names) < depth:
            code = frame.f_code
            names.append(f"{os.path.basename(code.co_filename)}:{code.co_name}:{frame.f_lineno}")
            frame = frame.f_back
        return " < ".join(names)

    def watch() -> None:
        me = threading.get_ident()
        while True:
            time.sleep(WATCH_S)
            last = beat[0]
            if last and time.perf_counter() - last >= STALL_S:
                frames = sys._current_frames()
                samples.setdefault(last, []).append(stack(frames.get(main), FRAMES))
                others.setdefault(last, []).extend(
                    stack(f, 2) for t, f in frames.items() if t not in (main, me)
                )

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if threading.get_ident() != main:
            return
        if phase == "start":
            gc_began[0] = time.perf_counter()
            return
        took = time.perf_counter() - gc_began[0]
        n = gcs[info["generation"]]
        n[0] += 1
        n[1] += took
        n[2] = max(n[2], took)
        if took >= STALL_S and len(long_gcs) < MAX_STALLS:
            long_gcs.append(
                {"end": time.time(), "generation": info["generation"], "ms": round(took * 1000, 2)}
            )

    def write() -> None:
        written = [0, 0]  # stalls, long collector passes
        while True:
            time.sleep(1.0)
            try:
                snapshot = {
                    "time": time.time(),
                    "lag_ms": {str(k): v for k, v in sorted(lag_ms.items())},
                    "gc": {str(g): {"n": n, "s": s, "max_s": m} for g, (n, s, m) in gcs.items()},
                }
            except RuntimeError:  # changed while copied: the next second's copy
                continue
            # Lists only grow: what is past the last write is new (appended on the loop's thread).
            new = [{"stall": x} for x in stalls[written[0] :]] + [{"gc": x} for x in long_gcs[written[1] :]]
            written[0] += sum(1 for x in new if "stall" in x)
            written[1] += sum(1 for x in new if "gc" in x)
            with open(path + ".stalls", "a") as f:
                f.writelines(json.dumps(x) + "\n" for x in new)
            with open(path + ".new", "w") as f:
                json.dump(snapshot, f)
            os.replace(path + ".new", path)

    set_running = asyncio.events._set_running_loop
    started = [False]

    def set_running_loop(loop: asyncio.AbstractEventLoop | None) -> None:
        # uvloop and asyncio both call it as their loop starts; the first loop of the main thread
        # is the server's.
        set_running(loop)
        if loop is not None and not started[0] and threading.get_ident() == main:
            started[0] = True
            loop.call_soon(tick, loop, time.perf_counter())
            threading.Thread(target=watch, name="bench-loop-watch", daemon=True).start()
            threading.Thread(target=write, name="bench-loop-lag", daemon=True).start()

    # Before uvloop is imported: it keeps asyncio's function as it finds it then.
    asyncio._set_running_loop = set_running_loop
    asyncio.events._set_running_loop = set_running_loop
    gc.callbacks.append(on_gc)


if PATH:
    _install(PATH)

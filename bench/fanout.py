"""One change fanned out to N watch streams, measured the same way whoever serves them.

`measure` starts the `bench.watch_client` processes against a running server (or several replicas of
one, whose addresses the clients spread their streams over), waits until every
stream is established, then makes `changes` changes one at a time through `change` (a function
that makes one and returns its revision) and times each from the call's start and from its reply
to the moment the last stream received it. The servers' processes are read from /proc (Linux) for
their memory per idle stream and their CPU per delivered event (summed over the replicas), the
clients' for their CPU per event.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .common import percentile

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 2
CHANNELS = 8  # per client process

# Makes one change; returns its revision, which the watchers' messages carry.
Change = Callable[[], int]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def server_pid(target: str) -> int:
    """The pid of the server started with `--listen target` (found by its command line)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(a == b"--listen" and b == target.encode() for a, b in itertools.pairwise(argv)):
                return int(entry.name)
    raise RuntimeError(f"no server process listens on {target}")


def measure(
    *,
    peer: str,
    target: str,
    pid: int | Sequence[int],
    change: Change,
    streams: int,
    changes: int,
    open_seconds: float,
    token_file: Path | None = None,
) -> dict[str, Any]:
    """`target`: one address, or several comma-separated (replicas of one server, each `pid`'s)."""
    pids = [pid] if isinstance(pid, int) else list(pid)
    rss_before = sum(map(rss_kib, pids))
    clients = []
    for i in range(CLIENTS):
        share = streams // CLIENTS + (1 if i < streams % CLIENTS else 0)
        command = [sys.executable, "-m", "bench.watch_client", "--peer", peer, "--target", target]
        command += ["--streams", str(share), "--channels", str(CHANNELS), "--open-seconds", str(open_seconds)]
        if token_file is not None:
            command += ["--token-file", str(token_file)]
        clients.append(
            subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        )
    try:
        for client in clients:
            assert client.stdout is not None
            line = client.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"{peer} fan-out client failed before it was ready: {line!r}")
        time.sleep(1.0)  # let the server settle after the opening burst
        rss_idle = sum(map(rss_kib, pids))
        cpu_before = sum(map(cpu_seconds, pids))
        clients_cpu_before = sum(cpu_seconds(client.pid) for client in clients)
        from_reply_ms: list[float] = []
        from_sent_ms: list[float] = []
        call_ms: list[float] = []
        for _ in range(changes):
            sent = time.time_ns()
            revision = change()
            returned = time.time_ns()
            last = 0
            for client in clients:
                assert client.stdout is not None
                while True:  # each client says when all its streams had this revision
                    line = client.stdout.readline()
                    if not line:
                        raise RuntimeError(f"a {peer} fan-out client ended before revision {revision}")
                    _, seen, at = line.split()
                    if int(seen) >= revision:
                        last = max(last, int(at))
                        break
            from_reply_ms.append((last - returned) / 1e6)
            from_sent_ms.append((last - sent) / 1e6)
            call_ms.append((returned - sent) / 1e6)
        cpu = sum(map(cpu_seconds, pids)) - cpu_before
        clients_cpu = sum(cpu_seconds(client.pid) for client in clients) - clients_cpu_before
    finally:
        for client in clients:
            assert client.stdin is not None
            client.stdin.close()
            client.wait(30)
    # The hub hands a change out as the commit lands, over several turns of the loop, so the
    # reply overtakes most of the fan-out; from the call's start is the whole wait.
    reply, sent_sorted, calls = sorted(from_reply_ms), sorted(from_sent_ms), sorted(call_ms)
    deliveries = changes * streams
    return {
        "figure": "fanout",
        "peer": peer,
        "streams": streams,
        "servers": len(pids),
        "client_processes": CLIENTS,
        "connections": CLIENTS * CHANNELS,
        "opened_over_s": open_seconds,  # every stream was established, or the run fails
        "changes": changes,
        "p50_ms": round(percentile(reply, 0.50), 1),  # the call returned -> the last watcher has it
        "p99_ms": round(percentile(reply, 0.99), 1),
        "from_call_start_p50_ms": round(percentile(sent_sorted, 0.50), 1),
        "from_call_start_p99_ms": round(percentile(sent_sorted, 0.99), 1),
        "call_p50_ms": round(percentile(calls, 0.50), 1),
        "server_kib_per_idle_stream": round((rss_idle - rss_before) / streams, 1),
        "server_cpu_us_per_delivered_event": round(cpu / deliveries * 1e6, 1),
        # The load generator's share of the same cores: a floor under the latency.
        "clients_cpu_us_per_received_event": round(clients_cpu / deliveries * 1e6, 1),
    }

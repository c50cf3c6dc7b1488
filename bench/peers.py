"""`make bench-peers` (= `python -m bench.peers`): watch fan-out against etcd and the grpc.aio ceiling.

One put to an etcd 3.4 key (Debian's `etcd-server`, in a throwaway data directory) fanned out to
N watchers, each on its own Watch stream; one REPLACE deployment fanned out to N WatchTargets
streams of dspy-registry (SQLite, authentication on); one message published by the bare grpc.aio
server of bench/echo.py to N streams (the ceiling: nothing above the transport). The same two
`bench.watch_client` processes (8 connections each, raw reads, one timestamp per message) hold
the streams for all three, on loopback only. Each server is fresh per measurement; the peers
take turns in every round, in an order that alternates round by round, since the machine's load
drifts. Then, in each round, the registry spread over 1, 2 and 3 replicas on one throwaway
PostgreSQL database (`--replicas`; bench/fleet.py's replicas): the same clients deal their streams
over the replicas' addresses, the change goes through the first replica, and each replica hands it
to its own watchers (the others hear of it through LISTEN/NOTIFY); server CPU is summed over the
replicas. One JSON line per measurement, then docs/benchmarks.md, docs/benchmarks-fanout.png and
the README's performance table (its `readme-fanout` block) are written from this run's lines. Not
part of `make test`.

Then MLflow's model registry against dspy-registry (bench/mlflow_section.py: registration, alias
resolution, memory, start). `--only fanout` or `--only mlflow` measures one of the two; each is
a section of docs/benchmarks.md, and a block of the README, that a run rewrites only when it
measured it (bench/page.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from . import fanout, mlflow_section, page, wire
from .common import emit
from .servers import (
    ROOT,
    Options,
    Registry,
    database,
    deployment_change,
    free_port,
    preload_deployment,
    process,
    read_token,
    registry_server,
)

STREAMS = (1_000, 5_000, 10_000)
CHANGES = 20
ROUNDS = 2
PEERS = ("etcd", "registry", "echo")
REPLICAS = (1, 2, 3)
ECHO_SEND = os.environ.get("BENCH_ECHO_SEND", "write")  # the ceiling's send primitive (bench/echo.py --send)
# What a change carries to each watcher: etcd's value and the ceiling's message body, about the
# size of the Target a WatchTargets change holds.
VALUE = b"v" * 200
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGE = "benchmarks.md"
CHART = "benchmarks-fanout.png"
STARTUP_TIMEOUT_S = 30.0


@contextlib.contextmanager
def etcd() -> Iterator[tuple[str, int]]:
    """A single-member etcd on loopback ports, in a data directory removed afterwards: (target, pid)."""
    binary = shutil.which("etcd")
    if binary is None:
        raise SystemExit("etcd not found: apt-get install etcd-server")
    client, peer = free_port(), free_port()
    with (
        tempfile.TemporaryDirectory(prefix="dspy-registry-bench-etcd-") as tmp,
        open(Path(tmp, "log"), "w+b") as log,
    ):
        command = [binary, "--name", "bench", "--data-dir", str(Path(tmp, "data"))]
        command += ["--listen-client-urls", f"http://127.0.0.1:{client}"]
        command += ["--advertise-client-urls", f"http://127.0.0.1:{client}"]
        command += ["--listen-peer-urls", f"http://127.0.0.1:{peer}"]
        command += ["--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}"]
        command += [
            "--initial-cluster",
            f"bench=http://127.0.0.1:{peer}",
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ]
        etcd_process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        target = f"127.0.0.1:{client}"
        try:
            _wait_etcd(etcd_process, target, log)
            yield target, etcd_process.pid
        finally:
            etcd_process.send_signal(signal.SIGTERM)
            try:
                etcd_process.wait(15.0)
            except subprocess.TimeoutExpired:
                etcd_process.kill()
                etcd_process.wait()


def _wait_etcd(etcd_process: subprocess.Popen[bytes], target: str, log: Any) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with grpc.insecure_channel(target) as channel:
        status = channel.unary_unary(wire.ETCD_STATUS_METHOD, None, None)
        while True:
            if etcd_process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"etcd exited with {etcd_process.returncode}: {log.read()[-2000:]!r}")
            try:
                status(b"", timeout=1.0)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd not answering after {STARTUP_TIMEOUT_S}s") from None
            time.sleep(0.05)


def _etcd_version() -> str:
    binary = shutil.which("etcd")
    if binary is None:
        return "not installed"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0].removeprefix("etcd Version: ") if out else "unknown"


def measure(peer: str, streams: int, options: Options, open_seconds: float, changes: int) -> dict[str, Any]:
    if peer == "etcd":
        with etcd() as (target, pid), grpc.insecure_channel(target) as channel:
            put = channel.unary_unary(wire.ETCD_PUT_METHOD, None, None)
            request = wire.etcd_put(b"bench/p/staging", VALUE)
            result = fanout.measure(
                peer="etcd",
                target=target,
                pid=pid,
                change=lambda: wire.etcd_revision(put(request, timeout=30.0)),
                streams=streams,
                changes=changes,
                open_seconds=open_seconds,
            )
        return result | {"server": f"etcd {_etcd_version()}"}
    if peer == "echo":
        with (
            process([sys.executable, "-m", "bench.echo", "--send", ECHO_SEND]) as target,
            grpc.insecure_channel(target) as channel,
        ):
            publish = channel.unary_unary("/bench.Echo/Publish", None, None)

            def change() -> int:
                revision = wire.field(publish(VALUE, timeout=30.0), 1)
                assert isinstance(revision, int)
                return revision

            result = fanout.measure(
                peer="echo",
                target=target,
                pid=fanout.server_pid(target),
                change=change,
                streams=streams,
                changes=changes,
                open_seconds=open_seconds,
            )
        return result | {"server": "bare grpc.aio (bench/echo.py)"}
    with registry_server("sqlite", options) as registry, grpc.insecure_channel(registry.target) as channel:
        preload_deployment(registry, deploy=True)
        result = fanout.measure(
            peer="registry",
            target=registry.target,
            pid=fanout.server_pid(registry.target),
            change=deployment_change(registry, channel),
            token_file=registry.token_file,
            streams=streams,
            changes=changes,
            open_seconds=open_seconds,
        )
    return result | {"server": "dspy-registry (SQLite, authentication on)"}


def measure_replicas(
    replicas: int, streams: int, options: Options, open_seconds: float, changes: int
) -> dict[str, Any]:
    """The registry on `replicas` servers of one PostgreSQL database, the streams dealt over them."""
    from .fleet import Replica  # its replicas: a server each, with its own name, on one database

    with (
        tempfile.TemporaryDirectory(prefix="dspy-registry-bench-replicas-") as tmp,
        database("postgres", options, Path(tmp)) as url,
    ):
        started: list[Replica] = []
        try:
            started.append(Replica(0, url, Path(tmp), options.server_log_level, count_statements=False))
            started[0].wait_serving()  # first alone: it bootstraps the admin
            started += [
                Replica(i, url, Path(tmp), options.server_log_level, count_statements=False)
                for i in range(1, replicas)
            ]
            for replica in started[1:]:
                replica.wait_serving()
            first = Registry(started[0].address, started[0].token_file, read_token(started[0].token_file))
            preload_deployment(first, deploy=True)
            with grpc.insecure_channel(first.target) as channel:
                result = fanout.measure(
                    peer="registry",
                    target=",".join(r.address for r in started),
                    pid=[r.process.pid for r in started],
                    change=deployment_change(first, channel),
                    token_file=first.token_file,
                    streams=streams,
                    changes=changes,
                    open_seconds=open_seconds,
                )
        finally:
            for replica in started:
                replica.stop()
    plural = "s" if replicas > 1 else ""
    return result | {
        "figure": "fanout_replicas",
        "replicas": replicas,
        "server": f"dspy-registry on {replicas} PostgreSQL replica{plural} (authentication on)",
    }


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 1),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "etcd": _etcd_version(),
    }


# -- docs/benchmarks.md ------------------------------------------------------------------------------


def _median(records: list[dict[str, Any]], key: str) -> float:
    return round(float(statistics.median(r[key] for r in records)), 1)


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.1f}×" if theirs else "—"


def _when(before: dict[str, Any]) -> str:
    """The run's date, as its first line recorded it (a saved run may not have it)."""
    return f"{before['at'][:10]}, " if before.get("at") else ""


def _shared(before: dict[str, Any]) -> str:
    """What the load says of the figures. The load average counts the benchmark's own processes, so
    only the load before it started says whether other work shared the machine."""
    if before["load_average_1m"] < before["cpus"]:
        return ""
    return (
        " (the machine was shared with other work, so the figures are noisy: compare the ratios,"
        " measured in the same run)"
    )


def readme_lines(records: list[dict[str, Any]], before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The README's fan-out figures (its `readme-fanout` block): the largest fan-out of the run,
    etcd against dspy-registry, medians over the rounds, and where they came from."""
    streams = max(r["streams"] for r in records)

    def median(peer: str, key: str) -> float | None:
        rs = [r for r in records if r["peer"] == peer and r["streams"] == streams]
        return _median(rs, key) if rs else None

    lines = [
        f"| Watch fan-out to {streams:,} watchers".replace(",", " ")
        + f" ({_when(before)}load {before['load_average_1m']} → {after['load_average_1m']})"
        + " | etcd 3.4 | dspy-registry | ours ÷ etcd's |",
        "|---|---|---|---|",
    ]
    for label, key, unit in (
        ("last watcher from the call's start, p50", "from_call_start_p50_ms", "ms"),
        ("last watcher from the call's start, p99", "from_call_start_p99_ms", "ms"),
        ("server CPU per delivery", "server_cpu_us_per_delivered_event", "µs"),
        ("server memory per watcher", "server_kib_per_idle_stream", "KiB"),
    ):
        theirs, ours = median("etcd", key), median("registry", key)
        if theirs is None or ours is None:
            continue
        lines.append(f"| {label} | {theirs} {unit} | {ours} {unit} | {_ratio(ours, theirs)} |")
    return lines


def _replica_lines(replicated: list[dict[str, Any]]) -> list[str]:
    if not replicated:
        return []
    by: dict[int, list[dict[str, Any]]] = {}
    for r in replicated:
        by.setdefault(r["replicas"], []).append(r)
    first = replicated[0]
    lines = [
        "",
        "## Watch fan-out over PostgreSQL replicas",
        "",
        f"{first['streams']:,}".replace(",", " ")
        + f" WatchTargets streams dealt over {' / '.join(map(str, sorted(by)))} replicas of one PostgreSQL",
        "database by the same two client processes (their connections split over the replicas'",
        "addresses); one REPLACE deployment through the first replica, which each replica hands to its",
        "own watchers (the others hear of it through LISTEN/NOTIFY). Server CPU is summed over the",
        f"replicas. {first['changes']} changes per measurement; medians over the rounds.",
        "",
        "| replicas | last watcher from the call's start, p50 / p99 | from the reply, p50 | "
        "CreateDeployment p50 | server CPU per delivery (all replicas) | clients' CPU per event |",
        "|---|---|---|---|---|---|",
    ]
    for count in sorted(by):
        rs = by[count]
        lines.append(
            f"| {count} | {_median(rs, 'from_call_start_p50_ms')} / {_median(rs, 'from_call_start_p99_ms')} ms"
            f" | {_median(rs, 'p50_ms')} ms | {_median(rs, 'call_p50_ms')} ms | "
            f"{_median(rs, 'server_cpu_us_per_delivered_event')} µs | "
            f"{_median(rs, 'clients_cpu_us_per_received_event')} µs |"
        )
    return lines


def write_docs(
    records: list[dict[str, Any]],
    before: dict[str, Any],
    after: dict[str, Any],
    seconds: float,
    docs: Path,
    replicated: list[dict[str, Any]] | None = None,
    readme: Path | None = None,
) -> None:
    """docs/benchmarks.md's fan-out section and the chart; and `readme`'s fan-out block, if given."""
    replicated = replicated or []
    if readme is not None:
        page.write_block(readme, "readme-fanout", readme_lines(records, before, after))
    by: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in records:
        by.setdefault((r["peer"], r["streams"]), []).append(r)
    sizes = sorted({r["streams"] for r in records})
    rounds = max(len(v) for v in by.values())
    lines = [
        "Written by `make bench-peers` (`python -m bench.peers`, see its docstring) from its last run;",
        "do not edit by hand. Loopback only; every server fresh per measurement; the peers take turns",
        "in each round, in alternating order. Figures are medians over the rounds.",
        "",
        f"Machine: {before['cpu']}, {before['cpus']} CPUs; load average {before['load_average_1m']} at the",
        f"start, {after['load_average_1m']} at the end{_shared(before)}. Python {before['python']}, grpcio",
        f"{before['grpcio']}, etcd {before['etcd']}. The run took {seconds / 60:.1f} min.",
        "",
        "## Watch fan-out: one change to N watchers",
        "",
        "etcd: one put to a key, each watcher its own Watch stream. dspy-registry: one REPLACE",
        "deployment to staging (CreateDeployment, SQLite, authentication on), each watcher its own",
        "WatchTargets stream. Bare grpc.aio: bench/echo.py publishing one pre-encoded message to every",
        "stream's mailbox, 256 mailboxes per turn of its loop as the registry's hub does, each stream",
        "sending with context.write as the registry's do, in a process tuned as the registry's is",
        "(server/serve.py: the collector's thresholds, malloc), and nothing else (no store, no",
        "authorization, no matching): the floor of a grpc.aio fan-out. The same clients",
        "for all three: two processes, 8 connections each, raw reads, one timestamp per message;",
        f"{records[0]['changes']} changes per measurement, {rounds} rounds. *Last watcher* is the time",
        "from the call's start (and from its reply) until the last stream received the change.",
        "",
    ]
    header = (
        "| watchers | server | last watcher from the call's start, p50 / p99 | from the reply, p50 | "
        "server CPU per delivery | clients' CPU per event | server memory per watcher |"
    )
    for streams in sizes:
        lines += [f"### {streams:,} watchers".replace(",", " "), "", header, "|---|---|---|---|---|---|---|"]
        for peer in PEERS:
            rs = by.get((peer, streams))
            if not rs:
                continue
            lines.append(
                f"| {streams} | {rs[0]['server']} | {_median(rs, 'from_call_start_p50_ms')} / "
                f"{_median(rs, 'from_call_start_p99_ms')} ms | {_median(rs, 'p50_ms')} ms | "
                f"{_median(rs, 'server_cpu_us_per_delivered_event')} µs | "
                f"{_median(rs, 'clients_cpu_us_per_received_event')} µs | "
                f"{_median(rs, 'server_kib_per_idle_stream')} KiB |"
            )
        ours, etcd_rs, echo_rs = (by.get((p, streams)) for p in ("registry", "etcd", "echo"))
        if ours and etcd_rs:
            lines += [
                "",
                "dspy-registry against etcd: last watcher from the call's start "
                + _ratio(_median(ours, "from_call_start_p50_ms"), _median(etcd_rs, "from_call_start_p50_ms"))
                + " (p50), server CPU per delivery "
                + _ratio(
                    _median(ours, "server_cpu_us_per_delivered_event"),
                    _median(etcd_rs, "server_cpu_us_per_delivered_event"),
                )
                + ", memory per watcher "
                + _ratio(
                    _median(ours, "server_kib_per_idle_stream"),
                    _median(etcd_rs, "server_kib_per_idle_stream"),
                )
                + " etcd's.",
            ]
        if ours and echo_rs:
            lines += [
                "Against the bare grpc.aio fan-out: "
                + _ratio(_median(ours, "from_call_start_p50_ms"), _median(echo_rs, "from_call_start_p50_ms"))
                + " its time to the last watcher (p50), "
                + _ratio(
                    _median(ours, "server_cpu_us_per_delivered_event"),
                    _median(echo_rs, "server_cpu_us_per_delivered_event"),
                )
                + " its CPU per delivery.",
            ]
        lines.append("")
    lines += [
        "Round by round (last watcher from the call's start, p50 / p99; server CPU per delivery):",
        "",
        "| watchers | round | " + " | ".join(PEERS) + " |",
        "|---|---|" + "---|" * len(PEERS),
    ]
    for streams in sizes:
        for i in range(rounds):
            cells = []
            for peer in PEERS:
                rs = by.get((peer, streams), [])
                if i < len(rs):
                    r = rs[i]
                    cells.append(
                        f"{r['from_call_start_p50_ms']} / {r['from_call_start_p99_ms']} ms; "
                        f"{r['server_cpu_us_per_delivered_event']} µs"
                    )
                else:
                    cells.append("—")
            lines.append(f"| {streams} | {i + 1} | " + " | ".join(cells) + " |")
    lines += _replica_lines(replicated)
    lines += [
        "",
        f"![Time to the last watcher against the number of watchers]({CHART})",
        "",
    ]
    page.write(docs / PAGE, "fanout", lines)  # the MLflow section, if the page has one, stays
    _chart(by, sizes, docs / CHART)


def _chart(by: dict[tuple[str, int], list[dict[str, Any]]], sizes: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    names = {"etcd": "etcd 3.4", "registry": "dspy-registry", "echo": "bare grpc.aio"}
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=100)
    for peer in PEERS:
        xs = [n for n in sizes if by.get((peer, n))]
        if not xs:
            continue
        p50 = [_median(by[(peer, n)], "from_call_start_p50_ms") for n in xs]
        p99 = [_median(by[(peer, n)], "from_call_start_p99_ms") for n in xs]
        (line,) = axes.plot(xs, p50, marker="o", label=f"{names[peer]} p50")
        axes.plot(xs, p99, marker="x", linestyle="--", color=line.get_color(), label=f"{names[peer]} p99")
    axes.set_xlabel("watchers (one stream each)")
    axes.set_ylabel("ms from the call's start to the last watcher")
    axes.set_title("One change fanned out to N watch streams")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})  # no version stamp: the file changes only with figures
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__)
    parser.add_argument(
        "--streams",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        default=STREAMS,
        help="fan-out sizes, comma-separated (default 1000,5000,10000)",
    )
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--changes", type=int, default=CHANGES, help="changes timed per measurement")
    parser.add_argument(
        "--open-seconds", type=float, default=2.0, help="spread the streams' opening over this long"
    )
    parser.add_argument("--peers", default=",".join(PEERS), help="which of etcd,registry,echo (default all)")
    parser.add_argument(
        "--replicas",
        type=lambda text: tuple(int(n) for n in text.split(",") if n.strip() and int(n) > 0),
        default=REPLICAS,
        help="the registry over this many PostgreSQL replicas, at the largest --streams "
        "(default 1,2,3; 0: none)",
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432"),
        help="PostgreSQL server URL without a database; a throwaway database per measurement",
    )
    parser.add_argument(
        "--docs", type=Path, default=DOCS, help=f"where {PAGE} and {CHART} go (default docs/)"
    )
    parser.add_argument(
        "--readme",
        type=Path,
        help="the README whose bench-peers blocks get this run's figures (default: the project's "
        "README.md when the page goes to docs/, none otherwise)",
    )
    parser.add_argument("--no-docs", action="store_true", help="print the lines only; write no page")
    parser.add_argument(
        "--from",
        dest="lines",
        type=Path,
        help="measure nothing: write the page from a saved run's JSON lines",
    )
    parser.add_argument(
        "--only", choices=page.SECTIONS, help="measure one section; the page keeps the other (bench/page.py)"
    )
    args = parser.parse_args(argv)
    readme = args.readme or (README if args.docs.resolve() == DOCS.resolve() else None)
    if args.no_docs:
        readme = None
    if args.lines is not None:
        saved = [json.loads(x) for x in args.lines.read_text().splitlines() if x.startswith("{")]
        machines = [r for r in saved if r["figure"] == "machine" and "section" not in r]
        took = next((r["seconds"] for r in saved if r["figure"] == "docs"), 0)
        fanouts = [r for r in saved if r["figure"] == "fanout"]
        spread = [r for r in saved if r["figure"] == "fanout_replicas"]
        if fanouts:
            last = machines[-1] if len(machines) > 1 else machines[0]
            write_docs(fanouts, machines[0], last, took, args.docs, spread, readme)
        mlflow_section.write_from(saved, args.docs / PAGE, readme)
        return 0
    if args.only == "mlflow":
        mlflow_section.section(args.rounds, machine, None if args.no_docs else args.docs / PAGE, readme)
        return 0
    peers = [p for p in PEERS if p in args.peers.split(",")]
    options = Options(seconds=0, warmup=0, channels=1, server_log_level="warning", postgres=args.postgres)
    started = time.monotonic()
    before = {"at": datetime.now(UTC).isoformat(timespec="seconds"), **machine()}
    emit({"figure": "machine", **before})
    records: list[dict[str, Any]] = []
    replicated: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        order = peers if round_ % 2 == 0 else list(reversed(peers))
        for streams in args.streams:
            for peer in order:
                record = measure(peer, streams, options, args.open_seconds, args.changes) | {
                    "round": round_ + 1
                }
                emit(record)
                records.append(record)
        counts = args.replicas if round_ % 2 == 0 else tuple(reversed(args.replicas))
        for count in counts:
            record = measure_replicas(count, max(args.streams), options, args.open_seconds, args.changes)
            record["round"] = round_ + 1
            emit(record)
            replicated.append(record)
    after = {"at": datetime.now(UTC).isoformat(timespec="seconds"), **machine()}
    emit({"figure": "machine", **after})
    # Whole seconds, as the `docs` line saves them: a page written again from the saved lines (`--from`)
    # must say the same run time (32.8 s and the saved 33 s are 0.5 and 0.6 min).
    seconds = round(time.monotonic() - started)
    if not args.no_docs:
        write_docs(records, before, after, seconds, args.docs, replicated, readme)
        emit(
            {
                "figure": "docs",
                "written": [str(args.docs / PAGE), str(args.docs / CHART)],
                "seconds": round(seconds),
            }
        )
    else:
        print(json.dumps({"figure": "done", "seconds": round(seconds)}))
    if args.only is None:
        docs = None if args.no_docs else args.docs / PAGE
        mlflow_section.section(args.rounds, machine, docs, readme, run_load=before["load_average_1m"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m bench.register_parts`: where an auto-deploying registration's server CPU goes.

Each part is one JSON line, from a server run in this process on a throwaway SQLite database
(authentication on, the default environments), 16 registrations at once like `bench --only register`:

  servicer  RegistryServicer.RegisterProgram called directly, no gRPC: validation, the artifact's
            parse and scan, the write transaction with its auto-deploy, the response. The process's
            CPU per registration (the COMMIT's thread included) and the writer's batch size.
  floor     the server over gRPC with RegisterProgram answering a prebuilt response at once, driven
            by bench.loadgen's register workload: transport, authentication, the handler.
  grpc      the same server as it is, the same load: the whole registration, and its batch size.
  wal       the `grpc` load with SQLite's checkpoints off: the write-ahead log's frames (pages
            written) per registration, by the table or index each page belongs to.

The parts' CPU are the process's own (`time.process_time`), warm-up included in `floor` and `grpc`;
on a shared machine compare them within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dspy_registry.server.api.registry import RegistryServicer
from dspy_registry.server.app import REGISTRY_SERVICE, App
from dspy_registry.server.config import Config
from dspy_registry.server.store import sqlite as sqlite_store
from dspy_registry.v1 import registry_pb2 as pb

from . import fixtures
from .common import emit, run

CLIENTS = 16
WARMUP = 200  # registrations before `servicer` counts


def _app(tmp: Path) -> App:
    url = f"sqlite:///{tmp / 'registry.db'}"
    return App(Config(listen="127.0.0.1:0", database=url, admin_token_file=str(tmp / "admin.token")))


@contextmanager
def _commits(app: App) -> Iterator[list[int]]:
    """Counts the writer's COMMITs (one per batch) while the block runs."""
    store = app.services.store
    assert isinstance(store, sqlite_store.SqliteStore)
    count = [0]
    submit = store._fsync.submit

    def counted(fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
        count[0] += 1
        return submit(fn, *args)

    store._fsync.submit = counted  # type: ignore[method-assign,assignment]
    try:
        yield count
    finally:
        store._fsync.submit = submit  # type: ignore[method-assign]


def _servicer(app: App) -> RegistryServicer:
    servicer = app.services.servicers[REGISTRY_SERVICE.full_name]
    assert isinstance(servicer, RegistryServicer)
    return servicer


async def servicer(registrations: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dspy-registry-parts-") as tmp:
        app = _app(Path(tmp))
        await app.start()
        try:
            s = _servicer(app)
            await s.RegisterSignature(fixtures.signature_request(), None)  # type: ignore[arg-type]
            for i in range(WARMUP):
                request = fixtures.register_request(f"0.9.{i}", 10**9 + i)
                await s.RegisterProgram(request, None)  # type: ignore[arg-type]
            numbers = iter(range(registrations))

            async def client() -> None:
                for n in numbers:
                    await s.RegisterProgram(fixtures.register_request(f"1.0.{n}", n), None)  # type: ignore[arg-type]

            with _commits(app) as commits:
                cpu, start = time.process_time(), time.perf_counter()
                await asyncio.gather(*(client() for _ in range(CLIENTS)))
                cpu, wall = time.process_time() - cpu, time.perf_counter() - start
        finally:
            await app.stop(grace=0)
    return {
        "part": "servicer",
        "registrations": registrations,
        "cpu_us_per_registration": round(cpu / registrations * 1e6, 1),
        "rate_per_s": round(registrations / wall, 1),
        "batch": round(registrations / max(1, commits[0]), 1),
    }


async def over_grpc(part: str, seconds: float) -> dict[str, Any]:
    """`floor`, `grpc` or `wal` (see the module's docstring)."""
    if part == "wal":
        sqlite_store.PRAGMAS = (*sqlite_store.PRAGMAS, "PRAGMA wal_autocheckpoint=0")  # type: ignore[assignment]
    register = RegistryServicer.RegisterProgram
    if part == "floor":
        canned = pb.RegisterProgramResponse(created=True)

        async def answer(self: RegistryServicer, request: Any, context: Any) -> pb.RegisterProgramResponse:
            return canned

        # Before the server starts: its handlers take the servicer's methods as they start.
        RegistryServicer.RegisterProgram = answer  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory(prefix="dspy-registry-parts-") as tmp:
        app = _app(Path(tmp))
        try:
            port = await app.start()
        finally:
            RegistryServicer.RegisterProgram = register  # type: ignore[method-assign]
        try:
            s = _servicer(app)
            await s.RegisterSignature(fixtures.signature_request(), None)  # type: ignore[arg-type]
            store = app.services.store
            assert isinstance(store, sqlite_store.SqliteStore) and store._writer is not None
            if part == "wal":
                store._writer.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            command = [sys.executable, "-m", "bench.loadgen", "--target", f"127.0.0.1:{port}"]
            command += ["--workload", "register", "--concurrency", str(CLIENTS), "--seconds", str(seconds)]
            command += ["--warmup", "1", "--channels", "2", "--token-file", str(Path(tmp, "admin.token"))]
            with _commits(app) as commits:
                cpu = time.process_time()
                load = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE)
                out, _ = await load.communicate()
                cpu = time.process_time() - cpu
            result = json.loads(out.decode().strip().splitlines()[-1])
            calls = result["calls"] + result["warmup_calls"]
            record = {
                "part": part,
                "calls": calls,
                "throughput_per_s": result["throughput_per_s"],
                "p50_ms": result["p50_ms"],
                "cpu_us_per_call": round(cpu / max(1, calls) * 1e6, 1),
            }
            if part != "floor":
                record["batch"] = round(calls / max(1, commits[0]), 1)
            if part == "wal":
                shutil.copy(Path(tmp, "registry.db-wal"), Path(tmp, "copy.wal"))
        finally:
            await app.stop(grace=0)
        if part == "wal":
            record |= _frames(Path(tmp), calls)
    return record


def _frames(tmp: Path, calls: int) -> dict[str, Any]:
    """The copied WAL's frames per registration, by the b-tree (dbstat) each page belongs to."""
    data = Path(tmp, "copy.wal").read_bytes()
    page_size = struct.unpack(">I", data[8:12])[0]
    pages: list[int] = []
    offset = 32  # the WAL header; then each frame: a 24-byte header and a page
    while offset + 24 + page_size <= len(data):
        pages.append(struct.unpack(">I", data[offset : offset + 4])[0])
        offset += 24 + page_size
    db = sqlite3.connect(Path(tmp, "registry.db"))
    try:
        owner = {int(page): str(name) for name, page in db.execute("SELECT name, pageno FROM dbstat")}
    finally:
        db.close()
    by = collections.Counter(owner.get(page, "?") for page in pages)
    return {
        "frames_per_call": round(len(pages) / max(1, calls), 2),
        "frames_by_btree": {name: round(n / max(1, calls), 2) for name, n in by.most_common()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.register_parts", description=__doc__)
    parser.add_argument("--parts", default="servicer,floor,grpc,wal", help="comma-separated, in this order")
    parser.add_argument("--registrations", type=int, default=3000, help="servicer: how many")
    parser.add_argument("--seconds", type=float, default=6.0, help="floor, grpc, wal: the measured window")
    args = parser.parse_args(argv)
    for part in args.parts.split(","):
        if part == "servicer":
            emit(run(servicer(args.registrations)))
        elif part in ("floor", "grpc", "wal"):
            emit(run(over_grpc(part, args.seconds)))
        else:
            parser.error(f"no part {part!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

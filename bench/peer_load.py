"""`python -m bench.peer_load`: the load generator of the MLflow comparison (bench/mlflow_peer.py).

Runs in a process of its own, on the project's .venv, never in a server's process; prints one
JSON line. Two commands:

  register  registers `--versions` new versions of one model/program with `--clients` workers
            taking the next number from one shared counter, each one call at a time; times each
            registration and checks what came back: every version the server assigned is new
            (unique) and together they are 1..N with none missing (gapless), and the store then
            lists exactly as many. No retries: a refused registration counts as an error.
              mlflow    PUT the artifact through MLflow's artifact proxy
                        (/api/2.0/mlflow-artifacts/artifacts/bench/N/program.json), then
                        POST /api/2.0/mlflow/model-versions/create with that source; MLflow
                        numbers the version (1, 2, 3 ...). `--artifact-bytes 0`: metadata only.
              registry  RegisterProgram with no version and change_type PATCH, so the server
                        numbers it (0.0.1, 0.0.2 ...), and a distinct artifact per call.
  resolve   keeps `--concurrency` MLflow alias lookups in flight for `--seconds` after a
            `--warmup`: GET /api/2.0/mlflow/registered-models/alias (what an MLflow client's
            get_model_version_by_alias sends). dspy-registry's side of this is bench.loadgen's
            `get_env`, the same process model over gRPC.

The HTTP client is aiohttp (a server dependency of the project, so nothing is added): one
session per process, at most one connection per worker; `--no-keep-alive` closes each
connection after its request (aiohttp's force_close), which is how MLflow's multi-worker
uvicorn is measured at its best (bench/mlflow_peer.py says why).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import grpc

from dspy_registry.v1 import registry_pb2 as pb

from . import fixtures
from .common import REGISTER_METHOD, emit, percentile, run
from .loadgen import bearer_metadata

MODEL = "p"  # the MLflow registered model; dspy-registry's program is fixtures.PROGRAM, also `p`
ALIAS = "development"  # the alias the resolve workload looks up, as ours resolves development
CALL_TIMEOUT_S = 30.0
LIST_METHOD = "/dspy_registry.v1.RegistryService/ListProgramVersions"
ALIAS_ROUTE = "/api/2.0/mlflow/registered-models/alias"  # GET: get_model_version_by_alias
PRELOAD = len(fixtures.PRELOAD_VERSIONS)  # as many versions as the registry's preload
# Each MLflow version's artifact: as big as the registry's (0 would make it metadata only).
ARTIFACT_BYTES_MLFLOW = fixtures.ARTIFACT_BYTES

# One registration: given its number, returns the version the server assigned.
Register = Callable[[int], Awaitable[str]]


class Refused(Exception):
    """A call the server answered with an error: its status (HTTP) or code (gRPC) names it."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def versions_check(assigned: list[str]) -> dict[str, Any]:
    """Whether the versions the server handed out are unique and number 1..N with no gap.

    MLflow numbers versions 1, 2, 3 ...; the registry's automatic patch bumps give 0.0.1,
    0.0.2 ...: either way the last number is what is compared.
    """
    numbers = [int(v.rsplit(".", 1)[-1]) for v in assigned]
    unique = len(set(numbers)) == len(numbers)
    return {
        "versions_assigned": len(numbers),
        "versions_unique": unique,
        "versions_gapless": unique and sorted(numbers) == list(range(1, len(numbers) + 1)),
    }


class MLflow:
    """The REST calls of MLflow's model registry that the workloads make, over one aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base

    async def call(self, method: str, route: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.session.request(method, f"{self.base}/api/2.0/mlflow/{route}", json=body) as r:
            if r.status != 200:
                await r.read()
                raise Refused(f"HTTP {r.status}")
            reply: dict[str, Any] = await r.json()
            return reply

    async def model(self, name: str) -> Register:
        """Create registered model `name` and a run to hold its artifacts; return its registration."""
        await self.call("POST", "registered-models/create", {"name": name})
        info = (await self.call("POST", "runs/create", {"experiment_id": "0"}))["run"]["info"]
        run_id, artifacts = info["run_id"], info["artifact_uri"]  # mlflow-artifacts:/0/<run>/artifacts
        upload = (
            f"{self.base}/api/2.0/mlflow-artifacts/artifacts/{artifacts.removeprefix('mlflow-artifacts:/')}"
        )

        async def one(n: int) -> str:
            if ARTIFACT_BYTES_MLFLOW:
                async with self.session.put(f"{upload}/v{n}/program.json", data=fixtures.artifact(n)) as r:
                    await r.read()
                    if r.status != 200:
                        raise Refused(f"artifact HTTP {r.status}")
            # MLflow 3 refuses a source that is not within the artifacts of the run named with it.
            body = {"name": name, "source": f"{artifacts}/v{n}", "run_id": run_id}
            version: str = (await self.call("POST", "model-versions/create", body))["model_version"][
                "version"
            ]
            return version

        return one

    async def stored(self, name: str) -> int:
        """How many versions of the model MLflow lists (search_model_versions, page by page)."""
        count, token = 0, ""
        while True:
            params = {"filter": f"name='{name}'", "max_results": "1000"}
            if token:
                params["page_token"] = token
            route = f"{self.base}/api/2.0/mlflow/model-versions/search"
            async with self.session.get(route, params=params) as r:
                r.raise_for_status()
                page = await r.json()
            count += len(page.get("model_versions", []))
            token = page.get("next_page_token", "")
            if not token:
                return count


def _registry_register(
    channel: grpc.aio.Channel, name: str, metadata: tuple[tuple[str, str], ...] | None
) -> Register:
    call = channel.unary_unary(REGISTER_METHOD, None, pb.RegisterProgramResponse.FromString)

    async def one(n: int) -> str:
        request = pb.RegisterProgramRequest(
            spec=pb.ProgramVersionSpec(
                program=name, signature=fixtures.SIGNATURE_REF, change_type=pb.CHANGE_TYPE_PATCH
            ),
            artifact=fixtures.artifact(n),
        )
        try:
            reply = await call(request.SerializeToString(), timeout=CALL_TIMEOUT_S, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise Refused(exc.code().name) from None
        version: str = reply.program_version.version
        return version

    return one


async def _registrations(register: Register, versions: int, clients: int, seconds: float) -> dict[str, Any]:
    """Up to `versions` registrations, none started after `seconds` (a slow server stops early)."""
    numbers = itertools.count()
    latencies: list[float] = []
    assigned: list[str] = []
    errors: Counter[str] = Counter()

    async def worker() -> None:
        clock = time.perf_counter_ns
        while (began := clock()) < deadline and (n := next(numbers)) < versions:
            try:
                assigned.append(await register(n))
            except Refused as exc:
                errors[exc.code] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:  # no answer at all
                errors[type(exc).__name__] += 1
            latencies.append((clock() - began) / 1e6)

    start = time.perf_counter()
    deadline = time.perf_counter_ns() + int(seconds * 1e9)
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "versions": len(latencies),  # registrations made (all of them unless `seconds` ran out)
        "clients": clients,
        "seconds": round(elapsed, 3),
        "throughput_per_s": round(len(assigned) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "errors": sum(errors.values()),
        "error_codes": dict(errors),
        **versions_check(assigned),
    }


async def _registry_stored(
    channel: grpc.aio.Channel, name: str, metadata: tuple[tuple[str, str], ...] | None
) -> int:
    """How many versions the program has (ListProgramVersions' total_size)."""
    call = channel.unary_unary(LIST_METHOD, None, pb.ListProgramVersionsResponse.FromString)
    request = pb.ListProgramVersionsRequest(parent=f"programs/{name}", page_size=1)
    reply = await call(request.SerializeToString(), timeout=CALL_TIMEOUT_S, metadata=metadata)
    total: int = reply.total_size
    return total


def _session(connections: int, keep_alive: bool) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, force_close=not keep_alive)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S))


async def register(args: argparse.Namespace) -> dict[str, Any]:
    if args.peer == "mlflow":
        async with _session(args.clients, args.keep_alive) as session:
            mlflow = MLflow(session, args.target)
            one = await mlflow.model(args.name)  # the model and its run, outside the timing
            result = await _registrations(one, args.versions, args.clients, args.max_seconds)
            result["stored"] = await mlflow.stored(args.name)
        return result | {"keep_alive": args.keep_alive}
    metadata = bearer_metadata(args.token_file)
    async with grpc.aio.insecure_channel(args.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10.0)
        register_one = _registry_register(channel, args.name, metadata)
        result = await _registrations(register_one, args.versions, args.clients, args.max_seconds)
        result["stored"] = await _registry_stored(channel, args.name, metadata)
    return result


async def preload(args: argparse.Namespace) -> dict[str, Any]:
    """MLflow model MODEL with PRELOAD versions, ALIAS on the last: what `resolve` looks up."""
    async with _session(1, True) as session:
        mlflow = MLflow(session, args.target)
        one = await mlflow.model(MODEL)
        versions = [await one(10**9 + i) for i in range(PRELOAD)]
        await mlflow.call(
            "POST", "registered-models/alias", {"name": MODEL, "alias": ALIAS, "version": versions[-1]}
        )
        async with session.get(f"{args.target}{ALIAS_ROUTE}", params={"name": MODEL, "alias": ALIAS}) as r:
            got = (await r.json())["model_version"]["version"]
    if got != versions[-1]:
        raise RuntimeError(f"alias {ALIAS} resolves to version {got}, not {versions[-1]}")
    return {"model": MODEL, "versions": versions, "alias": ALIAS}


async def resolve(args: argparse.Namespace) -> dict[str, Any]:
    url = f"{args.target}{ALIAS_ROUTE}"
    params = {"name": MODEL, "alias": ALIAS}
    errors: Counter[str] = Counter()

    async def window(session: aiohttp.ClientSession, seconds: float) -> tuple[list[int], float]:
        latencies: list[int] = []
        clock = time.perf_counter_ns
        start = clock()
        deadline = start + int(seconds * 1e9)

        async def worker() -> None:
            while (began := clock()) < deadline:
                try:
                    async with session.get(url, params=params) as r:
                        await r.read()
                        if r.status != 200:
                            errors[f"HTTP {r.status}"] += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors[type(exc).__name__] += 1
                latencies.append(clock() - began)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        return latencies, (clock() - start) / 1e9

    async with _session(args.concurrency, args.keep_alive) as session:
        if args.warmup > 0:
            await window(session, args.warmup)
        errors.clear()
        latencies, elapsed = await window(session, args.seconds)
    ms = sorted(ns / 1e6 for ns in latencies)
    failed = sum(errors.values())
    return {
        "calls": len(ms),
        "seconds": round(elapsed, 3),
        "throughput_per_s": round((len(ms) - failed) / elapsed, 1),
        "p50_ms": round(percentile(ms, 0.50), 2),
        "p99_ms": round(percentile(ms, 0.99), 2),
        "errors": failed,
        "error_codes": dict(errors),
        "concurrency": args.concurrency,
        "keep_alive": args.keep_alive,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peer_load", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    reg = commands.add_parser("register", help="register N versions, unique and gapless?")
    reg.add_argument("--peer", choices=["mlflow", "registry"], required=True)
    reg.add_argument("--name", required=True, help="the model (MLflow) or program to register versions of")
    reg.add_argument("--versions", type=int, default=1000)
    reg.add_argument("--clients", type=int, default=1)
    reg.add_argument("--max-seconds", type=float, default=60.0, help="start no registration after this long")
    res = commands.add_parser("resolve", help="MLflow alias lookups in flight for a while")
    res.add_argument("--concurrency", type=int, default=16)
    res.add_argument("--seconds", type=float, default=5.0)
    res.add_argument("--warmup", type=float, default=1.0)
    pre = commands.add_parser("preload", help="MLflow: the model and alias `resolve` looks up")
    for sub in (reg, res, pre):
        sub.add_argument("--target", required=True, help="MLflow: http://host:port; registry: host:port")
        sub.add_argument("--token-file", help="registry: the bearer token to send")
        sub.add_argument(
            "--no-keep-alive",
            dest="keep_alive",
            action="store_false",
            help="MLflow: a new connection per request",
        )
    args = parser.parse_args(argv)
    # The client's own collector pauses would show up as server latency.
    gc.collect()
    gc.freeze()
    emit(run({"register": register, "resolve": resolve, "preload": preload}[args.command](args)))


if __name__ == "__main__":
    main()

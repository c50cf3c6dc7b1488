"""PostgreSQL faults under load: the server's database connections go through a proxy the test breaks.

A server process (`dspy-registry serve`) reaches PostgreSQL through a TCP
proxy of the test's own (tests/tcp_proxy.py). While clients write and read
through the real client, the test terminates the server's backends
(pg_terminate_backend, what a restart or a failover does to them), stalls
the connections (a partition, or a database that hangs), cuts them, and
answers like a PostgreSQL starting up. Throughout:

- every call ends OK or UNAVAILABLE (the status the client retries), never
  INTERNAL or UNKNOWN, and never waits for its deadline;
- health goes NOT_SERVING while the database is away and SERVING when it is
  back, by itself;
- every write the server acknowledged is there afterwards, once.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dspy_registry.client import Registry
from dspy_registry.client.errors import RegistryError
from tests.conftest import PG_ADMIN_URL, SKIP_POSTGRES, PostgresDatabases
from tests.e2e.conftest import ServerProcess
from tests.eventually import until
from tests.factories import dspy_state, spec_proto
from tests.reliability.conftest import Tally, budget, rss_mib
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres

SECONDS = budget(20, 0.1)  # one cycle of every fault inside `make test`; as many as fit under soak
ALLOWED = {"OK", "UNAVAILABLE"}  # what a call may end with while the database comes and goes
DEADLINE = 20.0  # each call's; a call that waits for it has hung on a database that is away
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING: int = health_pb2.HealthCheckResponse.SERVING


@dataclass
class Load:
    """Writers register versions of a program each; readers read the latest acknowledged ones."""

    client: Registry
    tally: Tally
    acknowledged: dict[str, list[str]] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def outcome(self, code: str) -> None:
        self.tally.operations += 1
        self.tally.codes[code] += 1

    async def writer(self, program: str) -> None:
        done = self.acknowledged.setdefault(program, [])
        n = 0
        while not self.stop.is_set():
            n += 1
            version = f"1.0.{n}"
            try:
                await self.client.register_program(
                    program, program=dspy_state(version), signature_name="sig", version=version
                )
            except RegistryError as err:
                self.outcome(err.code.name)
                await asyncio.sleep(0.05)  # UNAVAILABLE comes at once while the database is away
                continue
            done.append(version)
            self.outcome("OK")

    async def reader(self) -> None:
        while not self.stop.is_set():
            programs = [p for p, versions in self.acknowledged.items() if versions]
            try:
                for program in programs:
                    await self.client.get_program_version(program)
                await self.client.get_signature("sig")
            except RegistryError as err:
                self.outcome(err.code.name)
                await asyncio.sleep(0.05)
                continue
            self.outcome("OK")


async def _health(address: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5
            )
        except grpc.aio.AioRpcError:
            return -1
        return int(response.status)


async def _terminate_backends(database: str) -> int:
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        rows = await admin.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
    finally:
        await admin.close()
    return len(rows)


async def _outage(
    name: str,
    begin: Callable[[], None],
    proxy: TcpProxy,
    server: ServerProcess,
    probe: Registry,
    tally: Tally,
) -> None:
    """One fault: health must say NOT_SERVING, calls must fail fast, and all must come back by itself."""
    begin()
    tally.kills += 1

    async def not_serving() -> bool:
        return await _health(server.address) == NOT_SERVING

    await until(not_serving, f"health NOT_SERVING during the {name}", seconds=15)
    # Issued while the fault lasts (it is lifted only after this call ended): UNAVAILABLE, not a
    # wait for the deadline, which would be DEADLINE_EXCEEDED.
    with pytest.raises(RegistryError) as refused:
        await probe.register_program(
            "probe", program=dspy_state(name), signature_name="sig", version=f"0.0.{tally.kills}"
        )
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE, refused.value
    tally.codes[refused.value.code.name] += 1
    tally.operations += 1
    proxy.resume()

    async def serving() -> bool:
        return await _health(server.address) == SERVING

    await until(serving, f"health SERVING again after the {name}", seconds=20)


@pytest.mark.timeout(int(SECONDS) + 150)
async def test_postgres_faults_under_load(
    pg_databases: PostgresDatabases, tmp_path: Path, tally: Tally
) -> None:
    if SKIP_POSTGRES:
        pytest.skip("DSPY_REGISTRY_SKIP_POSTGRES=1")
    url = await pg_databases.create()
    database = url.rsplit("/", 1)[1]
    proxy = TcpProxy.in_front_of(url)
    server = ServerProcess(proxy.url(url), tmp_path / "server.log")
    try:
        server.start()
        assert server.process is not None
        token = server.token_file.read_text().strip()
        tally.memory_before_mib = rss_mib(server.process.pid)
        client = Registry.connect(server.address, token=token, timeout=DEADLINE, retries=3)
        probe = Registry.connect(server.address, token=token, timeout=DEADLINE, retries=0)
        async with client, probe:
            await client.register_signature("sig", signature=spec_proto(), version="1.0.0")
            load = Load(client, tally)
            workers = [asyncio.create_task(load.writer(f"prog{i}")) for i in range(3)]
            workers += [asyncio.create_task(load.reader()) for _ in range(3)]
            deadline = time.monotonic() + SECONDS
            try:
                while True:
                    started = time.monotonic()
                    for _ in range(3):
                        await asyncio.sleep(0.3)
                        tally.kills += await _terminate_backends(database)
                    await asyncio.sleep(0.5)
                    await _outage("stall", proxy.stall, proxy, server, probe, tally)
                    await _outage("cut", proxy.cut, proxy, server, probe, tally)
                    await _outage("restart", proxy.starting, proxy, server, probe, tally)
                    if time.monotonic() + (time.monotonic() - started) > deadline:
                        break
                await asyncio.sleep(0.5)  # the load runs on a database that is back
            finally:
                load.stop.set()
                await asyncio.gather(*workers)
            # Recovered by itself: a write and a read with no retry needed.
            await probe.register_program(
                "probe", program=dspy_state("after"), signature_name="sig", version="9.9.9"
            )
            assert (await probe.get_program_version("probe")).version == "9.9.9"
            for program, versions in load.acknowledged.items():
                listed = [v.version async for v in client.list_program_versions(program)]
                tally.writes_checked += len(versions)
                tally.lost += len(set(versions) - set(listed))
                tally.duplicates += len(listed) - len(set(listed))
        tally.memory_after_mib = rss_mib(server.process.pid)
    finally:
        proxy.resume()  # the server shuts down on a database that answers, then the proxy goes
        if server.process is not None and server.process.poll() is None:
            try:
                server.stop()
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()
                raise
        proxy.close()
    assert tally.writes_checked > 0 and tally.lost == 0 and tally.duplicates == 0, tally
    assert set(tally.codes) <= ALLOWED, tally.codes
    assert tally.codes["OK"] > 0 and tally.codes["UNAVAILABLE"] > 0, tally.codes
    log = server.log()
    assert "store unavailable" in log and "store available again" in log

"""SQLite on a disk that fills up: writes refused, reads served, health telling it, and recovery.

A server process keeps its database on a small tmpfs of the test's own.
Filled until writes fail, writes get RESOURCE_EXHAUSTED (limit
`database_disk`) and the health service `dspy_registry.writes` NOT_SERVING,
while "" stays SERVING and reads are answered; freed, writes resume by
themselves. Restarted on a full disk, the server starts read-only instead of
refusing to start, and turns writable when space returns. Every acknowledged
write is there throughout, and `PRAGMA integrity_check` is ok at the end.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dspy_registry.client import Registry
from dspy_registry.client.errors import RegistryError
from dspy_registry.server.store.sqlite_connections import MIN_FREE_BYTES
from tests.e2e.conftest import ServerProcess
from tests.eventually import until
from tests.factories import dspy_state, spec_proto
from tests.reliability.conftest import Tally, budget, rss_mib
from tests.small_disk import fill, free_bytes, small_disk

SECONDS = budget(5, 0.05)  # one round of fill and free, then the restart, inside `make test`; more under soak
WRITES = "dspy_registry.writes"
SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING
ARTIFACT_PAD = 40_000  # each version's artifact: the disk fills in a few dozen writes
ROOM_FOR_A_ROUND = 16 * 1024 * 1024


async def _health(address: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return int(response.status)


class Writes:
    """Versions of one program, registered one after the other; those acknowledged are remembered."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.acknowledged: list[str] = []
        self.n = 0

    async def one(self, client: Registry) -> RegistryError | None:
        self.n += 1
        version = f"1.0.{self.n}"
        self.tally.operations += 1
        try:
            await client.register_program(
                "prog", program=dspy_state(version, pad=ARTIFACT_PAD), signature_name="sig", version=version
            )
        except RegistryError as err:
            self.tally.codes[err.code.name] += 1
            return err
        self.tally.codes["OK"] += 1
        self.acknowledged.append(version)
        return None

    async def until_refused(self, client: Registry) -> RegistryError:
        for _ in range(1000):
            if (refused := await self.one(client)) is not None:
                return refused
        raise AssertionError("the disk never filled")

    async def check(self, client: Registry) -> None:
        """Every acknowledged version is listed, once; and readable."""
        listed = [v.version async for v in client.list_program_versions("prog")]
        self.tally.writes_checked = len(self.acknowledged)
        self.tally.lost = len(set(self.acknowledged) - set(listed))
        self.tally.duplicates = len(listed) - len(set(listed))
        assert self.tally.lost == 0 and self.tally.duplicates == 0, self.tally
        if self.acknowledged:
            latest = await client.get_program_version("prog", self.acknowledged[-1])
            assert latest.version == self.acknowledged[-1]


def _read_only_refusal(err: RegistryError) -> None:
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED, err
    quota = err.detail(error_details_pb2.QuotaFailure)
    assert quota is not None and quota.violations[0].subject == "database_disk", err.details


async def _writes(address: str, status: int, what: str) -> None:
    async def there() -> bool:
        return await _health(address, WRITES) == status

    await until(there, what, seconds=15)


@pytest.mark.timeout(int(SECONDS) + 120)
async def test_disk_full(tmp_path: Path, tally: Tally) -> None:
    # A tmpfs takes memory only for what is written: room for the data (twice: the WAL, then the
    # database file) of every round a soak has time for, beside the filler.
    with small_disk(tmp_path / "disk", "64m") as disk:
        database = f"sqlite:///{disk / 'registry.db'}"
        server = ServerProcess(database, tmp_path / "server.log")
        writes = Writes(tally)
        try:
            server.start()
            assert server.process is not None
            tally.memory_before_mib = rss_mib(server.process.pid)
            token = server.token_file.read_text().strip()
            async with Registry.connect(server.address, token=token) as client:
                await client.register_signature("sig", signature=spec_proto(), version="1.0.0")
                deadline = time.monotonic() + SECONDS
                while True:
                    started = time.monotonic()
                    # Filled until writes fail: RESOURCE_EXHAUSTED, reads still served, health telling it.
                    filler = fill(disk, leave=MIN_FREE_BYTES + 512 * 1024, name=f"filler{writes.n}")
                    _read_only_refusal(await writes.until_refused(client))
                    await _writes(server.address, NOT_SERVING, f"{WRITES} NOT_SERVING on a full disk")
                    assert await _health(server.address) == SERVING  # reads are served: keep routing them
                    await writes.check(client)
                    refused = await writes.one(client)
                    assert refused is not None and "read-only" in refused.message, refused
                    _read_only_refusal(refused)
                    # Space freed: writes resume by themselves.
                    filler.unlink()
                    await _writes(server.address, SERVING, f"{WRITES} SERVING once space is freed")
                    assert await writes.one(client) is None
                    if time.monotonic() + (time.monotonic() - started) > deadline:
                        break
                    if free_bytes(disk) < ROOM_FOR_A_ROUND:
                        break  # the data itself has taken the disk: a fuller one would test nothing new
            # Restarted on a disk full to the last byte: read-only, not refusing to start.
            assert server.stop() == 0
            filler = fill(disk, leave=0, name="filler-restart")
            server.start()
            assert "the store opened read-only" in server.log()
            async with Registry.connect(server.address, token=token) as client:
                assert await _health(server.address) == SERVING
                assert await _health(server.address, WRITES) == NOT_SERVING
                await writes.check(client)  # nothing acknowledged before the restart is missing
                refused = await writes.one(client)
                assert refused is not None and "read-only" in refused.message, refused
                _read_only_refusal(refused)
                filler.unlink()
                await _writes(server.address, SERVING, f"{WRITES} SERVING after a read-only start")
                assert await writes.one(client) is None
                await writes.check(client)
            tally.memory_after_mib = rss_mib(server.process.pid)
            assert server.stop() == 0
        finally:
            if server.process is not None and server.process.poll() is None:
                server.process.kill()
                server.process.wait()
        check = sqlite3.connect(disk / "registry.db")
        try:
            assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            check.close()
    assert set(tally.codes) <= {"OK", "RESOURCE_EXHAUSTED"}, tally.codes

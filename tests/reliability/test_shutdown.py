"""SIGTERM under load: the calls in progress finish, the rest are refused, watchers leave at once.

A server process serves readers, writers and watchers (WatchTargets and
WatchEvents) when it gets SIGTERM, with a grace far longer than anything
takes. Then:

- every unary call ends OK or UNAVAILABLE: the calls the server had begun
  finish, the ones it had not are refused with nothing done; none is
  CANCELLED (grpc cancelled 57 of 64 in-flight calls within 40 ms before);
- every watcher ends UNAVAILABLE, told the revision to resume from;
- the process exits 0 as soon as that is done, not after the grace;
- after a restart every acknowledged write is there, and no refused one.

Each cycle restarts the server on the same store; under `make soak` the
cycles repeat for the test's share of SOAK_MINUTES.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from dspy_registry.client.auth import bearer_interceptors
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc
from tests.e2e.conftest import ServerProcess
from tests.factories import dspy_state
from tests.reliability.conftest import Tally, budget, rss_mib

SECONDS = budget(0, 0.05)  # one cycle per backend inside `make test`; as many as fit under soak
GRACE = 60  # far longer than the calls take: exiting near it means the server waited for nothing
LOAD_SECONDS = 1.0  # of load before each SIGTERM
READERS = WRITERS = 16
SIGNATURE = "signatures/sig/versions/1.0.0"


@dataclass
class Cycle:
    """What one SIGTERM cycle's clients saw."""

    signalled: float = 0.0  # time.monotonic() of the SIGTERM
    codes: dict[str, int] = field(default_factory=dict)
    acknowledged: list[str] = field(default_factory=list)  # versions whose registration was OK
    refused: list[str] = field(default_factory=list)  # versions whose registration was UNAVAILABLE
    watch_messages: int = 0
    watch_ends: list[tuple[str, str]] = field(default_factory=list)  # (code, details)
    watch_ended_after: list[float] = field(default_factory=list)  # seconds from the SIGTERM

    def outcome(self, code: str) -> None:
        self.codes[code] = self.codes.get(code, 0) + 1


async def _until_refused(call: Callable[[], Any], cycle: Cycle) -> str:
    """Make calls until one is not OK (the server stopped taking them); that one's code."""
    while True:
        try:
            await call()
        except grpc.aio.AioRpcError as err:
            cycle.outcome(err.code().name)
            return err.code().name
        cycle.outcome("OK")


async def _reader(stub: pb_grpc.RegistryServiceStub, cycle: Cycle) -> None:
    request = pb.GetProgramVersionRequest(name="programs/prog/versions/latest")
    await _until_refused(lambda: stub.GetProgramVersion(request, timeout=30), cycle)


async def _writer(stub: pb_grpc.RegistryServiceStub, cycle: Cycle, prefix: str) -> None:
    n = 0
    while True:
        n += 1
        version = f"{prefix}.{n}"
        spec = pb.ProgramVersionSpec(program="prog", version=version, signature=SIGNATURE)
        request = pb.RegisterProgramRequest(spec=spec, artifact=dspy_state(version), request_id=version)
        try:
            await stub.RegisterProgram(request, timeout=30)
        except grpc.aio.AioRpcError as err:
            cycle.outcome(err.code().name)
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                cycle.refused.append(version)
            return
        cycle.outcome("OK")
        cycle.acknowledged.append(version)


async def _watcher(stream: Any, cycle: Cycle) -> None:
    try:
        async for _ in stream:
            cycle.watch_messages += 1
        cycle.watch_ends.append(("OK", "ended without a status"))
    except grpc.aio.AioRpcError as err:
        cycle.watch_ends.append((err.code().name, err.details() or ""))
    if cycle.signalled:
        cycle.watch_ended_after.append(time.monotonic() - cycle.signalled)


def _stopped_line(server: ServerProcess) -> dict[str, Any]:
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    stopped: dict[str, Any] = [line for line in lines if line["msg"] == "stopped"][-1]
    return stopped


async def _cycle(server: ServerProcess, number: int, tally: Tally) -> Cycle:
    token = server.token_file.read_text().strip()
    cycle = Cycle()
    channels = [
        grpc.aio.insecure_channel(server.address, interceptors=bearer_interceptors(token)) for _ in range(2)
    ]
    try:
        registry = [pb_grpc.RegistryServiceStub(c) for c in channels]
        deployments = dpb_grpc.DeploymentServiceStub(channels[0])
        targets = dpb.WatchTargetsRequest()
        targets.selectors.add(program="prog")
        events = dpb.WatchEventsRequest()
        events.selectors.add(program="prog")
        streams = [deployments.WatchTargets(targets) for _ in range(2)]
        streams += [deployments.WatchEvents(events) for _ in range(2)]
        for stream in streams:
            await stream.wait_for_connection()
        watchers = [asyncio.create_task(_watcher(s, cycle)) for s in streams]
        workers = [asyncio.create_task(_reader(registry[i % 2], cycle)) for i in range(READERS)]
        workers += [
            asyncio.create_task(_writer(registry[i % 2], cycle, f"{number + 2}.{i}")) for i in range(WRITERS)
        ]
        await asyncio.sleep(LOAD_SECONDS)
        assert not any(w.done() for w in workers), [w.result() for w in workers if w.done()]
        assert server.process is not None
        tally.memory_after_mib = rss_mib(server.process.pid)  # under load, as it gets the signal
        cycle.signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*workers, *watchers), 30)
        code = await asyncio.to_thread(server.process.wait, 30)  # not the grace: the calls are done
        assert code == 0, server.log()[-3000:]
        stopped = _stopped_line(server)
        assert stopped["seconds"] < GRACE / 2, stopped
        print(
            f"SIGTERM with {stopped['calls_in_progress']} calls in progress and "
            f"{stopped['watch_streams_ended']} watch streams: watchers ended within "
            f"{max(cycle.watch_ended_after):.3f} s, the server stopped in {stopped['seconds']} s "
            f"(grace {GRACE} s), {stopped['refused']} calls refused; clients saw {cycle.codes}"
        )
    finally:
        for channel in channels:
            await channel.close(None)
    return cycle


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    """Server processes to kill at the end if the test left them running."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait()


@pytest.mark.timeout(int(SECONDS) + 120)
async def test_sigterm_under_load_finishes_calls_refuses_the_rest_and_ends_watches_at_once(
    servers: list[ServerProcess], database_url: str, tmp_path: Path, tally: Tally
) -> None:
    log = tmp_path / "server.log"

    def serve() -> ServerProcess:
        servers.append(ServerProcess(database_url, log, ["--grace", str(GRACE)]))
        return servers[-1].start()

    server = serve()
    server.register("prog", ["1.0.0"])
    assert server.process is not None
    tally.memory_before_mib = rss_mib(server.process.pid)
    started = time.monotonic()
    number = 0
    while number == 0 or time.monotonic() - started < SECONDS:
        cycle = await _cycle(server, number, tally)
        number += 1
        tally.kills += 1
        for code, n in cycle.codes.items():
            tally.codes[code] += n
        tally.operations += sum(cycle.codes.values())
        tally.watch_events_checked += cycle.watch_messages
        assert set(cycle.codes) <= {"OK", "UNAVAILABLE"}, cycle.codes
        assert len(cycle.watch_ends) == 4
        for code, details in cycle.watch_ends:
            assert code == "UNAVAILABLE" and "resume from revision" in details, cycle.watch_ends
        # The next cycle's server is the check: what was acknowledged is there, what was refused is not.
        server = serve()
        with server.channel() as channel:
            stub = pb_grpc.RegistryServiceStub(channel)
            stored = set()
            page = ""
            while True:
                listed = stub.ListProgramVersions(
                    pb.ListProgramVersionsRequest(parent="programs/prog", page_size=1000, page_token=page)
                )
                stored |= {v.version for v in listed.program_versions}
                page = listed.next_page_token
                if not page:
                    break
        lost = [v for v in cycle.acknowledged if v not in stored]
        applied = [v for v in cycle.refused if v in stored]
        tally.writes_checked += len(cycle.acknowledged) + len(cycle.refused)
        tally.lost += len(lost)
        assert not lost, f"acknowledged but missing: {lost}"
        assert not applied, f"refused UNAVAILABLE, yet applied: {applied}"
    assert server.process is not None
    server.stop()

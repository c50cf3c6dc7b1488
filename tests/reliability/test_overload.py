"""Overload: more than the limits allow is refused, a client that stops reading is cut, memory stays put.

One server process, started with small limits and a one-second send timeout,
takes in turn:

- more watch streams and more calls than its limits: the extra ones are
  refused RESOURCE_EXHAUSTED with a retry hint, not queued, and served again
  once others end;
- watchers whose client stops reading (a 1 KiB HTTP/2 window, keepalive
  still answered): cut with RESOURCE_EXHAUSTED within the send timeout and
  a sweep, while a healthy watcher beside them gets every change;
- more concurrent uploads than the cap: the extra ones refused with a retry
  hint, the others stored with their digest checked, and the server's
  memory growing by far less than the bytes in flight (the chunks are
  spooled as they arrive);
- idle watch streams, with the keepalive settings docs/configuration.md documents,
  held open the whole time and still delivering afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from dspy_registry.client.auth import bearer_interceptors
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc
from tests.e2e.conftest import ServerProcess
from tests.eventually import until
from tests.factories import dspy_state
from tests.reliability.conftest import Tally, budget, rss_mib

# Idle streams' life: inside make test, past the three pings at FREQUENT that would exhaust the
# server's strikes were it to refuse them; under soak, past several at the 10 s docs/configuration.md asks for.
IDLE_SECONDS = budget(20, 0.05)
ROUNDS_SECONDS = budget(0, 0.02)  # the other tests repeat their round for this long under soak
SEND_TIMEOUT = 1.0
MAX_WATCHES = 40
MAX_CALLS = 16
MAX_UPLOADS = 4
STALLED = 20
IDLE = 8
# What docs/configuration.md ("Connections") tells clients: pings every 10 s or more, also with no call.
DOCUMENTED = 10_000
# More often than that, but above the 5 s the server takes pings from: three pings (the server
# allows two strikes) fit in the short run.
FREQUENT = 6_000


def _keepalive(milliseconds: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.keepalive_time_ms", milliseconds),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


STALLING = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
SIGNATURE = "signatures/sig/versions/1.0.0"
WATCH_TARGETS = "/dspy_registry.v1.DeploymentService/WatchTargets"
UPLOAD_PROGRAM = "/dspy_registry.v1.RegistryService/UploadProgram"


class Server:
    """The module's server process and what the tests share on it."""

    def __init__(self, process: ServerProcess) -> None:
        self.process = process
        self.token = process.token_file.read_text().strip()

    @property
    def pid(self) -> int:
        assert self.process.process is not None
        return self.process.process.pid

    def channel(self, options: list[tuple[str, Any]] | None = None) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(
            self.process.address, interceptors=bearer_interceptors(self.token), options=options
        )

    def finished(self, method: str) -> list[str]:
        """The codes of the calls of `method` the server has ended, from its access log."""
        out = []
        for line in self.process.log().splitlines():
            if line.startswith('{"time"') and '"msg": "rpc"' in line:
                parsed = json.loads(line)
                if parsed["method"] == method:
                    out.append(parsed["code"])
        return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("overload")
    flags = [
        "--send-timeout", str(SEND_TIMEOUT),
        "--max-watch-streams", str(MAX_WATCHES),
        "--max-concurrent-calls", str(MAX_CALLS),
        "--max-concurrent-uploads", str(MAX_UPLOADS),
    ]  # fmt: skip
    process = ServerProcess(f"sqlite:///{folder / 'registry.db'}", folder / "server.log", flags)
    try:
        process.start()
        process.register("watched", ["1.0.0", "1.1.0"])
        process.register("idle", ["1.0.0", "1.1.0"], signature=False)
        yield Server(process)
    finally:
        if process.process is not None and process.process.poll() is None:
            process.process.kill()
            process.process.wait()


class Idle:
    """Watch streams opened first and left idle (no change for them, no progress message), on two
    connections that ping: every 10 s as docs/configuration.md asks, and every 6 s."""

    def __init__(self, server: Server) -> None:
        self.channels = [server.channel(_keepalive(DOCUMENTED)), server.channel(_keepalive(FREQUENT))]
        stubs = [dpb_grpc.DeploymentServiceStub(channel) for channel in self.channels]
        self.streams = [_watch(stubs[i % 2], "idle") for i in range(IDLE)]
        self.opened = time.monotonic()


@pytest.fixture(scope="module")
async def idle(server: Server) -> AsyncIterator[Idle]:
    watchers = Idle(server)
    for stream in watchers.streams:
        assert (await stream.read()).WhichOneof("kind") == "snapshot"
    yield watchers
    for channel in watchers.channels:
        await channel.close(None)


def _watch(stub: dpb_grpc.DeploymentServiceStub, program: str) -> Any:
    request = dpb.WatchTargetsRequest(progress_interval=duration_pb2.Duration(seconds=3600))
    request.selectors.add(program=program, environment="development")
    return stub.WatchTargets(request)


def _details(err: Any) -> dict[str, Any]:
    """The QuotaFailure and RetryInfo of a failed call (grpc.aio's or the blocking client's)."""
    out: dict[str, Any] = {}
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for packed in status_pb2.Status.FromString(value).details:
                for kind in (error_details_pb2.QuotaFailure, error_details_pb2.RetryInfo):
                    if packed.Is(kind.DESCRIPTOR):
                        message = kind()
                        packed.Unpack(message)
                        out[kind.__name__] = message
    return out


def _refused_with_a_hint(err: Any, limit: str) -> bool:
    found = _details(err)
    return bool(
        err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        and found["QuotaFailure"].violations[0].subject == limit
        and found["RetryInfo"].retry_delay.ToNanoseconds() > 0
    )


async def _deploy(server: Server, program: str, version: str) -> None:
    async with server.channel() as channel:
        await dpb_grpc.DeploymentServiceStub(channel).CreateDeployment(
            dpb.CreateDeploymentRequest(
                program=program,
                version=version,
                environment="development",
                strategy=dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE),
            )
        )


async def _next_change(stream: Any) -> dpb.WatchTargetsResponse:
    while True:
        message = await asyncio.wait_for(stream.read(), 20)
        assert message is not grpc.aio.EOF, "the stream ended"  # type: ignore[attr-defined]
        if message.WhichOneof("kind") == "changes":
            return message  # type: ignore[no-any-return]


async def _open(stub: dpb_grpc.DeploymentServiceStub) -> Any:
    """A watch on `watched`, once the server has room (streams a previous round ended may linger a moment)."""
    opened: list[Any] = []

    async def room() -> bool:
        stream = _watch(stub, "watched")
        try:
            assert (await stream.read()).WhichOneof("kind") == "snapshot"
        except grpc.aio.AioRpcError as err:
            assert _refused_with_a_hint(err, "watch_streams"), err
            return False
        opened.append(stream)
        return True

    await until(room, "a watch stream opened")
    return opened[0]


async def _rounds(round_: Any) -> None:
    """One round inside `make test`; as many as fit in ROUNDS_SECONDS under soak."""
    started = time.monotonic()
    await round_()
    while time.monotonic() - started < ROUNDS_SECONDS:
        await round_()


@pytest.mark.timeout(int(ROUNDS_SECONDS) + 60)
async def test_streams_and_calls_beyond_the_limits_are_refused_with_a_retry_hint(
    server: Server, idle: Idle, tally: Tally
) -> None:
    async def one_round() -> None:
        async with server.channel() as channel:
            stub = dpb_grpc.DeploymentServiceStub(channel)
            extra = [await _open(stub) for _ in range(MAX_WATCHES - IDLE)]
            tally.operations += len(extra)
            tally.codes["OK"] += len(extra)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _watch(stub, "watched").read()
            assert _refused_with_a_hint(refused.value, "watch_streams"), refused.value
            tally.codes[refused.value.code().name] += 1
            for stream in extra:
                stream.cancel()
            # Uploads that have not sent their header are calls in progress: the limit's worth.
            registry = pb_grpc.RegistryServiceStub(channel)
            ended_before = len(server.finished(UPLOAD_PROGRAM))
            held = [registry.UploadProgram() for _ in range(MAX_CALLS)]

            async def refused_call() -> bool:
                try:
                    await registry.GetSignature(pb.GetSignatureRequest(name="signatures/sig"))
                except grpc.aio.AioRpcError as err:
                    assert _refused_with_a_hint(err, "concurrent_calls"), err
                    tally.codes[err.code().name] += 1
                    return True
                return False

            await until(refused_call, "a call past the limit was refused")
            for call in held:
                call.cancel()

            async def served() -> bool:
                return not await refused_call()

            await until(served, "calls were served again")
            # And every held call has ended at the server, not only the first: a round that began
            # while the last ones were still let go found its own uploads refused, so that the
            # limit was never reached again (under soak on a busy machine).
            await until(
                lambda: len(server.finished(UPLOAD_PROGRAM)) >= ended_before + MAX_CALLS,
                "every held upload ended",
            )
            tally.operations += MAX_CALLS + 2

    await _rounds(one_round)


@pytest.mark.timeout(int(ROUNDS_SECONDS) + 90)
async def test_watchers_whose_client_stops_reading_are_cut_in_bounded_time(
    server: Server, idle: Idle, tally: Tally
) -> None:
    async def one_round() -> None:
        before = server.finished(WATCH_TARGETS).count("RESOURCE_EXHAUSTED")
        async with server.channel(STALLING) as stalled_channel, server.channel() as channel:
            stalled_stub = dpb_grpc.DeploymentServiceStub(stalled_channel)
            stalled = [_watch(stalled_stub, "watched") for _ in range(STALLED)]
            for stream in stalled:
                await stream.initial_metadata()
            healthy = _watch(dpb_grpc.DeploymentServiceStub(channel), "watched")
            assert (await healthy.read()).WhichOneof("kind") == "snapshot"
            for n in range(12):  # well past what a 1 KiB window takes
                version = ("1.0.0", "1.1.0")[n % 2]
                await _deploy(server, "watched", version)
                assert (await _next_change(healthy)).changes.targets[0].stable.version == version
                tally.watch_events_checked += 1
            cut_by = time.monotonic()
            await until(
                lambda: server.finished(WATCH_TARGETS).count("RESOURCE_EXHAUSTED") - before >= STALLED,
                "every stalled watcher was cut",
                seconds=30,
            )
            tally.operations += STALLED + 12
            waited = time.monotonic() - cut_by
            for stream in stalled:  # each reads what was waiting, then why it was cut
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    while True:
                        message = await asyncio.wait_for(stream.read(), 20)
                        assert message is not grpc.aio.EOF  # type: ignore[attr-defined]
                        tally.watch_events_checked += 1
                assert _details(ended.value)["QuotaFailure"].violations[0].subject == "stream_send"
                tally.codes[ended.value.code().name] += 1
            print(
                f"stalled watchers cut within {waited:.1f} s of the last change (send timeout {SEND_TIMEOUT} s)"
            )
            healthy.cancel()

    await _rounds(one_round)


class Payload:
    """An upload's bytes, made a megabyte at a time as they are sent (the test holds none whole)."""

    def __init__(self, seed: str, megabytes: int, media_type: str) -> None:
        self.media_type = media_type
        if media_type == "application/octet-stream":
            self.parts = [hashlib.sha256(f"{seed}/{i}".encode()).digest() * (1 << 15) for i in range(1)]
            self.count = megabytes
        else:  # DSPy program state: one JSON document, sent in pieces
            whole = dspy_state(seed, pad=megabytes << 20)
            self.parts = [whole[i : i + (1 << 20)] for i in range(0, len(whole), 1 << 20)]
            self.count = len(self.parts)
        digest = hashlib.sha256()
        size = 0
        for part in self.chunks():
            digest.update(part)
            size += len(part)
        self.digest = "sha256:" + digest.hexdigest()
        self.size = size

    def chunks(self) -> Iterator[bytes]:
        for i in range(self.count):
            yield self.parts[i % len(self.parts)] if len(self.parts) == 1 else self.parts[i]

    def messages(self, program: str, version: str) -> Iterator[pb.UploadProgramRequest]:
        spec = pb.ProgramVersionSpec(
            program=program, version=version, signature=SIGNATURE, media_type=self.media_type
        )
        header = pb.UploadProgramHeader(spec=spec, size_bytes=self.size, expected_digest=self.digest)
        yield pb.UploadProgramRequest(header=header)
        for part in self.chunks():
            yield pb.UploadProgramRequest(chunk=part)


class Peak:
    """The highest RSS of a process, sampled every 20 ms from a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.mib = rss_mib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.mib = max(self.mib, rss_mib(self.pid))

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.timeout(int(ROUNDS_SECONDS) + 180)
async def test_uploads_beyond_the_cap_are_refused_and_memory_stays_bounded(
    server: Server, tally: Tally
) -> None:
    """Spooled as they arrive: what an upload costs the server does not grow with its size.

    Any bytes (octet-stream): the server's memory grows by less than half the bytes in flight
    (it grew by three times as much when uploads were held in memory). DSPy program state is
    parsed once whole, one upload at a time: less than twice the bytes in flight.
    """
    rounds = 0

    async def one_round(media_type: str, megabytes: int, bound: float) -> None:
        nonlocal rounds
        rounds += 1
        uploads = MAX_UPLOADS + 2
        payloads = [Payload(f"r{rounds}u{i}", megabytes, media_type) for i in range(uploads)]
        codes: list[str] = []
        # The blocking client: grpc.aio reports INTERNAL instead of the server's status when the server
        # answers a client stream it is still writing (grpc/grpc#36066), as a refused upload is.
        with grpc.insecure_channel(server.process.address) as channel:
            registry = pb_grpc.RegistryServiceStub(channel)
            metadata = [("authorization", f"Bearer {server.token}")]

            def upload(i: int) -> None:
                messages = payloads[i].messages(f"big{rounds}x{i}", "1.0.0")
                try:
                    response = registry.UploadProgram(messages, timeout=120, metadata=metadata)
                except grpc.RpcError as err:
                    assert _refused_with_a_hint(err, "concurrent_uploads"), err
                    codes.append(err.code().name)
                    return
                assert response.program_version.artifact.digest == payloads[i].digest  # checked by the server
                codes.append("OK")

            before = rss_mib(server.pid)
            tally.memory_before_mib = tally.memory_before_mib or before
            with Peak(server.pid) as peak:
                await asyncio.gather(*(asyncio.to_thread(upload, i) for i in range(uploads)))
            tally.memory_after_mib = max(tally.memory_after_mib or 0.0, peak.mib)
        in_flight = MAX_UPLOADS * payloads[0].size / (1 << 20)
        grew = peak.mib - before
        print(
            f"{uploads} uploads of {payloads[0].size >> 20} MiB ({media_type or 'DSPy state'}), {MAX_UPLOADS} at once: "
            f"server RSS {before:.0f} -> peak {peak.mib:.0f} MiB (+{grew:.0f}; {in_flight:.0f} MiB in flight)"
        )
        assert sorted(codes) == ["OK"] * MAX_UPLOADS + ["RESOURCE_EXHAUSTED"] * 2, codes
        assert grew < bound * in_flight, f"RSS grew by {grew:.0f} MiB for {in_flight:.0f} MiB in flight"
        tally.operations += uploads
        tally.writes_checked += MAX_UPLOADS
        for code in codes:
            tally.codes[code] += 1

    async def both() -> None:
        await one_round("application/octet-stream", 48, 0.5)
        await one_round("", 24, 2.0)

    await _rounds(both)


@pytest.mark.timeout(int(IDLE_SECONDS) + 60)
async def test_idle_streams_survive_with_the_documented_keepalive(
    server: Server, idle: Idle, tally: Tally
) -> None:
    await asyncio.sleep(max(0.0, IDLE_SECONDS - (time.monotonic() - idle.opened)))
    await _deploy(server, "idle", "1.1.0")
    for stream in idle.streams:
        change = await _next_change(stream)
        assert change.changes.targets[0].stable.version == "1.1.0"
    tally.operations += IDLE
    tally.watch_events_checked += IDLE
    tally.codes["OK"] += IDLE
    print(f"{IDLE} idle watch streams held {time.monotonic() - idle.opened:.0f} s, then each got the change")

"""Calls in flight: limits that refuse instead of queueing, streams whose client reads nothing, and stop.

A client that stops reading is made with a tiny HTTP/2 window (no BDP probing, 1 KiB of
lookahead): after a few watch messages the server's next send waits for it, as it would
for a sidecar whose process hangs while its connection still answers keepalive pings.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from dspy_registry.client import Registry
from dspy_registry.client.auth import bearer_interceptors
from dspy_registry.server import watch
from dspy_registry.server.access_log import AccessLog
from dspy_registry.server.api import handlers
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from tests.api.conftest import Running, details, register_signature, start
from tests.eventually import until
from tests.factories import dspy_state

PROGRAM = "watched"
VERSIONS = ("1.0.0", "1.1.0")
REPLACE = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE)
# A client that takes (almost) nothing: no BDP probing, 1 KiB of lookahead per stream.
STALLING = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
WATCH_TARGETS = "/dspy_registry.v1.DeploymentService/WatchTargets"


@asynccontextmanager
async def _running(tmp_path: Path, **config: Any) -> AsyncIterator[Running]:
    running = await start(f"sqlite:///{tmp_path / 'registry.db'}", **config)
    try:
        yield running
    finally:
        await running.channel.close(None)
        await running.app.stop(grace=0)


class Kept:
    """The server's access log (one JSON line per finished call), kept in memory."""

    def __init__(self) -> None:
        self.lines = io.StringIO()
        self.log = AccessLog(self.lines)


@pytest.fixture
def access_log(monkeypatch: pytest.MonkeyPatch) -> Kept:
    kept = Kept()
    monkeypatch.setattr(handlers, "ACCESS_LOG", kept.log)
    return kept


def _finished(kept: Kept, method: str) -> list[str]:
    """The codes of the calls of `method` that have ended so far."""
    kept.log.flush()
    parsed = [json.loads(line) for line in kept.lines.getvalue().splitlines()]
    return [line["code"] for line in parsed if line["method"] == method]


async def _setup(server: Running) -> dpb_grpc.DeploymentServiceStub:
    await register_signature(server.registry, name="sig")
    for version in VERSIONS:
        await server.registry.RegisterProgram(
            pb.RegisterProgramRequest(
                spec=pb.ProgramVersionSpec(
                    program=PROGRAM, version=version, signature="signatures/sig/versions/1.0.0"
                ),
                artifact=dspy_state(version),
            )
        )
    return dpb_grpc.DeploymentServiceStub(server.channel)


async def _deploy(deploy: dpb_grpc.DeploymentServiceStub, version: str) -> None:
    await deploy.CreateDeployment(
        dpb.CreateDeploymentRequest(program=PROGRAM, version=version, environment="staging", strategy=REPLACE)
    )


def _watch(stub: dpb_grpc.DeploymentServiceStub) -> Any:
    request = dpb.WatchTargetsRequest(progress_interval=duration_pb2.Duration(seconds=3600))
    request.selectors.add(program=PROGRAM, environment="staging")
    return stub.WatchTargets(request)


def _stalled(server: Running) -> tuple[grpc.aio.Channel, Any]:
    channel = grpc.aio.insecure_channel(
        server.target, interceptors=bearer_interceptors(server.admin_token), options=STALLING
    )
    return channel, _watch(dpb_grpc.DeploymentServiceStub(channel))


async def _read_to_the_end(stream: Any) -> tuple[int, grpc.aio.AioRpcError]:
    """Read a stream whose client had stopped reading: how many messages were waiting, and how it ended."""
    count = 0
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        while True:
            message = await asyncio.wait_for(stream.read(), 10)
            assert message is not grpc.aio.EOF, "the stream ended OK"  # type: ignore[attr-defined]
            count += 1
    return count, ended.value


async def _deploy_and_follow(
    deploy: dpb_grpc.DeploymentServiceStub, healthy: Any, count: int, first: int = 0
) -> None:
    """`count` deployments; the healthy watcher receives each one before the next is made."""
    for n in range(first, first + count):
        version = VERSIONS[n % 2]
        await _deploy(deploy, version)
        while True:
            message = await asyncio.wait_for(healthy.read(), 10)
            if message.WhichOneof("kind") == "changes":
                assert message.changes.targets[-1].stable.version == version
                break


def _quota(err: grpc.aio.AioRpcError) -> str:
    quota = details(err).get("QuotaFailure")
    assert isinstance(quota, error_details_pb2.QuotaFailure), err
    return str(quota.violations[0].subject)


def _retry_seconds(err: grpc.aio.AioRpcError) -> float:
    retry = details(err).get("RetryInfo")
    assert isinstance(retry, error_details_pb2.RetryInfo), f"no retry hint in {err}"
    return float(retry.retry_delay.ToNanoseconds()) / 1e9


async def test_a_watcher_whose_client_reads_nothing_is_cut_after_the_send_timeout(
    tmp_path: Path, access_log: Kept
) -> None:
    async with _running(tmp_path, send_timeout_seconds=0.5) as server:
        deploy = await _setup(server)
        await _deploy(deploy, VERSIONS[0])
        healthy = _watch(deploy)
        assert (await healthy.read()).WhichOneof("kind") == "snapshot"
        channel, stalled = _stalled(server)
        try:
            await stalled.initial_metadata()
            # More than its 1 KiB window takes: the server's next send to it waits, and the other
            # watcher gets every change meanwhile.
            await _deploy_and_follow(deploy, healthy, 12, first=1)
            # Cut while its client still reads nothing: the server ended the call, and says why
            # once the client reads what was waiting for it.
            await until(
                lambda: _finished(access_log, WATCH_TARGETS) == ["RESOURCE_EXHAUSTED"],
                "the stalled watch stream was ended",
            )
            waiting, ended = await _read_to_the_end(stalled)
            assert ended.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and _quota(ended) == "stream_send"
            assert "took no message" in (ended.details() or "") and 0 < waiting < 12
            await _deploy_and_follow(deploy, healthy, 1)  # the other one never noticed
        finally:
            await channel.close(None)


async def test_a_stalled_watcher_is_cut_at_once_when_its_queue_overflows(
    tmp_path: Path, access_log: Kept, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its queue fills while its stream waits in a send: cut then, not when the send returns."""
    monkeypatch.setattr(watch, "QUEUE_SIZE", 4)
    async with _running(tmp_path) as server:  # the send timeout stays 30 s: it is not what cuts here
        deploy = await _setup(server)
        await _deploy(deploy, VERSIONS[0])
        healthy = _watch(deploy)
        assert (await healthy.read()).WhichOneof("kind") == "snapshot"
        channel, stalled = _stalled(server)
        try:
            await stalled.initial_metadata()
            await _deploy_and_follow(deploy, healthy, 16, first=1)
            await until(
                lambda: _finished(access_log, WATCH_TARGETS) == ["RESOURCE_EXHAUSTED"],
                "the overflowed watch stream was ended",
                seconds=15,
            )
            _, ended = await _read_to_the_end(stalled)
            assert ended.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and _quota(ended) == "watch_queue"
            assert "resume from revision" in (ended.details() or "")
        finally:
            await channel.close(None)


async def test_watch_streams_and_calls_beyond_the_limits_are_refused_with_a_retry_hint(
    tmp_path: Path,
) -> None:
    async with _running(tmp_path, max_watch_streams=3, max_concurrent_calls=2) as server:
        deploy = await _setup(server)
        streams = [_watch(deploy) for _ in range(3)]
        for stream in streams:
            assert (await stream.read()).WhichOneof("kind") == "snapshot"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _watch(deploy).read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _quota(refused.value) == "watch_streams" and _retry_seconds(refused.value) > 0
        streams[0].cancel()

        async def another_watch_opens() -> bool:
            try:
                return bool((await _watch(deploy).read()).WhichOneof("kind") == "snapshot")
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return False

        await until(another_watch_opens, "a watch opened once another had ended")

        # Two uploads that have not sent their header yet are two calls in progress.
        held = [server.registry.UploadProgram() for _ in range(2)]

        async def calls_refused() -> bool:
            try:
                await server.registry.GetSignature(pb.GetSignatureRequest(name="signatures/sig"))
                return False
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert _quota(err) == "concurrent_calls" and _retry_seconds(err) > 0
                return True

        await until(calls_refused, "a third call was refused")
        for call in held:
            call.cancel()

        async def calls_served() -> bool:
            return not await calls_refused()

        await until(calls_served, "calls were served again once the held ones ended")


async def test_stop_ends_watches_at_once_refuses_new_calls_and_lets_calls_in_progress_finish(
    tmp_path: Path,
) -> None:
    server = await start(f"sqlite:///{tmp_path / 'registry.db'}", max_concurrent_uploads=1)
    stopping: asyncio.Task[None] | None = None
    try:
        deploy = await _setup(server)
        await _deploy(deploy, VERSIONS[0])
        targets = _watch(deploy)
        events_request = dpb.WatchEventsRequest()
        events_request.selectors.add(program=PROGRAM)
        events = deploy.WatchEvents(events_request)
        for stream in (targets, events):
            assert (await stream.read()).WhichOneof("kind") == "snapshot"
        # An upload in progress: half its bytes sent, the rest to come after the stop began.
        data = dspy_state("big", pad=600 * 1024)
        spec = pb.ProgramVersionSpec(
            program=PROGRAM, version="2.0.0", signature="signatures/sig/versions/1.0.0"
        )
        upload = server.registry.UploadProgram()
        await upload.write(
            pb.UploadProgramRequest(header=pb.UploadProgramHeader(spec=spec, size_bytes=len(data)))
        )
        await upload.write(pb.UploadProgramRequest(chunk=data[: len(data) // 2]))

        async def upload_in_progress() -> bool:  # the one upload slot is taken: the server has it
            other = server.registry.UploadProgram()
            await other.write(pb.UploadProgramRequest(header=pb.UploadProgramHeader(spec=spec)))
            try:
                await other
            except grpc.aio.AioRpcError as err:
                return err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            raise AssertionError("an empty upload was accepted")

        await until(upload_in_progress, "the upload was in progress")

        stopping = asyncio.create_task(server.app.stop(grace=60))
        for stream in (targets, events):
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                while True:
                    await asyncio.wait_for(stream.read(), 10)  # at once, not after the grace
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "resume from revision" in (ended.value.details() or "")
            assert details(ended.value)["ErrorInfo"].reason == "SHUTTING_DOWN"  # type: ignore[attr-defined]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await server.registry.GetSignature(pb.GetSignatureRequest(name="signatures/sig"))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and _retry_seconds(refused.value) > 0
        assert not stopping.done()  # the upload still has its grace

        await upload.write(pb.UploadProgramRequest(chunk=data[len(data) // 2 :]))
        await upload.done_writing()
        uploaded = await upload
        assert uploaded.created and uploaded.program_version.artifact.size_bytes == len(data)
        await asyncio.wait_for(stopping, 30)  # as soon as the upload is done, well before the grace
    finally:
        await server.channel.close(None)
        if stopping is None:
            await server.app.stop(grace=0)


async def test_the_client_waits_out_a_limit_that_says_when_to_retry(tmp_path: Path) -> None:
    """Registry retries RESOURCE_EXHAUSTED that carries a RetryInfo (a limit that passes)."""
    async with _running(tmp_path, max_concurrent_calls=1) as server:
        await _setup(server)
        held = server.registry.UploadProgram()  # a call in progress: the limit is reached

        async def refused() -> bool:
            try:
                await server.registry.GetSignature(pb.GetSignatureRequest(name="signatures/sig"))
                return False
            except grpc.aio.AioRpcError as err:
                return err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        await until(refused, "the limit refuses a raw call")
        client = Registry(server.channel, retries=50)  # the fixture's channel: closed by the fixture
        answer = asyncio.ensure_future(client.get_signature("sig"))
        await asyncio.sleep(0.3)  # refused, the client waits as it was told (a second), then again
        assert not answer.done()
        held.cancel()
        assert (await answer).version == "1.0.0"

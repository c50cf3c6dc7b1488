"""UploadProgram: a few at once, the declared size held to as bytes arrive, nothing left by a failure."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from google.rpc import error_details_pb2

from dspy_registry.v1 import registry_pb2 as pb
from tests.api.conftest import Running, details, register_signature, start, violations
from tests.eventually import until
from tests.factories import dspy_state

SIGNATURE = "signatures/sig/versions/1.0.0"


@asynccontextmanager
async def _running(database_url: str, **config: Any) -> AsyncIterator[Running]:
    running = await start(database_url, **config)
    try:
        await register_signature(running.registry, name="sig")
        yield running
    finally:
        await running.channel.close(None)
        await running.app.stop(grace=0)


def _header(version: str, data: bytes = b"", size: int | None = None) -> pb.UploadProgramRequest:
    spec = pb.ProgramVersionSpec(program="big", version=version, signature=SIGNATURE)
    return pb.UploadProgramRequest(
        header=pb.UploadProgramHeader(
            spec=spec,
            size_bytes=len(data) if size is None else size,
            expected_digest="sha256:" + hashlib.sha256(data).hexdigest() if data else "",
        )
    )


async def _stored(server: Running) -> tuple[int, int]:
    """(artifacts, artifact chunks) in the store."""
    async with server.app.store.read() as tx:
        artifacts = await tx.conn.fetchrow("SELECT count(*) AS n FROM artifacts")
        chunks = await tx.conn.fetchrow("SELECT count(*) AS n FROM artifact_chunks")
    assert artifacts is not None and chunks is not None
    return int(artifacts["n"]), int(chunks["n"])


async def _upload(
    server: Running, version: str, data: bytes, chunk: int = 700 * 1024
) -> pb.UploadProgramResponse:
    call = server.registry.UploadProgram()
    await call.write(_header(version, data))
    for i in range(0, len(data), chunk):
        await call.write(pb.UploadProgramRequest(chunk=data[i : i + chunk]))
    await call.done_writing()
    response: pb.UploadProgramResponse = await call
    return response


async def _probe(server: Running, data: bytes) -> grpc.aio.AioRpcError:
    """An upload of the header alone: RESOURCE_EXHAUSTED when no slot is free, else INVALID_ARGUMENT
    for the bytes it lacks. (Only the header: grpc.aio reports INTERNAL rather than the server's
    status when the server answers a client stream it is still writing, grpc/grpc#36066.)"""
    call = server.registry.UploadProgram()
    await call.write(_header("9.9.9", data))
    await call.done_writing()
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err
    raise AssertionError("an upload without its bytes was accepted")


async def _slot_free(server: Running, data: bytes) -> bool:
    err = await _probe(server, data)
    assert err.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT), err
    return err.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_uploads_beyond_the_cap_are_refused_with_a_retry_hint(database_url: str) -> None:
    async with _running(database_url, max_concurrent_uploads=2) as server:
        data = dspy_state("big", pad=300 * 1024)
        held = []
        for version in ("1.0.0", "1.1.0"):
            call = server.registry.UploadProgram()
            await call.write(_header(version, data))
            await call.write(pb.UploadProgramRequest(chunk=data[:1000]))
            held.append(call)

        async def third_refused() -> bool:
            err = await _probe(server, data)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            quota = details(err)["QuotaFailure"]
            retry = details(err)["RetryInfo"]
            assert isinstance(quota, error_details_pb2.QuotaFailure)
            assert isinstance(retry, error_details_pb2.RetryInfo)
            assert quota.violations[0].subject == "concurrent_uploads" and retry.retry_delay.seconds > 0
            return True

        await until(third_refused, "a third upload was refused")
        first = held[0]
        await first.write(pb.UploadProgramRequest(chunk=data[1000:]))
        await first.done_writing()
        assert (await first).created
        held[1].cancel()

        await until(lambda: _slot_free(server, data), "a slot was free once the others had ended")
        assert (await _upload(server, "1.2.0", data)).created
        found = await server.registry.GetProgramVersion(
            pb.GetProgramVersionRequest(name="programs/big/versions/1.2.0")
        )
        assert found.program_version.artifact.digest == "sha256:" + hashlib.sha256(data).hexdigest()


async def test_more_bytes_than_declared_are_refused_at_once_fewer_at_the_end(database_url: str) -> None:
    async with _running(database_url) as server:
        data = dspy_state("big", pad=300 * 1024)
        before = await _stored(server)
        # One byte more than declared: the answer comes while the client still holds the stream open.
        over = server.registry.UploadProgram()
        await over.write(_header("1.0.0", size=len(data) - 1))
        await over.write(pb.UploadProgramRequest(chunk=data))
        try:
            await asyncio.wait_for(over, 10)
            raise AssertionError("more bytes than declared were accepted")
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert violations(err) == {"header.size_bytes"} and "more" in (err.details() or "")
        # Fewer: refused once the stream ends.
        under = server.registry.UploadProgram()
        await under.write(_header("1.0.0", size=len(data) + 1))
        await under.write(pb.UploadProgramRequest(chunk=data))
        await under.done_writing()
        try:
            await under
            raise AssertionError("fewer bytes than declared were accepted")
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and violations(err) == {"header.size_bytes"}
        negative = server.registry.UploadProgram()
        await negative.write(_header("1.0.0", size=-1))
        await negative.done_writing()
        try:
            await negative
            raise AssertionError("a negative size was accepted")
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and violations(err) == {"header.size_bytes"}
        assert await _stored(server) == before
        listed = await server.registry.ListPrograms(pb.ListProgramsRequest())
        assert listed.total_size == 0


async def test_a_failed_or_abandoned_upload_leaves_nothing_behind(database_url: str) -> None:
    async with _running(database_url, max_concurrent_uploads=1) as server:
        data = dspy_state("big", pad=2 * 1024 * 1024)  # three store chunks
        before = await _stored(server)
        # A digest the bytes do not have.
        wrong = server.registry.UploadProgram()
        await wrong.write(_header("1.0.0", data + b" ", size=len(data)))
        await wrong.write(pb.UploadProgramRequest(chunk=data))
        await wrong.done_writing()
        try:
            await wrong
            raise AssertionError("a wrong digest was accepted")
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert violations(err) == {"header.expected_digest"}
        # Not DSPy program state although the media type says so.
        junk = b"{" * (len(data))
        try:
            await _upload(server, "1.0.0", junk)
            raise AssertionError("junk was accepted")
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        # Abandoned half way: the client goes away.
        abandoned = server.registry.UploadProgram()
        await abandoned.write(_header("1.0.0", data))
        await abandoned.write(pb.UploadProgramRequest(chunk=data[: len(data) // 2]))
        abandoned.cancel()
        assert await _stored(server) == before

        await until(lambda: _slot_free(server, data), "the abandoned upload's slot was free again")
        assert (await _upload(server, "1.0.0", data)).created
        artifacts, chunks = await _stored(server)
        assert (artifacts, chunks) == (before[0] + 1, before[1] + 3)
        received = b""
        async for message in server.registry.GetArtifact(
            pb.GetArtifactRequest(program="programs/big", digest="sha256:" + hashlib.sha256(data).hexdigest())
        ):
            received += message.data
        assert received == data

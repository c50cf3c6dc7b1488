"""The dashboard's live stream (GET /api/dashboard/live) over real HTTP, on SQLite and Postgres: one
watch of the events hub shared by every open tab, deployment events and report pulses to the tabs
that follow the program, the same authentication and permissions as the RPCs, and streams that end
when the reader loses its grant or the server stops."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from dspy_registry.server.domain.health import STANDARD_BOUNDS_MS
from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import access_pb2_grpc as apb_grpc
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import registry_pb2 as pb
from tests.api.conftest import Running, register_signature, start
from tests.calls import principal_token
from tests.eventually import until
from tests.factories import dspy_state

READ_SECONDS = 10.0


@pytest.fixture
async def running(database_url: str) -> AsyncIterator[Running]:
    server = await start(database_url, http_listen="127.0.0.1:0")
    await register_signature(server.registry, name="sig")
    for program in ("alpha", "beta"):
        await server.registry.RegisterProgram(
            pb.RegisterProgramRequest(
                spec=pb.ProgramVersionSpec(
                    program=program, version="1.0.0", signature="signatures/sig/versions/1.0.0"
                ),
                artifact=dspy_state(program),
            )
        )
    yield server
    await server.channel.close(None)
    await server.app.stop(grace=0)


class Stream:
    """An open live stream, read an event at a time."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self) -> dict[str, Any]:
        """The next item (keep-alive comments skipped)."""
        data = ""
        while True:
            line = (await asyncio.wait_for(self.response.content.readline(), READ_SECONDS)).decode()
            if line == "":
                raise EOFError("the stream ended")
            if line.startswith("data: "):
                data = line[6:].strip()
            elif line == "\n" and data:
                item: dict[str, Any] = json.loads(data)
                return item

    async def rest(self) -> list[dict[str, Any]]:
        """The items sent until the stream ends; TimeoutError when it goes on past READ_SECONDS."""
        items = []
        try:
            while True:
                items.append(await self.next())
        except (EOFError, aiohttp.ClientPayloadError):  # the end, clean or cut
            return items


def _url(server: Running, program: str) -> str:
    return f"http://127.0.0.1:{server.app.http_port}/api/dashboard/live?program={program}"


async def _open(session: aiohttp.ClientSession, server: Running, program: str, token: str) -> Stream:
    response = await session.get(_url(server, program), headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "text/event-stream"
    stream = Stream(response)
    assert (await stream.next())["type"] == "ready"
    return stream


async def _deploy(server: Running, program: str) -> dpb.Deployment:
    reply = await server.deployments.CreateDeployment(
        dpb.CreateDeploymentRequest(
            program=program,
            version="1.0.0",
            environment="staging",
            strategy=dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE),
        )
    )
    deployment: dpb.Deployment = reply.deployment
    return deployment


def _window(program: str) -> dpb.MetricWindow:
    start_time = datetime.now(UTC)
    out = dpb.MetricWindow(
        program=program, environment="staging", version="1.0.0", request_count=10, error_count=1
    )
    out.start_time.FromDatetime(start_time)
    out.end_time.FromDatetime(start_time + timedelta(seconds=1))
    out.latency.counts.extend([10] + [0] * len(STANDARD_BOUNDS_MS))
    out.latency.sum_ms = 10.0
    return out


async def test_tabs_share_one_watch_and_get_their_programs_events_and_pulses(running: Running) -> None:
    hub = running.app.services.hubs["events"]
    before = len(hub)
    async with aiohttp.ClientSession() as session:
        first = await _open(session, running, "alpha", running.admin_token)
        second = await _open(session, running, "alpha", running.admin_token)
        other = await _open(session, running, "beta", running.admin_token)
        assert len(hub) == before + 1  # three tabs, one subscriber
        assert len(running.app.services.live) == 3

        deployment = await _deploy(running, "alpha")
        for stream in (first, second):
            item = await stream.next()
            assert item["type"] == "event"
            assert (item["kind"], item["deployment"], item["program"]) == (
                "created",
                deployment.name,
                "alpha",
            )
            assert (item["environment"], item["version"]) == ("staging", "1.0.0")

        # Metric windows commit no event: the tabs of that program are told by a pulse.
        await running.deployments.ReportMetrics(
            dpb.ReportMetricsRequest(sidecar_id="pod-0", windows=[_window("alpha")])
        )
        item = await first.next()
        while item["type"] == "event":  # the deployment's later events (succeeded) may come first
            assert item["deployment"] == deployment.name
            item = await first.next()
        assert item == {"type": "pulse", "program": "alpha", "environment": "staging"}

        # beta's tab heard nothing of alpha: its first item is beta's own event.
        await _deploy(running, "beta")
        item = await other.next()
        assert (item["type"], item["program"]) == ("event", "beta")
        for stream in (first, second, other):
            stream.response.close()
    await until(lambda: len(running.app.services.live) == 0, "the tabs closed")
    await until(lambda: len(hub) == before, "the shared watch let go")


async def test_the_stream_asks_what_get_program_asks(running: Running) -> None:
    admin = apb_grpc.AccessServiceStub(running.channel)
    token = await principal_token(admin, "bob", [(apb.ACTION_READ, "alpha")])
    [grant] = (
        await admin.ListPermissions(apb.ListPermissionsRequest(principal="principals/bob"))
    ).permissions
    async with aiohttp.ClientSession() as session:
        async with session.get(_url(running, "alpha")) as nobody:
            assert nobody.status == 401
            assert (await nobody.json())["error"]["code"] == "UNAUTHENTICATED"
        headers = {"Authorization": f"Bearer {token}"}
        async with session.get(_url(running, "beta"), headers=headers) as elsewhere:
            assert elsewhere.status == 403
        async with session.get(
            f"http://127.0.0.1:{running.app.http_port}/api/dashboard/live", headers=headers
        ) as unnamed:
            assert unnamed.status == 400

        # Bob loses his grant while his tab is open: the stream ends at the next thing it would send.
        stream = await _open(session, running, "alpha", token)
        await admin.RevokePermission(apb.RevokePermissionRequest(name=grant.name))
        await _deploy(running, "alpha")
        assert await stream.rest() == []  # not the deployment's events: they are no longer his to read
        async with session.get(_url(running, "alpha"), headers=headers) as again:
            assert again.status == 403


async def test_open_streams_end_when_the_server_stops(database_url: str) -> None:
    server = await start(database_url, http_listen="127.0.0.1:0")
    await register_signature(server.registry, name="sig")
    await server.registry.RegisterProgram(
        pb.RegisterProgramRequest(
            spec=pb.ProgramVersionSpec(
                program="alpha", version="1.0.0", signature="signatures/sig/versions/1.0.0"
            ),
            artifact=dspy_state("alpha"),
        )
    )
    async with aiohttp.ClientSession() as session:
        stream = await _open(session, server, "alpha", server.admin_token)
        await server.channel.close(None)
        # A grace longer than the test's timeout (60 s): were the open stream to hold the stop until
        # the grace ran out, the test would time out.
        await server.app.stop(grace=120)
        assert await stream.rest() == []

"""The REST routes (`--http-listen`) over real HTTP, on SQLite and Postgres: the seed's shapes,
the seed's flow, and errors as the gRPC API's (same tokens, permissions and details)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from dspy_registry.server import http_api
from dspy_registry.server.api import guard
from dspy_registry.server.app import App
from dspy_registry.server.readiness import Readiness, answer
from dspy_registry.server.store.base import AVAILABLE, Availability
from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import access_pb2_grpc as apb_grpc
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import registry_pb2 as pb
from tests.api.conftest import Running, register_signature, start
from tests.calls import canary_strategy, principal_token
from tests.certificates import Authority, tls_config
from tests.eventually import until
from tests.factories import dspy_state

PROGRAM = "sentiment"


@dataclass
class Rest:
    running: Running
    base: str
    session: aiohttp.ClientSession

    def headers(self, token: str | None = "") -> dict[str, str]:
        """The admin's token by default; None for no header."""
        if token is None:
            return {}
        return {"Authorization": f"Bearer {token or self.running.admin_token}"}

    async def get(self, path: str, token: str | None = "", **params: Any) -> tuple[int, Any]:
        async with self.session.get(self.base + path, params=params, headers=self.headers(token)) as r:
            return r.status, await r.json()

    async def post(self, path: str, body: Any = None, token: str | None = "") -> tuple[int, Any]:
        async with self.session.post(self.base + path, json=body, headers=self.headers(token)) as r:
            return r.status, await r.json()


async def _register(
    running: Running, name: str, version: str, team: str = "ml", accuracy: float = 0.9
) -> None:
    await running.registry.RegisterProgram(
        pb.RegisterProgramRequest(
            spec=pb.ProgramVersionSpec(
                program=name,
                version=version,
                signature="signatures/sig/versions/1.0.0",
                performance={"accuracy": accuracy},
                labels={"team": team},
            ),
            artifact=dspy_state(f"v{version}"),
        )
    )


@pytest.fixture
async def rest(database_url: str) -> AsyncIterator[Rest]:
    running = await start(database_url, http_listen="127.0.0.1:0")
    assert running.app.http_port > 0
    await register_signature(running.registry, name="sig")
    await _register(running, PROGRAM, "1.0.0")
    await _register(running, PROGRAM, "1.1.0", accuracy=0.93)
    async with aiohttp.ClientSession() as session:
        yield Rest(running, f"http://127.0.0.1:{running.app.http_port}", session)
    await running.channel.close(None)
    await running.app.stop(grace=0)


async def _token(rest: Rest, name: str, grants: list[tuple[int, str]]) -> str:
    return await principal_token(apb_grpc.AccessServiceStub(rest.running.channel), name, grants)


def _detail(body: Any, kind: str) -> dict[str, Any]:
    (found,) = [d for d in body["error"]["details"] if d["@type"].endswith(f"google.rpc.{kind}")]
    return dict(found)


def _violations(body: Any) -> set[str]:
    return {v["field"] for v in _detail(body, "BadRequest")["field_violations"]}


async def test_the_seed_flow_list_get_deploy_status_rollback(rest: Rest) -> None:
    status, listed = await rest.get("/api/registry/programs")
    assert status == 200
    assert (listed["total"], listed["page"]) == (1, 1)
    assert [p["name"] for p in listed["programs"]] == [f"programs/{PROGRAM}"]
    assert listed["programs"][0]["latest_version"] == "1.1.0"

    status, program = await rest.get(f"/api/registry/programs/{PROGRAM}")
    assert status == 200
    assert (program["name"], program["version"]) == (PROGRAM, "1.1.0")
    assert program["signature"] == "signatures/sig/versions/1.0.0"
    assert program["performance"] == {"accuracy": 0.93}
    assert [v["version"] for v in program["versions"]] == ["1.1.0", "1.0.0"]
    assert {d["environment"] for d in program["deployments"]} == {"development"}  # auto-deployed

    status, first = await rest.post(
        f"/api/registry/programs/{PROGRAM}/deploy",
        {"version": "1.0.0", "environment": "staging", "strategy": "replace"},
    )
    assert status == 201, first
    status, deployed = await rest.post(
        f"/api/registry/programs/{PROGRAM}/deploy",
        {"version": "1.1.0", "environment": "staging", "strategy": "replace", "reason": "better"},
    )
    assert status == 201, deployed
    deployment_id = deployed["deployment_id"]
    assert deployed["status"] == "initiated"
    assert deployed["monitor_url"] == f"/api/registry/deployments/{deployment_id}/status"
    assert deployed["deployment"]["name"] == f"deployments/{deployment_id}"

    status, watched = await rest.get(deployed["monitor_url"])
    assert status == 200, watched
    assert (watched["deployment_id"], watched["status"]) == (deployment_id, "succeeded")
    assert watched["target"]["stable"]["version"] == "1.1.0"
    assert {"verdict", "health", "sidecars", "deployment"} <= watched.keys()

    status, rolled = await rest.post(
        f"/api/registry/deployments/{deployment_id}/rollback", {"reason": "error rate"}
    )
    assert status == 201, rolled
    assert (rolled["status"], rolled["reason"]) == ("initiated", "error rate")
    assert rolled["rolled_back"]["state"] == "DEPLOYMENT_STATE_ROLLED_BACK"
    status, after = await rest.get(f"/api/registry/deployments/{rolled['rollback_deployment_id']}/status")
    assert status == 200 and after["target"]["stable"]["version"] == "1.0.0"
    status, before = await rest.get(f"/api/registry/deployments/{deployment_id}/status")
    assert before["status"] == "rolled_back"


async def test_list_filters_pages_and_counts(rest: Rest) -> None:
    for name in ("alpha", "beta", "gamma"):
        await _register(rest.running, name, "1.0.0", team="nlp")
    status, page = await rest.get("/api/registry/programs", team="nlp", limit=2, offset=2)
    assert status == 200
    assert (page["total"], page["page"], [p["name"] for p in page["programs"]]) == (3, 2, ["programs/gamma"])
    _, first = await rest.get("/api/registry/programs", team="nlp", limit=2)
    assert [p["name"] for p in first["programs"]] == ["programs/alpha", "programs/beta"]
    _, odd = await rest.get("/api/registry/programs", limit=2, offset=1)
    assert [p["name"] for p in odd["programs"]] == ["programs/beta", "programs/gamma"] and odd["page"] == 1
    _, staging = await rest.get("/api/registry/programs", environment="staging")
    assert (staging["total"], staging["programs"]) == (0, [])
    _, development = await rest.get("/api/registry/programs", environment="development", team="ml")
    assert [p["name"] for p in development["programs"]] == [f"programs/{PROGRAM}"]


async def test_get_program_by_version_and_by_environment(rest: Rest) -> None:
    _, old = await rest.get(f"/api/registry/programs/{PROGRAM}", version="1.0.0")
    assert (old["version"], old["performance"]) == ("1.0.0", {"accuracy": 0.9})
    _, served = await rest.get(f"/api/registry/programs/{PROGRAM}", environment="development")
    assert served["version"] == "1.1.0"


async def test_canary_percent_makes_a_one_step_canary(rest: Rest) -> None:
    await rest.post(
        f"/api/registry/programs/{PROGRAM}/deploy",
        {"version": "1.0.0", "environment": "staging", "strategy": "replace"},
    )
    status, deployed = await rest.post(
        f"/api/registry/programs/{PROGRAM}/deploy",
        {"version": "1.1.0", "environment": "staging", "canary_percent": 10},
    )
    assert status == 201, deployed
    strategy = deployed["deployment"]["strategy"]
    assert strategy["strategy"] == "STRATEGY_CANARY"
    assert [s["weight_percent"] for s in strategy["canary"]["steps"]] == [10]


async def test_without_a_token_401(rest: Rest) -> None:
    async with rest.session.get(rest.base + "/api/registry/programs") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        body = await response.json()
    assert body["error"]["code"] == "UNAUTHENTICATED"
    status, body = await rest.get("/api/registry/programs", token="not-a-token")
    assert (status, body["error"]["code"]) == (401, "UNAUTHENTICATED")
    status, _ = await rest.post(f"/api/registry/programs/{PROGRAM}/deploy", {}, token=None)
    assert status == 401


async def test_without_permission_403_as_over_grpc(rest: Rest) -> None:
    reader = await _token(rest, "reader", [(apb.ACTION_READ, "*")])
    status, _ = await rest.get(f"/api/registry/programs/{PROGRAM}", token=reader)
    assert status == 200
    status, body = await rest.post(
        f"/api/registry/programs/{PROGRAM}/deploy", {"environment": "staging"}, token=reader
    )
    assert (status, body["error"]["code"]) == (403, "PERMISSION_DENIED")
    stranger = await _token(rest, "stranger", [(apb.ACTION_READ, "other")])
    status, body = await rest.get(f"/api/registry/programs/{PROGRAM}", token=stranger)
    assert (status, body["error"]["code"]) == (403, "PERMISSION_DENIED")
    _, listed = await rest.get("/api/registry/programs", token=stranger)
    assert listed["total"] == 0  # lists show only what the caller may read, as ListPrograms does


async def test_not_found_404_with_resource_info(rest: Rest) -> None:
    status, body = await rest.get("/api/registry/programs/nope")
    assert (status, body["error"]["code"]) == (404, "NOT_FOUND")
    assert _detail(body, "ResourceInfo")["resource_name"].startswith("programs/nope")
    assert _detail(body, "ErrorInfo")["domain"] == "dspy-registry"
    status, body = await rest.get("/api/registry/deployments/nosuch0/status")
    assert (status, body["error"]["code"]) == (404, "NOT_FOUND")
    status, body = await rest.post("/api/registry/deployments/nosuch0/rollback")
    assert status == 404
    status, body = await rest.get("/api/registry/nothing-here")
    assert (status, body["error"]["code"]) == (404, "NOT_FOUND")


async def test_bad_input_400_with_field_violations(rest: Rest) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": -1}, "offset"),
    ]
    for params, field in cases:
        status, body = await rest.get("/api/registry/programs", **params)
        assert (status, body["error"]["code"], _violations(body)) == (400, "INVALID_ARGUMENT", {field}), (
            params
        )
    deploy = f"/api/registry/programs/{PROGRAM}/deploy"
    for payload, field in [
        ({"environment": "staging", "strategy": "big_bang"}, "strategy"),
        ({"environment": "staging", "canary_percent": 0}, "canary_percent"),
        ({"environment": "staging", "canary_percent": "10"}, "canary_percent"),
        ({"environment": "staging", "strategy": "replace", "canary_percent": 10}, "canary_percent"),
        ({"environment": 7}, "environment"),
        ([1, 2], "body"),
    ]:
        status, body = await rest.post(deploy, payload)
        assert (status, _violations(body)) == (400, {field}), payload
    # And what the gRPC services refuse comes back with their own details.
    status, body = await rest.post(deploy, {"environment": "staging", "version": "one"})
    assert (status, body["error"]["code"]) == (400, "INVALID_ARGUMENT")
    assert _violations(body)
    status, body = await rest.get("/api/registry/programs/Not_A_Name")
    assert status == 400


async def test_a_refused_deployment_is_409_with_the_precondition(rest: Rest) -> None:
    status, body = await rest.post(
        f"/api/registry/programs/{PROGRAM}/deploy", {"version": "1.1.0", "environment": "production"}
    )
    assert (status, body["error"]["code"]) == (409, "FAILED_PRECONDITION")
    assert _detail(body, "PreconditionFailure")["violations"]


async def test_the_openapi_document(rest: Rest) -> None:
    async with rest.session.get(rest.base + "/api/openapi.json") as response:  # no token needed
        assert response.status == 200
        document = await response.json()
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {
        "/api/openapi.json",
        "/api/registry/programs",
        "/api/registry/programs/{name}",
        "/api/registry/programs/{name}/deploy",
        "/api/registry/deployments/{id}/status",
        "/api/registry/deployments/{id}/rollback",
    }


async def test_unknown_parameters_and_fields_are_refused(rest: Rest) -> None:
    status, body = await rest.get("/api/registry/programs", teams="nlp")  # a misspelt filter
    assert (status, _violations(body)) == (400, {"teams"})
    status, body = await rest.post(
        f"/api/registry/programs/{PROGRAM}/deploy", {"environment": "staging", "canary": 10}
    )
    assert (status, _violations(body)) == (400, {"canary"})


async def test_authentication_comes_before_validation_as_over_grpc(rest: Rest) -> None:
    status, body = await rest.get("/api/registry/programs", token="not-a-token", limit=0)
    assert (status, body["error"]["code"]) == (401, "UNAUTHENTICATED")
    status, body = await rest.post(f"/api/registry/programs/{PROGRAM}/deploy", [1], token=None)
    assert status == 401
    async with rest.session.get(
        rest.base + "/api/registry/programs", headers={"Authorization": "Bearer caf\u00e9"}
    ) as response:
        assert response.status == 401  # not ASCII: cannot be a token, and cannot be gRPC metadata


async def test_without_authentication_every_caller_is_admin(database_url: str) -> None:
    running = await start(database_url, http_listen="127.0.0.1:0", auth=False)
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{running.app.http_port}/api/registry/programs"
            async with session.get(url) as response:
                assert response.status == 200
                assert (await response.json())["total"] == 0
    finally:
        await running.channel.close(None)
        await running.app.stop(grace=0)


async def test_behind_mutual_tls_the_routes_serve_https_and_take_tokens(tmp_path: Path) -> None:
    ca = Authority("test CA")
    # gRPC callers need a certificate (mutual); REST ones a token.
    app = App(tls_config(tmp_path, ca, mutual=True, http_listen="127.0.0.1:0"))
    await app.start()
    try:
        token = (tmp_path / "admin.token").read_text().strip()
        trust = ssl.create_default_context(cadata=ca.pem.decode())
        url = f"https://localhost:{app.http_port}/api/registry/programs"
        async with aiohttp.ClientSession() as session:
            async with session.get(url, ssl=trust, headers={"Authorization": f"Bearer {token}"}) as response:
                assert response.status == 200
            async with session.get(url, ssl=trust) as response:
                assert response.status == 401
    finally:
        await app.stop(grace=0)


async def test_an_offset_walks_the_pages(rest: Rest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_api, "LIST_PAGE", 2)  # pages of two: three pages for five programs
    for name in ("alpha", "beta", "gamma", "delta"):
        await _register(rest.running, name, "1.0.0")
    _, page = await rest.get("/api/registry/programs", limit=3, offset=1)
    names = ["programs/beta", "programs/delta", "programs/gamma"]
    assert ([p["name"] for p in page["programs"]], page["total"]) == (names, 5)
    _, last = await rest.get("/api/registry/programs", limit=3, offset=3)
    assert [p["name"] for p in last["programs"]] == ["programs/gamma", "programs/sentiment"]
    _, beyond = await rest.get("/api/registry/programs", limit=3, offset=30)
    assert (beyond["programs"], beyond["total"], beyond["page"]) == ([], 5, 11)


async def test_the_audit_log_names_the_http_client_not_the_gateway_socket(rest: Rest) -> None:
    latest = {"environment": "staging", "version": "latest"}
    status, _ = await rest.post(f"/api/registry/programs/{PROGRAM}/deploy", latest)
    assert status == 201
    reader = await _token(rest, "reader", [(apb.ACTION_READ, "*")])
    status, _ = await rest.post(f"/api/registry/programs/{PROGRAM}/deploy", latest, reader)
    assert status == 403
    # A gRPC caller sending the gateway's keys without its secret is named by its own address.
    forged = (
        (guard.GATEWAY_SECRET_KEY, "guess"),
        (guard.GATEWAY_CLIENT_KEY, "ipv4:203.0.113.9:1"),
        ("authorization", f"Bearer {reader}"),
    )
    assert rest.running.app.http is not None
    for target in (rest.running.target, rest.running.app.http.grpc_address):  # over TCP, and the socket
        async with grpc.aio.insecure_channel(target) as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await apb_grpc.AccessServiceStub(channel).CreatePrincipal(
                    apb.CreatePrincipalRequest(principal_id="x"), metadata=forged
                )
    admin = apb_grpc.AccessServiceStub(rest.running.channel)
    events = (await admin.ListAuditEvents(apb.ListAuditEventsRequest())).audit_events
    peers = {e.method.rsplit("/", 1)[-1] + ":" + e.principal: e.peer for e in events}
    forgers = sorted(
        e.peer for e in events if e.method.endswith("CreatePrincipal") and "reader" in e.principal
    )
    # aiohttp's client connects over 127.0.0.1: the peer gRPC callers would show, not "unix:".
    assert peers["CreateDeployment:principals/admin"].startswith("ipv4:127.0.0.1:")
    assert peers["CreateDeployment:principals/reader"].startswith("ipv4:127.0.0.1:")
    assert forgers[0].startswith("ipv4:127.0.0.1:") and forgers[1] == "unix:"
    assert "203.0.113.9" not in "".join(peers.values())


async def _raw(
    rest: Rest, method: str, path: str, data: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, str, Any]:
    async with rest.session.request(
        method, rest.base + path, data=data, headers={**rest.headers(), **(headers or {})}
    ) as r:
        return r.status, r.content_type, await r.json(content_type=None)


async def test_hostile_bodies_and_urls_get_the_json_error_and_no_traceback(
    rest: Rest, caplog: pytest.LogCaptureFixture
) -> None:
    deploy = f"/api/registry/programs/{PROGRAM}/deploy"
    deep = b"[" * 50_000 + b"]" * 50_000
    for path in (deploy, "/api/registry/deployments/x1/rollback"):
        status, kind, body = await _raw(rest, "POST", path, deep, {"Content-Type": "application/json"})
        assert (status, kind, body["error"]["code"]) == (400, "application/json", "INVALID_ARGUMENT"), body
        assert "nested too deep" in body["error"]["message"]
        status, _, body = await _raw(rest, "POST", path, deep, {"Authorization": ""})  # no token: 401 first
        assert status == 401, body

    status, kind, body = await _raw(rest, "GET", "/api/registry/programs?team=" + "x" * 9000)
    assert (status, kind, body["error"]["code"]) == (400, "application/json", "INVALID_ARGUMENT"), body

    for content_type in ("text/plain", "application/xml", "application/x-www-form-urlencoded"):
        status, _, body = await _raw(
            rest, "POST", deploy, b'{"version": "1.0.0"}', {"Content-Type": content_type}
        )
        assert (status, body["error"]["code"]) == (415, "INVALID_ARGUMENT"), content_type
    with_charset = {"Content-Type": "application/json; charset=utf-8"}
    status, _, body = await _raw(
        rest, "POST", deploy, b'{"version": "1.0.0", "environment": "staging"}', with_charset
    )
    assert status == 201, body

    twice = b'{"environment": "staging", "version": "1.0.0", "version": "1.1.0"}'
    status, _, body = await _raw(rest, "POST", deploy, twice, {"Content-Type": "application/json"})
    assert (status, _violations(body)) == (400, {"version"}), body
    status, _, body = await _raw(
        rest, "POST", deploy, b'{"environment": "staging", "version": NaN}', with_charset
    )
    assert status == 400, body
    status, _, body = await _raw(rest, "GET", "/api/registry/programs?team=a&team=b")
    assert (status, _violations(body)) == (400, {"team"}), body

    # No traceback for any of it: aiohttp's parser refusals are one warning line.
    assert not [r for r in caplog.records if r.levelno >= 40 or r.exc_info], [
        r.getMessage() for r in caplog.records
    ]


async def _serves(rest: Rest, environment: str, version: str) -> bool:
    status, body = await rest.get(f"/api/registry/programs/{PROGRAM}", environment=environment)
    return status == 200 and body["version"] == version


async def test_deploy_needs_a_version_and_version_with_environment_is_a_filter(rest: Rest) -> None:
    deploy = f"/api/registry/programs/{PROGRAM}/deploy"
    status, body = await rest.post(deploy, {"environment": "staging"})
    assert (status, _violations(body)) == (400, {"version"}), body  # gRPC refuses it too: never assumed
    status, body = await rest.post(deploy, {"environment": "staging", "version": "latest"})
    assert status == 201 and body["deployment"]["version"] == "1.1.0"
    # On PostgreSQL the controller may apply the replacement a moment later.
    await until(lambda: _serves(rest, "staging", "1.1.0"), "staging serves 1.1.0")
    # Both: that version if the environment serves it, else NOT_FOUND; never one of them ignored.
    status, body = await rest.get(f"/api/registry/programs/{PROGRAM}", version="1.0.0", environment="staging")
    assert (status, body["error"]["code"]) == (404, "NOT_FOUND"), body
    assert body["error"]["message"] == (
        "environments/staging serves 1.1.0, not programs/sentiment/versions/1.0.0"
    )
    status, body = await rest.get(f"/api/registry/programs/{PROGRAM}", version="1.1.0", environment="staging")
    assert (status, body["version"]) == (200, "1.1.0")
    status, body = await rest.get(f"/api/registry/programs/{PROGRAM}", environment="staging")
    assert (status, body["version"]) == (200, "1.1.0")


async def test_the_health_routes_need_no_token(rest: Rest) -> None:
    assert await rest.get("/healthz", token=None) == (200, {"status": "ok"})
    assert await rest.get("/readyz", token=None) == (200, {"status": "ok"})
    # Not one of the API's routes: a token changes nothing.
    assert await rest.get("/readyz") == (200, {"status": "ok"})


def test_readiness_follows_the_start_the_store_and_the_stop() -> None:
    found: list[Availability | None] = [None]
    readiness = Readiness(lambda: found[0])
    assert answer("/readyz", readiness) == (
        503,
        '{"status": "unavailable", "reason": "the server is starting"}\n',
    )
    readiness.started = True
    assert "not probed yet" in readiness.why_not()
    found[0] = Availability(readable=True, writable=False, detail="the disk is full")
    assert answer("/readyz", readiness) == (200, '{"status": "ok"}\n')  # reads are still served
    found[0] = Availability(readable=False, writable=False, detail="connection refused")
    assert readiness.why_not() == "the store cannot be reached: connection refused"
    found[0] = AVAILABLE
    assert readiness.why_not() == ""
    readiness.stopping = True
    assert answer("/readyz", readiness) == (
        503,
        '{"status": "unavailable", "reason": "the server is stopping"}\n',
    )
    assert answer("/healthz", readiness) == (200, '{"status": "ok"}\n')  # alive while it stops
    assert answer("/metrics", readiness) is None


async def test_the_dashboard_actions_call_their_rpcs_with_the_bodys_fields(rest: Rest) -> None:
    """approve, reject, promote and abort are one table of RPCs (dashboard/routes.py ACTIONS); the
    Playwright test clicks approve and promote, this one reject and abort, and an action of no RPC."""
    actions = "/api/dashboard/deployments/{}/{}"
    await rest.post(
        f"/api/registry/programs/{PROGRAM}/deploy",
        {"version": "1.0.0", "environment": "staging", "strategy": "replace"},
    )
    status, pending = await rest.post(
        f"/api/registry/programs/{PROGRAM}/deploy", {"version": "1.0.0", "environment": "production"}
    )
    assert status == 201 and pending["deployment"]["state"] == "DEPLOYMENT_STATE_PENDING_APPROVAL", pending
    admin = apb_grpc.AccessServiceStub(rest.running.channel)
    carol = await principal_token(admin, "carol", [(apb.ACTION_READ, PROGRAM), (apb.ACTION_APPROVE, PROGRAM)])
    status, rejected = await rest.post(
        actions.format(pending["deployment_id"], "reject"), {"reason": "not now"}, token=carol
    )
    assert status == 200, rejected
    assert rejected["deployment"]["state"] == "DEPLOYMENT_STATE_ABORTED"
    assert [(a["rejected"], a["comment"]) for a in rejected["deployment"]["approvals"]] == [(True, "not now")]

    # Held at 10 % for an hour: in progress while the test aborts it.
    canary = await rest.running.deployments.CreateDeployment(
        dpb.CreateDeploymentRequest(
            program=PROGRAM, version="1.1.0", environment="staging", strategy=canary_strategy((10, 3600))
        )
    )
    abort = actions.format(canary.deployment.name.removeprefix("deployments/"), "abort")
    status, stale = await rest.post(abort, {"reason": "too slow", "etag": "rev-1"})
    assert status == 409 and stale["error"]["code"] == "ABORTED", stale  # the etag reached the RPC
    status, aborted = await rest.post(abort, {"reason": "too slow"})
    assert status == 200, aborted
    assert aborted["deployment"]["state"] == "DEPLOYMENT_STATE_ABORTED"
    assert aborted["deployment"]["timeline"][-1]["reason"] == "too slow"
    status, _ = await rest.post(abort.replace("/abort", "/pause"), {})
    assert status == 404

"""The seed's REST routes (`--http-listen`): a thin JSON gateway in front of the gRPC services.

Every route calls the server's own gRPC services over a private channel,
forwarding the caller's `Authorization` header as metadata, so that
authentication, the permission table, validation, errors, the audit and the
access log are exactly those of the gRPC API (like grpc-gateway): this module
decides nothing about who may do what. Requests are built as the proto
messages; answers go out through protobuf's json_format with the proto field
names (snake_case, as the seed's). A failed call becomes
`{"error": {"code", "message", "details"}}` with the gRPC code's name, the
google.rpc details as JSON and the HTTP status of `HTTP_STATUS`.

The channel reaches the gRPC server on a Unix socket of its own (in a private
0700 folder), added before the server starts: it works whatever the TCP port
asks for (TLS, client certificates), and the guard still demands a bearer
token of each call, since the socket carries no certificate.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from ssl import PROTOCOL_TLS_SERVER, SSLContext
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import access_pb2_grpc as apb_grpc
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as rpb
from dspy_registry.v1 import registry_pb2_grpc as rpb_grpc

from .api.guard import GATEWAY_CLIENT_KEY, GATEWAY_SECRET_KEY
from .api.status import DOMAIN
from .http_openapi import OPENAPI

log = logging.getLogger("dspy_registry.http")

# gRPC code -> HTTP status. FAILED_PRECONDITION is 409 (the state of the
# resource refuses the request: a yanked version, a deployment in progress, no
# previous version), not 412, which HTTP keeps for failed If-* headers.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

# Answers of aiohttp itself (no such route, wrong method, body too big) in the same shape.
_CODE_OF_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
}

STRATEGIES = {
    "replace": dpb.STRATEGY_REPLACE,
    "blue_green": dpb.STRATEGY_BLUE_GREEN,
    "canary": dpb.STRATEGY_CANARY,
}

DEPLOY_FIELDS = (
    "version",
    "environment",
    "strategy",
    "canary_percent",
    "reason",
    "request_id",
    "supersede",
    "allow_breaking",
)
MAX_LIMIT = 1000
LIST_PAGE = 1000  # the largest page ListPrograms gives
DEFAULT_LIMIT = 50
DEPLOYMENTS_SHOWN = 50  # a program's newest deployments in GET /programs/{name}
CALL_TIMEOUT = 30.0
_MAX_MESSAGE = 8 << 20


class BadRequest(Exception):
    """Input the gateway cannot even turn into a request; answered as INVALID_ARGUMENT."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(description)
        self.field = field
        self.description = description


def to_json(message: Message) -> dict[str, Any]:
    """A message as JSON: proto field names, fields at their defaults included (stable shapes)."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _short(name: str) -> str:
    """`deployments/abc` -> `abc`."""
    return name.rsplit("/", 1)[-1]


def _state(state: int) -> str:
    """DEPLOYMENT_STATE_IN_PROGRESS -> in_progress."""
    return dpb.DeploymentState.Name(state).removeprefix("DEPLOYMENT_STATE_").lower()


def _dumps(value: Any) -> str:
    return json.dumps(value) + "\n"  # a newline, for a shell prompt after `curl`


def _json(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(value, status=status, headers=headers, dumps=_dumps)


def _error_body(code: grpc.StatusCode, message: str, details: list[dict[str, Any]]) -> dict[str, Any]:
    return {"error": {"code": code.name, "message": message, "details": details}}


def _error_response(code: grpc.StatusCode, message: str, details: list[dict[str, Any]]) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if code == grpc.StatusCode.UNAUTHENTICATED else None
    return _json(_error_body(code, message, details), status=HTTP_STATUS.get(code, 500), headers=headers)


def _packed(message: Message) -> dict[str, Any]:
    packed = any_pb2.Any()
    packed.Pack(message)
    return to_json(packed)


def _bad_request(exc: BadRequest) -> web.Response:
    """Same shape as the server's INVALID_ARGUMENT: ErrorInfo, then BadRequest field violations."""
    violation = error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=exc.description)
    details = [
        _packed(error_details_pb2.ErrorInfo(reason="INVALID_ARGUMENT", domain=DOMAIN)),
        _packed(error_details_pb2.BadRequest(field_violations=[violation])),
    ]
    return _error_response(grpc.StatusCode.INVALID_ARGUMENT, exc.description, details)


def _rpc_error(err: grpc.aio.AioRpcError) -> web.Response:
    details: list[dict[str, Any]] = []
    metadata: Any = err.trailing_metadata() or ()  # grpc-stubs types it as one item
    for key, value in metadata:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for packed in status_pb2.Status.FromString(value).details:
                try:
                    details.append(to_json(packed))
                except (TypeError, json_format.Error):  # a detail type this process does not know
                    details.append({"@type": packed.type_url})
    return _error_response(err.code(), err.details() or "", details)


def _client_address(request: web.Request) -> str:
    """The HTTP client as gRPC would name it: ipv4:10.0.0.7:51234, ipv6:[::1]:51234."""
    peername: Any = request.transport.get_extra_info("peername") if request.transport else None
    if not peername:
        return ""
    host, port = peername[0], peername[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _known_query(request: web.Request, *names: str) -> None:
    # Strict, as json_format.Parse is with unknown fields: a misspelt filter must not list everything.
    for name in request.query:
        if name not in names:
            raise BadRequest(name, f"unknown query parameter {name!r}; known: {', '.join(names)}")


def _query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(name, f"{name} must be an integer") from None
    if not low <= value <= high:
        raise BadRequest(name, f"{name} must be between {low} and {high}")
    return value


def _query_str(request: web.Request, name: str) -> str:
    value = request.query.get(name, "")
    _check_text(name, value)
    return value


def _check_text(field: str, value: str) -> None:
    # A lone surrogate (from undecodable bytes) cannot go into a proto string.
    try:
        value.encode()
    except UnicodeEncodeError:
        raise BadRequest(field, f"{field} is not valid UTF-8") from None


async def _body(request: web.Request, *names: str) -> dict[str, Any]:
    """The JSON object of a POST, with only the fields `names`; an empty body is an empty object."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("body", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("body", "the body must be a JSON object")
    for name in body:
        if name not in names:
            raise BadRequest(name, f"unknown field {name!r}; known: {', '.join(names)}")
    return body


def _body_str(body: dict[str, Any], name: str) -> str:
    value = body.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(name, f"{name} must be a string")
    _check_text(name, value)
    return value


def _body_bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(name, f"{name} must be a boolean")
    return value


def _path(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    _check_text(name, value)
    return value


class Gateway:
    """The routes, calling the gRPC services over `channel`."""

    def __init__(self, channel: grpc.aio.Channel, secret: str) -> None:
        self.secret = secret  # proves to the guard that the client address is ours (guard.GATEWAY_*)
        self.registry = rpb_grpc.RegistryServiceStub(channel)  # type: ignore[no-untyped-call]
        self.deployments = dpb_grpc.DeploymentServiceStub(channel)  # type: ignore[no-untyped-call]
        self.access = apb_grpc.AccessServiceStub(channel)  # type: ignore[no-untyped-call]

    def _metadata(self, request: web.Request) -> tuple[tuple[str, str], ...]:
        forwarded = ((GATEWAY_SECRET_KEY, self.secret), (GATEWAY_CLIENT_KEY, _client_address(request)))
        authorization = request.headers.get("Authorization")
        if authorization is None:
            return forwarded
        # gRPC metadata is printable ASCII; anything else cannot be a token of ours,
        # and the guard answers a missing header and a bad one alike.
        if not authorization.isascii() or not authorization.isprintable():
            return (("authorization", "Bearer -"), *forwarded)
        return (("authorization", authorization), *forwarded)

    @web.middleware
    async def errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every failure as the error JSON: gRPC errors, bad input, aiohttp's own 4xx."""
        try:
            return await handler(request)
        except grpc.aio.AioRpcError as err:
            return _rpc_error(err)
        except BadRequest as exc:
            # gRPC authenticates before it reads a request: so here, a bad token is told
            # UNAUTHENTICATED before bad input is told INVALID_ARGUMENT. WhoAmI only authenticates.
            try:
                await self.access.WhoAmI(
                    apb.WhoAmIRequest(), metadata=self._metadata(request), timeout=CALL_TIMEOUT
                )
            except grpc.aio.AioRpcError as err:
                return _rpc_error(err)
            return _bad_request(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = _CODE_OF_HTTP.get(exc.status, grpc.StatusCode.UNKNOWN)
            response = _json(_error_body(code, exc.reason, []), status=exc.status)
            if exc.status == 405:
                response.headers["Allow"] = exc.headers.get("Allow", "")
            return response

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self.errors])
        app.router.add_get("/api/openapi.json", self.openapi)
        app.router.add_get("/api/registry/programs", self.list_programs)
        app.router.add_get("/api/registry/programs/{name}", self.get_program)
        app.router.add_post("/api/registry/programs/{name}/deploy", self.deploy)
        app.router.add_get("/api/registry/deployments/{id}/status", self.status)
        app.router.add_post("/api/registry/deployments/{id}/rollback", self.rollback)
        return app

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(OPENAPI)

    async def list_programs(self, request: web.Request) -> web.Response:
        _known_query(request, "environment", "team", "limit", "offset")
        limit = _query_int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        offset = _query_int(request, "offset", 0, 0, 2**31 - 1)
        query = rpb.ListProgramsRequest(environment=_query_str(request, "environment"))
        team = _query_str(request, "team")
        if team:
            query.labels["team"] = team
        metadata = self._metadata(request)
        # Page tokens, not offsets, on the gRPC side: walk the pages up to the offset.
        # Each page holds at most 1000 programs, so a registry's few pages are cheap.
        programs: list[rpb.Program] = []
        skip = offset
        total = 0
        while True:
            query.page_size = min(LIST_PAGE, skip + limit - len(programs))
            page = await self.registry.ListPrograms(query, metadata=metadata, timeout=CALL_TIMEOUT)
            total = page.total_size
            items = list(page.programs)
            dropped = min(skip, len(items))
            skip -= dropped
            programs.extend(items[dropped:][: limit - len(programs)])
            if len(programs) >= limit or not page.next_page_token:
                break
            query.page_token = page.next_page_token
        return _json(
            {
                "programs": [to_json(p) for p in programs],
                "total": total,
                "page": offset // limit + 1,
                "limit": limit,
                "offset": offset,
            }
        )

    async def get_program(self, request: web.Request) -> web.Response:
        name = _path(request, "name")
        _known_query(request, "version", "environment")
        version = _query_str(request, "version")
        environment = _query_str(request, "environment")
        metadata = self._metadata(request)
        if environment and not version:
            ask = rpb.GetProgramVersionRequest(name=f"programs/{name}", environment=environment)
        else:
            ask = rpb.GetProgramVersionRequest(name=f"programs/{name}/versions/{version or 'latest'}")
        found = (
            await self.registry.GetProgramVersion(ask, metadata=metadata, timeout=CALL_TIMEOUT)
        ).program_version
        versions = await self.registry.ListProgramVersions(
            rpb.ListProgramVersionsRequest(parent=f"programs/{name}", page_size=MAX_LIMIT),
            metadata=metadata,
            timeout=CALL_TIMEOUT,
        )
        deployments = await self.deployments.ListDeployments(
            dpb.ListDeploymentsRequest(program=name, page_size=DEPLOYMENTS_SHOWN),
            metadata=metadata,
            timeout=CALL_TIMEOUT,
        )
        return _json(
            {
                "name": name,
                "version": found.version,
                "signature": found.signature,
                "performance": dict(found.performance),
                "labels": dict(found.labels),
                "program_version": to_json(found),
                "deployments": [to_json(d) for d in deployments.deployments],
                "versions": [to_json(v) for v in versions.program_versions],
            }
        )

    async def deploy(self, request: web.Request) -> web.Response:
        name = _path(request, "name")
        _known_query(request)
        body = await _body(request, *DEPLOY_FIELDS)
        create = dpb.CreateDeploymentRequest(
            program=name,
            version=_body_str(body, "version") or "latest",
            environment=_body_str(body, "environment"),
            reason=_body_str(body, "reason"),
            request_id=_body_str(body, "request_id"),
            supersede=_body_bool(body, "supersede"),
            allow_breaking=_body_bool(body, "allow_breaking"),
        )
        strategy = _body_str(body, "strategy")
        canary_percent = body.get("canary_percent")
        if strategy and strategy not in STRATEGIES:
            raise BadRequest("strategy", f"strategy must be one of {', '.join(STRATEGIES)}")
        if canary_percent is not None:
            if not isinstance(canary_percent, int) or isinstance(canary_percent, bool):
                raise BadRequest("canary_percent", "canary_percent must be an integer")
            if not 1 <= canary_percent <= 100:
                raise BadRequest("canary_percent", "canary_percent must be between 1 and 100")
            if strategy not in ("", "canary"):
                raise BadRequest("canary_percent", "canary_percent goes with the canary strategy only")
            strategy = "canary"
            # One step at that weight; promotion to 100 % follows the environment's policy.
            create.strategy.canary.steps.add(weight_percent=canary_percent)
        if strategy:
            create.strategy.strategy = STRATEGIES[strategy]
        response = await self.deployments.CreateDeployment(
            create, metadata=self._metadata(request), timeout=CALL_TIMEOUT
        )
        deployment_id = _short(response.deployment.name)
        return _json(
            {
                "deployment_id": deployment_id,
                "status": "initiated",
                "monitor_url": f"/api/registry/deployments/{deployment_id}/status",
                "deployment": to_json(response.deployment),
            },
            status=201,
        )

    async def status(self, request: web.Request) -> web.Response:
        deployment_id = _path(request, "id")
        _known_query(request)
        metadata = self._metadata(request)
        deployment = (
            await self.deployments.GetDeployment(
                dpb.GetDeploymentRequest(name=f"deployments/{deployment_id}"),
                metadata=metadata,
                timeout=CALL_TIMEOUT,
            )
        ).deployment
        status = await self.deployments.GetDeploymentStatus(
            dpb.GetDeploymentStatusRequest(program=deployment.program, environment=deployment.environment),
            metadata=metadata,
            timeout=CALL_TIMEOUT,
        )
        return _json(
            {
                "deployment_id": _short(deployment.name),
                "status": _state(deployment.state),
                "program": deployment.program,
                "environment": deployment.environment,
                "version": deployment.version,
                "weight_percent": deployment.weight_percent,
                "deployment": to_json(deployment),
                "target": to_json(status.target),
                "verdict": dpb.HealthVerdict.Name(status.verdict),
                "health": [to_json(h) for h in status.health],
                "sidecars": [to_json(s) for s in status.sidecars],
            }
        )

    async def rollback(self, request: web.Request) -> web.Response:
        deployment_id = _path(request, "id")
        _known_query(request)
        body = await _body(request, "reason", "request_id")
        reason = _body_str(body, "reason")
        response = await self.deployments.RollbackDeployment(
            dpb.RollbackDeploymentRequest(
                name=f"deployments/{deployment_id}",
                reason=reason,
                request_id=_body_str(body, "request_id"),
            ),
            metadata=self._metadata(request),
            timeout=CALL_TIMEOUT,
        )
        rollback_id = _short(response.deployment.name)
        return _json(
            {
                "rollback_deployment_id": rollback_id,
                "status": "initiated",
                "reason": reason,
                "monitor_url": f"/api/registry/deployments/{rollback_id}/status",
                "deployment": to_json(response.deployment),
                "rolled_back": to_json(response.rolled_back),
            },
            status=201,
        )


def server_ssl(cert: str, key: str) -> SSLContext | None:
    """The gRPC port's certificate for HTTPS too: bearer tokens never cross the wire in the clear
    where gRPC would not let them. Client certificates are not asked for: the routes take tokens."""
    if not cert or not key:
        return None
    context = SSLContext(PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


class HttpServer:
    """The REST routes on `listen` (HTTPS with `ssl`), in front of the gRPC server on `grpc_address`."""

    def __init__(self, listen: str, secret: str, ssl: SSLContext | None = None, grace: float = 10.0) -> None:
        self.listen = listen
        self.secret = secret  # the gateway's, for the guard (Guard.gateway_secret)
        self.ssl = ssl
        self.grace = grace  # seconds in-flight requests get on stop
        self.port = 0
        self._folder = Path(tempfile.mkdtemp(prefix="dspy-registry-http-"))  # mode 0700
        self.grpc_address = f"unix:{self._folder / 'grpc.sock'}"
        self._channel: grpc.aio.Channel | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Serve; the gRPC server must already listen on `grpc_address`."""
        host, _, port = self.listen.rpartition(":")
        try:
            port_number = int(port)
        except ValueError:
            raise ValueError(f"--http-listen wants HOST:PORT, not {self.listen!r}") from None
        self._channel = grpc.aio.insecure_channel(
            self.grpc_address,
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
                ("grpc.max_send_message_length", _MAX_MESSAGE),
            ],
        )
        self._runner = web.AppRunner(
            Gateway(self._channel, self.secret).application(), access_log=None, shutdown_timeout=self.grace
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host.strip("[]") or None, port_number, ssl_context=self.ssl)
        await site.start()
        self.port = int(self._runner.addresses[0][1])  # the bound port, for port 0
        log.info("serving REST routes", extra={"address": f"{host}:{self.port}"})
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._channel is not None:
            await self._channel.close(None)
        shutil.rmtree(self._folder, ignore_errors=True)

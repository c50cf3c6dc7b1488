"""The REST routes (`--http-listen`): a thin JSON gateway in front of the gRPC services.

Every route calls the server's own gRPC services over a private channel,
forwarding the caller's `Authorization` header as metadata, so that
authentication, the permission table, validation, errors, the audit and the
access log are exactly those of the gRPC API (like grpc-gateway): this module
decides nothing about who may do what. Requests are built as the proto
messages; answers go out through protobuf's json_format with the proto field
names (snake_case, as the routes' own fields are). A failed call becomes
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
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
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
from .errors import quote
from .http_openapi import OPENAPI
from .readiness import HEALTH_PATHS, Readiness, answer

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
    """Input the gateway cannot even turn into a request; answered as INVALID_ARGUMENT (`status`: 400,
    or 415 for a body that is not JSON)."""

    def __init__(self, field: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.field = field
        self.description = description
        self.status = status


class NotServed(Exception):
    """`?version=&environment=` where the environment serves another version: NOT_FOUND."""

    def __init__(self, resource: str, environment: str, served: str) -> None:
        super().__init__(f"environments/{environment} serves {served}, not {resource}")
        self.resource = resource


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


def _error_response(
    code: grpc.StatusCode, message: str, details: list[dict[str, Any]], status: int | None = None
) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if code == grpc.StatusCode.UNAUTHENTICATED else None
    status = status or HTTP_STATUS.get(code, 500)
    return _json(_error_body(code, message, details), status=status, headers=headers)


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
    return _error_response(grpc.StatusCode.INVALID_ARGUMENT, exc.description, details, exc.status)


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
    # Strict, as json_format.Parse is with unknown fields: a misspelt filter must not list everything,
    # and `?team=a&team=b` must not quietly mean one of them.
    for name in request.query:
        if name not in names:
            raise BadRequest(name, f"unknown query parameter {quote(name)}; known: {', '.join(names)}")
        if len(request.query.getall(name)) > 1:
            raise BadRequest(name, f"{name} is given more than once")


def _query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    # ASCII digits only: int() also reads other scripts' digits ("١" is 1), which no client means.
    if not raw.isascii():
        raise BadRequest(name, f"{name} must be an integer")
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


def _is_json(content_type: str | None) -> bool:
    """No Content-Type, application/json or application/*+json (parameters such as charset aside)."""
    if content_type is None:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are each given once: `{"version": "1", "version": "2"}` is refused."""
    body: dict[str, Any] = {}
    for key, value in pairs:
        if key in body:
            raise BadRequest(key, f"{quote(key)} is given more than once")
        body[key] = value
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


async def _body(request: web.Request, *names: str) -> dict[str, Any]:
    """The JSON object of a POST, with only the fields `names`; an empty body is an empty object."""
    raw = await request.read()
    if not raw.strip():
        return {}
    if not _is_json(request.headers.get("Content-Type")):
        raise BadRequest("body", "the body must be JSON (Content-Type: application/json)", status=415)
    try:
        body = json.loads(raw, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("body", "the body is not valid JSON") from None
    except RecursionError:  # nesting deeper than the parser's stack: never a request of ours
        raise BadRequest("body", "the body is nested too deep") from None
    if not isinstance(body, dict):
        raise BadRequest("body", "the body must be a JSON object")
    for name in body:
        if name not in names:
            raise BadRequest(name, f"unknown field {quote(name)}; known: {', '.join(names)}")
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
        except NotServed as exc:
            info = error_details_pb2.ResourceInfo(resource_type="programs", resource_name=exc.resource)
            details = [
                _packed(error_details_pb2.ErrorInfo(reason="NOT_FOUND", domain=DOMAIN)),
                _packed(info),
            ]
            return _error_response(grpc.StatusCode.NOT_FOUND, str(exc), details)
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
        except Exception:  # a defect of ours: logged once, answered in the same shape, no internals
            log.exception("unhandled error in %s %s", request.method, request.path)
            return _json(
                _error_body(grpc.StatusCode.INTERNAL, "internal error; the server log has the details", []),
                status=500,
            )

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
        if environment:
            ask = rpb.GetProgramVersionRequest(name=f"programs/{name}", environment=environment)
        else:
            ask = rpb.GetProgramVersionRequest(name=f"programs/{name}/versions/{version or 'latest'}")
        found = (
            await self.registry.GetProgramVersion(ask, metadata=metadata, timeout=CALL_TIMEOUT)
        ).program_version
        if version and environment and found.version != version:
            # Both: that version, if the environment serves it (a filter, never one ignored).
            raise NotServed(f"programs/{name}/versions/{version}", environment, found.version)
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
        program = await self.registry.GetProgram(
            rpb.GetProgramRequest(name=f"programs/{name}"), metadata=metadata, timeout=CALL_TIMEOUT
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
                "environments": [to_json(e) for e in program.program.environments],
            }
        )

    async def deploy(self, request: web.Request) -> web.Response:
        name = _path(request, "name")
        _known_query(request)
        body = await _body(request, *DEPLOY_FIELDS)
        create = dpb.CreateDeploymentRequest(
            program=name,
            version=_body_str(body, "version"),  # none: refused as over gRPC (`latest` is said, not assumed)
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

    async def deployment_and_status(
        self, request: web.Request
    ) -> tuple[dpb.Deployment, dpb.GetDeploymentStatusResponse]:
        """The deployment the path's `id` names, and its environment's status (the dashboard's too)."""
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
        return deployment, status

    async def status(self, request: web.Request) -> web.Response:
        deployment, status = await self.deployment_and_status(request)
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


class _Connection(RequestHandler):
    """aiohttp's per-connection handler, answering what its HTTP parser refuses in the routes' shape.

    A request line or header over aiohttp's limits (8 KiB), or broken framing, never reaches the
    routes: aiohttp answers it itself, in plain text, and logs a traceback for each. Here it is the
    routes' JSON error (INVALID_ARGUMENT, aiohttp's status) and one warning line without a traceback:
    a stranger's junk must not fill the log.
    """

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        reason = message or (str(exc) if exc else "") or "bad request"
        log.warning(
            "refused an HTTP request it could not parse", extra={"status": status, "reason": reason[:200]}
        )
        if request.writer.output_size > 0:  # as aiohttp: an answer already begun cannot be replaced
            raise ConnectionError("the response was already begun")
        code = _CODE_OF_HTTP.get(status, grpc.StatusCode.INVALID_ARGUMENT)
        response = _json(_error_body(code, reason[:512], []), status=status)
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    """An AppRunner whose connections are `_Connection`s (aiohttp has no setting for it)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server
        return server


class HttpServer:
    """The REST routes on `listen` (HTTPS with `ssl`), in front of the gRPC server on `grpc_address`."""

    def __init__(
        self,
        listen: str,
        secret: str,
        ssl: SSLContext | None = None,
        grace: float = 10.0,
        extra: Callable[[Gateway, web.Application], None] | None = None,
        readiness: Readiness | None = None,
    ) -> None:
        self.listen = listen
        self.extra = extra  # adds more routes beside the gateway's (the dashboard's, app.py)
        self.readiness = readiness  # answers /healthz and /readyz (readiness.py); None: no such routes
        self.secret = secret  # the gateway's, for the guard (Guard.gateway_secret)
        self.ssl = ssl
        self.grace = grace  # seconds in-flight requests get on stop
        self.port = 0
        self._folder = Path(tempfile.mkdtemp(prefix="dspy-registry-http-"))  # mode 0700
        self.grpc_address = f"unix:{self._folder / 'grpc.sock'}"
        self._channel: grpc.aio.Channel | None = None
        self._runner: _Runner | None = None

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
        gateway = Gateway(self._channel, self.secret)
        application = gateway.application()
        if self.readiness is not None:
            for path in HEALTH_PATHS:
                application.router.add_get(path, self._health)
        if self.extra is not None:
            self.extra(gateway, application)
        self._runner = _Runner(application, access_log=None, shutdown_timeout=self.grace)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host.strip("[]") or None, port_number, ssl_context=self.ssl)
        await site.start()
        self.port = int(self._runner.addresses[0][1])  # the bound port, for port 0
        log.info("serving REST routes", extra={"address": f"{host}:{self.port}"})
        return self.port

    async def _health(self, request: web.Request) -> web.Response:
        assert self.readiness is not None  # the routes exist only with it
        found = answer(request.path, self.readiness)
        assert found is not None  # routed for HEALTH_PATHS only
        status, body = found
        return web.Response(text=body, status=status, content_type="application/json")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._channel is not None:
            await self._channel.close(None)
        shutil.rmtree(self._folder, ignore_errors=True)

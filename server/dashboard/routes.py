"""The dashboard's routes: its page and files at `/`, its reads, actions and live stream under
`/api/dashboard/`.

Like every REST route (http_api.py), each one calls the gRPC services over the gateway's channel with
the caller's bearer token: authentication, the permission table, validation, the audit and the errors
are the RPCs'. This module decides nothing about who may do what; `abilities` asks the server
(CheckPermission) so that the page shows only the buttons the caller can use, and a forged call is
refused by the RPC all the same.

Every answer carries a strict Content-Security-Policy (scripts and styles from this origin only, no
inline ones, nothing framed), and the token never goes in a URL: the live stream is read with fetch()
and an Authorization header, not EventSource.
"""

from __future__ import annotations

import asyncio
import json
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import grpc
from aiohttp import web

from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import registry_pb2 as rpb

from ..http_api import (
    CALL_TIMEOUT,
    BadRequest,
    Gateway,
    _body,
    _body_str,
    _json,
    _known_query,
    _path,
    _query_int,
    _query_str,
    to_json,
)
from .feed import LiveFeed

STATIC = Path(str(resources.files(__package__) / "static"))

# No inline script or style, nothing from elsewhere, no framing, no forms posting anywhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
KEEP_ALIVE_SECONDS = 15.0  # a comment line on a quiet stream, so that proxies keep it open
GONE_SECONDS = 1.0  # how soon a stream notices its tab was closed while nothing happens
AUDIT_SHOWN = 100
PROGRAMS_SHOWN = 200
DEPLOYMENTS_SHOWN = 50

# What the page may offer, and the action the server checks for each (CheckPermission).
ABILITIES = {
    "approve": apb.ACTION_APPROVE,
    "deploy": apb.ACTION_DEPLOY,  # promote, abort
    "rollback": apb.ACTION_ROLLBACK,
}


class Action(NamedTuple):
    """A deployment action of the page: the RPC it calls, the request's field that takes the body's
    `reason`, and the fields it sets itself (besides name, etag and request_id, which every one takes)."""

    method: str
    reason_field: str
    fixed: dict[str, Any]


ACTIONS = {
    "approve": Action("ApproveDeployment", "comment", {}),
    "reject": Action("ApproveDeployment", "comment", {"reject": True}),
    "promote": Action("PromoteDeployment", "reason", {}),
    "abort": Action("AbortDeployment", "reason", {}),
}


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


class Dashboard:
    def __init__(self, feed: LiveFeed) -> None:
        self.feed = feed
        self.gateway: Gateway

    def install(self, gateway: Gateway, app: web.Application) -> None:
        """Add the dashboard's routes to the gateway's `app`, calling the services through `gateway`."""
        self.gateway = gateway
        app.on_response_prepare.append(_security_headers)
        app.router.add_get("/", self.page)
        app.router.add_static("/static/", STATIC, follow_symlinks=False)
        api = "/api/dashboard"
        app.router.add_get(f"{api}/whoami", self.whoami)
        app.router.add_get(f"{api}/abilities", self.abilities)
        app.router.add_get(f"{api}/programs", self.programs)
        app.router.add_get(f"{api}/programs/{{name}}/versions/{{version}}", self.version)
        app.router.add_get(f"{api}/programs/{{name}}/compare", self.compare)
        app.router.add_get(f"{api}/deployments", self.deployments)
        app.router.add_get(f"{api}/deployments/{{id}}", self.deployment)
        app.router.add_post(f"{api}/deployments/{{id}}/{{action}}", self.act)
        app.router.add_get(f"{api}/audit", self.audit)
        app.router.add_get(f"{api}/live", self.live)

    async def page(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    def _metadata(self, request: web.Request) -> tuple[tuple[str, str], ...]:
        return self.gateway._metadata(request)

    async def whoami(self, request: web.Request) -> web.Response:
        _known_query(request)
        me = await self.gateway.access.WhoAmI(
            apb.WhoAmIRequest(), metadata=self._metadata(request), timeout=CALL_TIMEOUT
        )
        return _json(to_json(me))

    async def abilities(self, request: web.Request) -> web.Response:
        """What the caller may do on `program` (and whether it may read the audit log)."""
        _known_query(request, "program")
        program = _query_str(request, "program")
        asks = {name: (action, program) for name, action in ABILITIES.items() if program}
        asks["audit"] = (apb.ACTION_ADMIN, "*")
        metadata = self._metadata(request)
        answers = await asyncio.gather(
            *(
                self.gateway.access.CheckPermission(
                    apb.CheckPermissionRequest(action=action, resource=resource),
                    metadata=metadata,
                    timeout=CALL_TIMEOUT,
                )
                for action, resource in asks.values()
            )
        )
        return _json({name: answer.allowed for name, answer in zip(asks, answers, strict=True)})

    async def programs(self, request: web.Request) -> web.Response:
        """Programs whose name starts with `q` and that carry the label `label` (`key=value`)."""
        _known_query(request, "q", "label")
        query = rpb.ListProgramsRequest(page_size=PROGRAMS_SHOWN, name_prefix=_query_str(request, "q"))
        label = _query_str(request, "label")
        if label:
            key, equals, value = label.partition("=")
            if not equals or not key:
                raise BadRequest("label", "label must be KEY=VALUE")
            query.labels[key.strip()] = value.strip()
        page = await self.gateway.registry.ListPrograms(
            query, metadata=self._metadata(request), timeout=CALL_TIMEOUT
        )
        return _json({"programs": [to_json(p) for p in page.programs], "total": page.total_size})

    async def version(self, request: web.Request) -> web.Response:
        """A version with its signature's fields."""
        name, version = _path(request, "name"), _path(request, "version")
        _known_query(request)
        metadata = self._metadata(request)
        found = (
            await self.gateway.registry.GetProgramVersion(
                rpb.GetProgramVersionRequest(name=f"programs/{name}/versions/{version}"),
                metadata=metadata,
                timeout=CALL_TIMEOUT,
            )
        ).program_version
        signature = None
        if found.signature:
            signature = (
                await self.gateway.registry.GetSignature(
                    rpb.GetSignatureRequest(name=found.signature), metadata=metadata, timeout=CALL_TIMEOUT
                )
            ).signature_version
        return _json(
            {
                "program_version": to_json(found),
                "signature": to_json(signature) if signature is not None else None,
            }
        )

    async def compare(self, request: web.Request) -> web.Response:
        name = _path(request, "name")
        _known_query(request, "base", "target")
        base, target = _query_str(request, "base"), _query_str(request, "target")
        answer = await self.gateway.registry.CompareProgramVersions(
            rpb.CompareProgramVersionsRequest(
                base=f"programs/{name}/versions/{base}", target=f"programs/{name}/versions/{target}"
            ),
            metadata=self._metadata(request),
            timeout=CALL_TIMEOUT,
        )
        return _json(to_json(answer))

    async def deployments(self, request: web.Request) -> web.Response:
        _known_query(request, "program", "environment")
        answer = await self.gateway.deployments.ListDeployments(
            dpb.ListDeploymentsRequest(
                program=_query_str(request, "program"),
                environment=_query_str(request, "environment"),
                page_size=DEPLOYMENTS_SHOWN,
            ),
            metadata=self._metadata(request),
            timeout=CALL_TIMEOUT,
        )
        return _json({"deployments": [to_json(d) for d in answer.deployments]})

    async def deployment(self, request: web.Request) -> web.Response:
        """A deployment (its strategy's steps, approvals, timeline) and its environment's status: the
        verdict, each version's health beside the thresholds, the fleet."""
        deployment, status = await self.gateway.deployment_and_status(request)
        return _json({"deployment": to_json(deployment), "status": to_json(status)})

    async def act(self, request: web.Request) -> web.Response:
        """approve, reject, promote or abort: the RPC ACTIONS names, with the caller's token."""
        deployment_id, action = _path(request, "id"), _path(request, "action")
        if action not in ACTIONS:
            raise web.HTTPNotFound()
        _known_query(request)
        body = await _body(request, "reason", "etag", "request_id")
        method, reason_field, fixed = ACTIONS[action]
        message = getattr(dpb, f"{method}Request")(
            name=f"deployments/{deployment_id}",
            etag=_body_str(body, "etag"),
            request_id=_body_str(body, "request_id"),
            **{reason_field: _body_str(body, "reason")},
            **fixed,
        )
        answer = await getattr(self.gateway.deployments, method)(
            message, metadata=self._metadata(request), timeout=CALL_TIMEOUT
        )
        return _json(to_json(answer))

    async def audit(self, request: web.Request) -> web.Response:
        """The audit log, newest first, filtered by principal, program and action (the RPC's method)."""
        _known_query(request, "principal", "program", "action", "limit")
        principal = _query_str(request, "principal")
        program = _query_str(request, "program")
        answer = await self.gateway.access.ListAuditEvents(
            apb.ListAuditEventsRequest(
                page_size=_query_int(request, "limit", AUDIT_SHOWN, 1, AUDIT_SHOWN),
                principal=principal if not principal or "/" in principal else f"principals/{principal}",
                resource=program if not program or "/" in program else f"programs/{program}",
                method=_full_method(_query_str(request, "action")),
            ),
            metadata=self._metadata(request),
            timeout=CALL_TIMEOUT,
        )
        return _json({"audit_events": [to_json(e) for e in answer.audit_events]})

    async def _may_read(self, request: web.Request, program: str) -> None:
        await self.gateway.registry.GetProgram(
            rpb.GetProgramRequest(name=f"programs/{program}"),
            metadata=self._metadata(request),
            timeout=CALL_TIMEOUT,
        )

    async def live(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events of `program`: its deployments' events as they commit, a `pulse` when
        metrics or sidecar reports of one of its targets arrive, `reset` when the tab must read
        everything again. Authorized as GetProgram is, again whenever grants or tokens change."""
        _known_query(request, "program")
        program = _query_str(request, "program")
        if not program:
            raise BadRequest("program", "program is required")
        await self._may_read(request, program)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        tab = self.feed.open(program)
        try:
            await response.write(_sse({"type": "ready"}))
            quiet = 0.0
            while True:
                item = await tab.next(GONE_SECONDS)
                if item is None:
                    break
                if not item:
                    # Nothing to send: a closed tab is noticed here, not at the next write, so that it
                    # does not keep its place in the feed until then.
                    transport = request.transport
                    if transport is None or transport.is_closing():
                        break
                    quiet += GONE_SECONDS
                    if quiet >= KEEP_ALIVE_SECONDS:
                        quiet = 0.0
                        await response.write(b": keep-alive\n\n")
                    continue
                quiet = 0.0
                if tab.recheck:
                    tab.recheck = False
                    try:
                        await self._may_read(request, program)
                    except grpc.aio.AioRpcError:
                        break  # no longer allowed: the stream ends, and opening it again is refused
                await response.write(_sse(item))
        except ConnectionError:
            pass  # the tab went away
        finally:
            self.feed.close(tab)
        return response


def _full_method(action: str) -> str:
    """`ApproveDeployment` -> `/dspy_registry.v1.DeploymentService/ApproveDeployment`; a full name as is."""
    if not action or action.startswith("/"):
        return action
    for module in (rpb, dpb, apb):
        for service in module.DESCRIPTOR.services_by_name.values():
            if action in service.methods_by_name:
                return f"/{service.full_name}/{action}"
    raise BadRequest("action", f"no RPC is named {action!r}")


def _sse(item: dict[str, Any]) -> bytes:
    return f"event: {item['type']}\ndata: {json.dumps(item)}\n\n".encode()

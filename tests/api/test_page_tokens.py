"""Page tokens are opaque but not sealed: base64 of the cursor and the query's fingerprint. A client
can read one and send it back with the cursor rewritten; every List RPC must then answer a page or
INVALID_ARGUMENT naming page_token, on SQLite and Postgres, never INTERNAL (found by the fuzzing of
tests/reliability: a lone surrogate failed every keyed list, a superscript digit the audit log and
the deployments, a cursor time of 20 digits the deployments)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import access_pb2_grpc as apb_grpc
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc
from tests.api.conftest import Running, register_signature, start, violations
from tests.eventually import until
from tests.factories import dspy_state

CURSORS = [
    "\ud800",  # a lone surrogate: json.loads makes one of "\ud800", no database takes it
    "\u00b2",  # a superscript two: str.isdigit() says yes, int() says no
    "\u0661\u0662",  # Arabic-Indic digits: int() reads them, no server wrote them
    "99999999999999999999:abc",  # a deployment cursor whose time overflows a 64-bit integer
    "\u00b2:abc",
    "9" * 20,
    '["\\ud800", "1.0.0"]',  # a version cursor holding a lone surrogate
    '["0", "\u00b2"]',
]


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[Running]:
    running = await start(database_url, webhook_allow=("127.0.0.0/8",))  # webhooks to a closed port
    yield running
    await running.channel.close(None)
    await running.app.stop(grace=0)


def _rewritten(token: str, cursor: str) -> str:
    data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw = json.dumps({**data, "a": cursor}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def _two_of_everything(server: Running) -> None:
    registry = server.registry
    access = apb_grpc.AccessServiceStub(server.channel)
    hooks = dpb_grpc.DeploymentServiceStub(server.channel)
    for webhook in ("one", "two"):  # first, so that the deployments below are delivered to them
        await hooks.CreateWebhook(
            dpb.CreateWebhookRequest(
                webhook_id=webhook, webhook=dpb.Webhook(url="http://127.0.0.1:9/", secret="s")
            )
        )
    await register_signature(registry, "sig", "1.0.0")
    await register_signature(registry, "sig", "1.1.0")
    await register_signature(registry, "other", "1.0.0")
    for program in ("alpha", "beta"):
        for version in ("1.0.0", "1.1.0"):  # each auto-deploys to development
            spec = pb.ProgramVersionSpec(
                program=program, version=version, signature="signatures/sig/versions/1.0.0"
            )
            await registry.RegisterProgram(pb.RegisterProgramRequest(spec=spec, artifact=dspy_state(version)))
    await access.CreatePrincipal(
        apb.CreatePrincipalRequest(
            principal_id="carol", principal=apb.Principal(type=apb.PRINCIPAL_TYPE_USER)
        )
    )
    for resource in ("alpha", "beta"):
        await access.GrantPermission(
            apb.GrantPermissionRequest(
                principal="principals/carol", action=apb.ACTION_READ, resource=resource
            )
        )
    for _ in range(2):
        await access.CreateToken(apb.CreateTokenRequest(parent="principals/carol"))


Lister = Callable[..., Awaitable[Any]]


def _lists(server: Running) -> list[tuple[str, Lister, Any]]:
    registry = pb_grpc.RegistryServiceStub(server.channel)
    deployments = dpb_grpc.DeploymentServiceStub(server.channel)
    access = apb_grpc.AccessServiceStub(server.channel)
    return [
        ("ListSignatures", registry.ListSignatures, pb.ListSignaturesRequest()),
        (
            "ListSignatureVersions",
            registry.ListSignatureVersions,
            pb.ListSignatureVersionsRequest(parent="signatures/sig"),
        ),
        ("ListPrograms", registry.ListPrograms, pb.ListProgramsRequest()),
        (
            "ListProgramVersions",
            registry.ListProgramVersions,
            pb.ListProgramVersionsRequest(parent="programs/alpha"),
        ),
        ("ListEnvironments", deployments.ListEnvironments, dpb.ListEnvironmentsRequest()),
        ("ListDeployments", deployments.ListDeployments, dpb.ListDeploymentsRequest()),
        ("ListWebhooks", deployments.ListWebhooks, dpb.ListWebhooksRequest()),
        (
            "ListWebhookDeliveries",
            deployments.ListWebhookDeliveries,
            dpb.ListWebhookDeliveriesRequest(parent="webhooks/one"),
        ),
        ("ListPrincipals", access.ListPrincipals, apb.ListPrincipalsRequest()),
        ("ListTokens", access.ListTokens, apb.ListTokensRequest(parent="principals/carol")),
        ("ListPermissions", access.ListPermissions, apb.ListPermissionsRequest(principal="principals/carol")),
        ("ListAuditEvents", access.ListAuditEvents, apb.ListAuditEventsRequest()),
    ]


async def test_a_rewritten_cursor_gets_a_page_or_invalid_argument_from_every_list(server: Running) -> None:
    await _two_of_everything(server)
    refused: dict[str, list[str]] = {}
    for name, method, request in _lists(server):
        request.page_size = 1
        first: Any = None

        async def has_a_second_page(method: Lister = method, request: Any = request) -> bool:
            nonlocal first
            first = await method(request)
            return bool(first.next_page_token)

        await until(has_a_second_page, f"{name} has a second page")  # deliveries come as the notifier runs
        for cursor in CURSORS:
            request.page_token = _rewritten(first.next_page_token, cursor)
            try:
                await method(request)
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.INVALID_ARGUMENT or violations(err) != {"page_token"}:
                    refused.setdefault(name, []).append(f"{cursor[:30]!r}: {err.code().name} {err.details()}")
    assert not refused, "\n".join(f"{name}: {answers}" for name, answers in refused.items())

"""DeploymentService's webhook RPCs: parse, call the webhook use cases, map back. No rules here.

A mixin of DeploymentServicer (server/api/deployment.py), which sets
`self.webhooks`. Every one needs admin on `*` (permissions.py); a secret is
taken in and never given back.
"""

from __future__ import annotations

import re

from dspy_registry.v1 import deployment_pb2 as pb

from ..calls import serving
from ..domain import webhooks
from ..domain.names import check_name, parse_parent
from ..domain.webhooks import DeliveryState, SigningSecret, Webhook, WebhookDraft
from ..errors import InvalidArgument, quote
from ..usecases.webhooks import Webhooks
from .context import Context
from .convert.deployment import delivery_proto, secret_proto, webhook_proto
from .mutations import answer, idempotency


def _created(w: Webhook) -> pb.CreateWebhookResponse:
    return pb.CreateWebhookResponse(webhook=webhook_proto(w))


def _deleted(w: Webhook) -> pb.DeleteWebhookResponse:
    return pb.DeleteWebhookResponse(webhook=webhook_proto(w))


SECRET_ID = re.compile(r"[a-z0-9]{1,64}")


def _secret_added(result: tuple[Webhook, SigningSecret]) -> pb.AddWebhookSecretResponse:
    webhook, secret = result
    return pb.AddWebhookSecretResponse(webhook=webhook_proto(webhook), secret=secret_proto(webhook, secret))


def _secret_retired(w: Webhook) -> pb.RetireWebhookSecretResponse:
    return pb.RetireWebhookSecretResponse(webhook=webhook_proto(w))


def _secret_name(value: str) -> tuple[str, str]:
    """`webhooks/{webhook}/secrets/{secret}` -> (webhook, secret)."""
    parts = value.split("/")
    if (
        len(parts) != 4
        or (parts[0], parts[2]) != ("webhooks", "secrets")
        or not SECRET_ID.fullmatch(parts[3])
    ):
        raise InvalidArgument.one(
            "name", f"{quote(value)} must look like webhooks/{{webhook}}/secrets/{{secret}}"
        )
    return check_name(parts[1], "name"), parts[3]


def _states(values: list[int]) -> tuple[DeliveryState, ...]:
    out = []
    for value in values:
        if value == pb.DELIVERY_STATE_UNSPECIFIED:
            continue  # in filters, ignored
        try:
            out.append(DeliveryState(value))
        except ValueError:
            raise InvalidArgument.one("states", f"unknown delivery state {value}") from None
    return tuple(sorted(set(out)))


class WebhookMethods:
    webhooks: Webhooks

    async def CreateWebhook(
        self, request: pb.CreateWebhookRequest, context: Context
    ) -> pb.CreateWebhookResponse:
        w = request.webhook
        draft = WebhookDraft(
            id=request.webhook_id,
            url=w.url,
            event_kinds=tuple(w.event_kinds),
            selectors=tuple(webhooks.selector(s.program, s.environment) for s in w.selectors),
            secret=w.secret,
            description=w.description,
        )
        result = await self.webhooks.create(serving(), draft, idempotency(request, "CreateWebhook", _created))
        return answer(result, pb.CreateWebhookResponse, _created)

    async def ListWebhooks(
        self, request: pb.ListWebhooksRequest, context: Context
    ) -> pb.ListWebhooksResponse:
        page = await self.webhooks.list_webhooks(request.page_size, request.page_token)
        return pb.ListWebhooksResponse(
            webhooks=[webhook_proto(w) for w in page.items],
            next_page_token=page.next_page_token,
            total_size=page.total_size,
        )

    async def DeleteWebhook(
        self, request: pb.DeleteWebhookRequest, context: Context
    ) -> pb.DeleteWebhookResponse:
        webhook_id = parse_parent(request.name, "webhooks", "name")
        result = await self.webhooks.delete(
            serving(), webhook_id, idempotency(request, "DeleteWebhook", _deleted)
        )
        return answer(result, pb.DeleteWebhookResponse, _deleted)

    async def ListWebhookDeliveries(
        self, request: pb.ListWebhookDeliveriesRequest, context: Context
    ) -> pb.ListWebhookDeliveriesResponse:
        webhook_id = parse_parent(request.parent, "webhooks", "parent")
        states = _states(list(request.states))
        page = await self.webhooks.deliveries(webhook_id, states, request.page_size, request.page_token)
        return pb.ListWebhookDeliveriesResponse(
            deliveries=[delivery_proto(d) for d in page.items],
            next_page_token=page.next_page_token,
            total_size=page.total_size,
        )

    async def AddWebhookSecret(
        self, request: pb.AddWebhookSecretRequest, context: Context
    ) -> pb.AddWebhookSecretResponse:
        webhook_id = parse_parent(request.parent, "webhooks", "parent")
        result = await self.webhooks.add_secret(
            serving(), webhook_id, request.secret, idempotency(request, "AddWebhookSecret", _secret_added)
        )
        return answer(result, pb.AddWebhookSecretResponse, _secret_added)

    async def RetireWebhookSecret(
        self, request: pb.RetireWebhookSecretRequest, context: Context
    ) -> pb.RetireWebhookSecretResponse:
        webhook_id, secret_id = _secret_name(request.name)
        result = await self.webhooks.retire_secret(
            serving(), webhook_id, secret_id, idempotency(request, "RetireWebhookSecret", _secret_retired)
        )
        return answer(result, pb.RetireWebhookSecretResponse, _secret_retired)

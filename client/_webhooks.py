"""DeploymentService's webhook RPCs, as `Registry` methods."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence

from dspy_registry.v1 import deployment_pb2 as dpb

from . import _convert as convert
from ._base import ClientBase


class WebhookMethods(ClientBase):
    async def create_webhook(
        self,
        webhook_id: str,
        *,
        url: str,
        secret: str,
        event_kinds: Iterable[str | int] = (),
        selectors: Sequence[tuple[str, str]] = (),
        description: str = "",
    ) -> dpb.Webhook:
        """Registers a webhook for deployment events (CreateWebhook, admin).

        Each delivery is a POST of the event in the proto3 JSON mapping, signed with `secret`
        (HMAC-SHA256), tried again until the receiver answers 2xx or the attempts run out.

        Args:
            webhook_id: The webhook's id (or `webhooks/<id>`).
            url: Where events are POSTed.
            secret: The key of each delivery's signature.
            event_kinds: Only these event kinds ("succeeded", "rolled_back" ...); empty for all.
            selectors: Only events of these (program, environment) pairs; empty for all.
            description: Free text.

        Returns:
            The webhook, its secret left out.

        Raises:
            InvalidArgumentError: A bad URL, an empty secret, or an address the server does not allow.
            AlreadyExistsError: The id is taken.
        """
        response = await self._call(
            self._deployment_service.CreateWebhook,
            dpb.CreateWebhookRequest(
                webhook_id=convert.short_name("webhooks", webhook_id),
                webhook=dpb.Webhook(
                    url=url,
                    secret=secret,
                    description=description,
                    event_kinds=convert.enums(dpb.DeploymentEventKind, "DEPLOYMENT_EVENT_KIND_", event_kinds),  # type: ignore[arg-type]
                    selectors=convert.selectors("", "", selectors),
                ),
                request_id=convert.request_id(),
            ),
            dpb.CreateWebhookResponse,
        )
        return response.webhook

    async def list_webhooks(self, *, page_size: int = 0) -> AsyncIterator[dpb.Webhook]:
        """Webhooks by name, secrets never included (ListWebhooks).

        Args:
            page_size: Webhooks per page (0: the server's default).

        Returns:
            An async iterator of the webhooks.

        Raises:
            InvalidArgumentError: A negative `page_size`.
        """
        request = dpb.ListWebhooksRequest(page_size=page_size)
        async for item in self._pages(
            self._deployment_service.ListWebhooks, request, dpb.ListWebhooksResponse, "webhooks"
        ):
            yield item

    async def delete_webhook(self, webhook_id: str) -> dpb.Webhook:
        """Deletes a webhook and cancels its pending deliveries (DeleteWebhook, admin).

        Args:
            webhook_id: The webhook's id (or `webhooks/<id>`).

        Returns:
            The webhook deleted.

        Raises:
            NotFoundError: No such webhook.
        """
        response = await self._call(
            self._deployment_service.DeleteWebhook,
            dpb.DeleteWebhookRequest(
                name=convert.full_name("webhooks", webhook_id), request_id=convert.request_id()
            ),
            dpb.DeleteWebhookResponse,
        )
        return response.webhook

    async def add_webhook_secret(self, webhook_id: str, secret: str) -> dpb.AddWebhookSecretResponse:
        """Adds a signing secret (AddWebhookSecret, admin): each POST is then signed with every active
        secret, so that the receiver can move to this one before the old one is retired.

        Args:
            webhook_id: The webhook's id (or `webhooks/<id>`).
            secret: The new secret (`whsec_<base64>`, Standard Webhooks' form, or any text).

        Returns:
            `.webhook` with its secrets' names, and `.secret`, the one added (its name retires it).

        Raises:
            InvalidArgumentError: An empty or too long secret.
            NotFoundError: No such webhook.
            ResourceExhaustedError: The webhook has 10 active secrets.
        """
        response: dpb.AddWebhookSecretResponse = await self._call(
            self._deployment_service.AddWebhookSecret,
            dpb.AddWebhookSecretRequest(
                parent=convert.full_name("webhooks", webhook_id),
                secret=secret,
                request_id=convert.request_id(),
            ),
            dpb.AddWebhookSecretResponse,
        )
        return response

    async def retire_webhook_secret(self, name: str) -> dpb.Webhook:
        """Retires a signing secret (RetireWebhookSecret, admin): POSTs are no longer signed with it.

        Args:
            name: The secret's name, `webhooks/<id>/secrets/<secret>`, as `add_webhook_secret` or
                `list_webhooks` gives it.

        Returns:
            The webhook, with the secrets it still signs with.

        Raises:
            NotFoundError: No such webhook or secret.
            FailedPreconditionError: It is the webhook's last secret.
        """
        response = await self._call(
            self._deployment_service.RetireWebhookSecret,
            dpb.RetireWebhookSecretRequest(name=name, request_id=convert.request_id()),
            dpb.RetireWebhookSecretResponse,
        )
        return response.webhook

    async def list_webhook_deliveries(
        self, webhook_id: str, *, states: Iterable[str | int] = (), page_size: int = 0
    ) -> AsyncIterator[dpb.WebhookDelivery]:
        """A webhook's deliveries, newest first (ListWebhookDeliveries).

        Args:
            webhook_id: The webhook's id (or `webhooks/<id>`).
            states: Only deliveries in these states ("pending", "succeeded", "failed").
            page_size: Deliveries per page (0: the server's default).

        Returns:
            An async iterator of the deliveries, each with its attempt count and last answer.

        Raises:
            NotFoundError: No such webhook.
            InvalidArgumentError: A negative `page_size`.
        """
        request = dpb.ListWebhookDeliveriesRequest(
            parent=convert.full_name("webhooks", webhook_id),
            states=convert.enums(dpb.DeliveryState, "DELIVERY_STATE_", states),  # type: ignore[arg-type]
            page_size=page_size,
        )
        async for item in self._pages(
            self._deployment_service.ListWebhookDeliveries,
            request,
            dpb.ListWebhookDeliveriesResponse,
            "deliveries",
        ):
            yield item

"""Webhook use cases: create (the URL checked, its host resolved), list, delete, list deliveries,
and the notifier's side of the outbox: what is due, claiming it, recording how an attempt went.

Deliveries are queued by the store itself, in the transaction of the event
they carry (`Records.append`); nothing here has to remember to queue one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from ..calls import Call
from ..domain import webhooks
from ..domain.clock import SYSTEM_CLOCK, Clock
from ..domain.events import EventKind, WebhookChanged, new_event
from ..domain.webhooks import (
    Delivery,
    DeliveryState,
    Due,
    IPAddress,
    Network,
    Outcome,
    SigningSecret,
    Webhook,
    WebhookDraft,
)
from ..errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Violations,
)
from ..store.base import Store
from ..store.records import Records
from .common import Idempotency, PageOf, Replay, page_of, record, replayed

RESOLVE_TIMEOUT_SECONDS = 5.0
# (host, port) -> the addresses it resolves to; OSError when it does not resolve.
Resolve = Callable[[str, int], Awaitable[list[IPAddress]]]


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """The addresses a TCP connection to host:port could go to (an IP literal is itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):  # TimeoutError is an OSError: "cannot resolve"
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0])) for info in infos]


class Webhooks:
    def __init__(
        self,
        store: Store,
        allow: Sequence[Network] = (),
        resolve: Resolve = resolve_host,
        clock: Clock = SYSTEM_CLOCK,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.allow = tuple(allow)
        self.resolve = resolve
        self.clock = clock
        self.rand = rand

    async def check_host(self, host: str, port: int, path: str) -> list[IPAddress]:
        """The host's addresses, once each is allowed; InvalidArgument on `path` otherwise."""
        try:
            addresses = await self.resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise InvalidArgument.one(path, f"cannot resolve {host}: {exc or 'timed out'}") from None
        webhooks.check_addresses(host, addresses, self.allow, path)
        return addresses

    # -- the API's side ------------------------------------------------------------------------

    async def create(
        self, call: Call, draft: WebhookDraft, idem: Idempotency[Webhook] | None
    ) -> Webhook | Replay:
        v = Violations()
        endpoint, kinds = webhooks.validate(draft, v)
        if endpoint is not None:
            try:
                await self.check_host(endpoint.host, endpoint.port, "webhook.url")
            except InvalidArgument as exc:
                v.items += exc.violations
        v.raise_if_any()
        async with self.store.write(call) as tx:
            if (replay := await replayed(tx, idem)) is not None:
                return replay
            if await tx.get_webhook(draft.id) is not None:
                raise AlreadyExists(f"webhooks/{draft.id}")
            if await tx.count_webhooks() >= webhooks.MAX_WEBHOOKS:
                raise ResourceExhausted(
                    "webhooks", f"at most {webhooks.MAX_WEBHOOKS} webhooks; delete one first"
                )
            webhook = Webhook(
                id=draft.id,
                url=draft.url,
                event_kinds=kinds,
                selectors=draft.selectors,
                secrets=(
                    SigningSecret(
                        id=webhooks.new_secret_id(), value=draft.secret, create_time=self.clock.now()
                    ),
                ),
                description=draft.description,
                creator=call.actor,
                create_time=self.clock.now(),
                revision=tx.next_revision,
            )
            await tx.insert_webhook(webhook)
            await tx.append(
                [
                    new_event(
                        EventKind.WEBHOOK_CREATED, webhook.resource_name, WebhookChanged(webhook=webhook.id)
                    )
                ]
            )
            return await record(tx, idem, webhook)

    async def list_webhooks(self, page_size: int, page_token: str) -> PageOf[Webhook]:
        return await page_of(
            self.store, lambda tx, page: tx.list_webhooks(page), page_size, page_token, "webhooks"
        )

    async def get(self, webhook_id: str) -> Webhook:
        async with self.store.read() as tx:
            found = await tx.get_webhook(webhook_id)
        if found is None:
            raise NotFound(f"webhooks/{webhook_id}")
        return found

    async def delete(
        self, call: Call, webhook_id: str, idem: Idempotency[Webhook] | None
    ) -> Webhook | Replay:
        async with self.store.write(call) as tx:
            if (replay := await replayed(tx, idem)) is not None:
                return replay
            webhook = await tx.get_webhook(webhook_id)
            if webhook is None:
                raise NotFound(f"webhooks/{webhook_id}")
            await tx.delete_webhook(webhook_id)
            await tx.append(
                [
                    new_event(
                        EventKind.WEBHOOK_DELETED, webhook.resource_name, WebhookChanged(webhook=webhook_id)
                    )
                ]
            )
            return await record(tx, idem, replace(webhook, revision=tx.next_revision))

    async def add_secret(
        self,
        call: Call,
        webhook_id: str,
        secret: str,
        idem: Idempotency[tuple[Webhook, SigningSecret]] | None,
    ) -> tuple[Webhook, SigningSecret] | Replay:
        """A secret more to sign with: each POST carries a signature by each active secret from now on."""
        webhooks.check_secret(secret, "secret")
        async with self.store.write(call) as tx:
            if (replay := await replayed(tx, idem)) is not None:
                return replay
            webhook = await self._found(tx, webhook_id)
            if len(webhook.secrets) >= webhooks.MAX_SECRETS:
                raise ResourceExhausted(
                    "webhook_secrets", f"at most {webhooks.MAX_SECRETS} active secrets; retire one first"
                )
            added = SigningSecret(id=webhooks.new_secret_id(), value=secret, create_time=self.clock.now())
            await tx.insert_webhook_secret(webhook_id, added)
            changed = await self._secrets_changed(tx, webhook)
            return await record(tx, idem, (replace(changed, secrets=(*webhook.secrets, added)), added))

    async def retire_secret(
        self, call: Call, webhook_id: str, secret_id: str, idem: Idempotency[Webhook] | None
    ) -> Webhook | Replay:
        """A secret no longer signs: its receivers must hold another of the webhook's by now."""
        async with self.store.write(call) as tx:
            if (replay := await replayed(tx, idem)) is not None:
                return replay
            webhook = await self._found(tx, webhook_id)
            kept = tuple(s for s in webhook.secrets if s.id != secret_id)
            if len(kept) == len(webhook.secrets):
                raise NotFound(f"webhooks/{webhook_id}/secrets/{secret_id}")
            if not kept:
                raise FailedPrecondition(
                    f"webhooks/{webhook_id}/secrets/{secret_id} is the webhook's last secret: add another "
                    "first (every POST is signed), or delete the webhook"
                )
            await tx.delete_webhook_secret(webhook_id, secret_id)
            changed = await self._secrets_changed(tx, webhook)
            return await record(tx, idem, replace(changed, secrets=kept))

    async def _found(self, tx: Records, webhook_id: str) -> Webhook:
        webhook: Webhook | None = await tx.get_webhook(webhook_id)
        if webhook is None:
            raise NotFound(f"webhooks/{webhook_id}")
        return webhook

    async def _secrets_changed(self, tx: Records, webhook: Webhook) -> Webhook:
        await tx.touch_webhook(webhook.id, tx.next_revision)
        await tx.append(
            [
                new_event(
                    EventKind.WEBHOOK_SECRETS_CHANGED,
                    webhook.resource_name,
                    WebhookChanged(webhook=webhook.id),
                )
            ]
        )
        return replace(webhook, revision=tx.next_revision)

    async def deliveries(
        self, webhook_id: str, states: Sequence[DeliveryState], page_size: int, page_token: str
    ) -> PageOf[Delivery]:
        await self.get(webhook_id)  # NOT_FOUND names it
        return await page_of(
            self.store,
            lambda tx, page: tx.list_deliveries(webhook_id, states, page),
            page_size,
            page_token,
            "deliveries",
            webhook_id,
            sorted(int(s) for s in states),
        )

    # -- the notifier's side -------------------------------------------------------------------

    async def any_webhook(self) -> bool:
        async with self.store.read() as tx:
            return await tx.count_webhooks() > 0

    async def next_due(self) -> datetime | None:
        async with self.store.read() as tx:
            return await tx.next_delivery_time()

    async def claim(self, limit: int) -> list[Due]:
        """Due deliveries, each leased to the caller for one attempt."""
        now = self.clock.now()
        async with self.store.write() as tx:
            return await tx.claim_deliveries(now, now + timedelta(seconds=webhooks.LEASE_SECONDS), limit)

    async def settle(self, due: Due, outcome: Outcome, attempted: datetime) -> DeliveryState:
        """Record how an attempt went: SUCCEEDED, PENDING again with its next time, or FAILED."""
        failed = due.attempts + 1
        next_attempt = None
        if outcome.succeeded:
            state = DeliveryState.SUCCEEDED
        else:
            next_attempt = webhooks.next_attempt(failed, due.create_time, self.clock.now(), self.rand())
            state = DeliveryState.PENDING if next_attempt is not None else DeliveryState.FAILED
        async with self.store.write() as tx:
            assert due.lease_until is not None  # claimed
            await tx.settle_delivery(
                due.id, state, outcome.status, outcome.error[:1024], attempted, next_attempt, due.lease_until
            )
        return state

"""The notifier: POSTs the webhook outbox, at least once per delivery, across restarts.

Deliveries are rows the store wrote in their event's own transaction
(store/webhook_records.py). This loop, beside the controller, asks the
store when the next one is due, claims due ones in a write transaction
(which leases each for one attempt: a replica or a restart that finds the
lease expired tries again), POSTs each with its delivery id, a timestamp and
an HMAC signature, and records the outcome: SUCCEEDED on a 2xx, else the
next attempt's time from the backoff schedule, or FAILED past the age limit
(domain/webhooks.py). It wakes when a deployment event commits (unless it knows
that no webhook exists, which a webhook created or deleted makes unknown again)
and when the next delivery falls due; nothing is kept in memory that a SIGKILL
could lose.

The address rule is applied again at each attempt, at the moment of
connecting: the HTTP client resolves host names through a resolver that
refuses any address outside the policy, and connects only to the addresses
it checked, so a DNS answer that changes between check and connect cannot
reach a private address. Redirects are not followed (the Location could
point anywhere); cookies are not kept; proxies from the environment are not
used.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from datetime import datetime

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from .background import Loop
from .domain import webhooks
from .domain.events import EventKind, is_deployment_kind
from .domain.model import Event
from .domain.webhooks import DeliveryState, Due, Network, Outcome
from .errors import InvalidArgument
from .usecases.webhooks import Webhooks

log = logging.getLogger("dspy_registry.webhooks")

# The events after which whether any webhook exists must be looked at again.
_WEBHOOK_SET_CHANGES = frozenset({EventKind.WEBHOOK_CREATED.value, EventKind.WEBHOOK_DELETED.value})
IDLE_SECONDS = 5.0  # how long to sleep when nothing is due: another replica's expired lease, at most
MIN_SECONDS = 0.05
CONCURRENCY = 16  # attempts in flight at once: one slow receiver does not hold up the others
STOP_GRACE_SECONDS = 2.0  # on stop, attempts in flight get this long to finish and be recorded


class RefusedAddress(OSError):
    """A host resolved to an address the webhook policy refuses."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EACCES, message)


class _CheckedResolver(AbstractResolver):
    """Resolves as usual, then refuses the whole answer if any address is outside the policy."""

    def __init__(self, allow: Sequence[Network]) -> None:
        self.allow = tuple(allow)
        self.inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        for result in results:
            why = webhooks.refusal(ipaddress.ip_address(result["host"]), self.allow)
            if why is not None:
                raise RefusedAddress(f"{host} resolves to {why}")
        return results

    async def close(self) -> None:
        await self.inner.close()


class Notifier:
    def __init__(
        self,
        webhooks_: Webhooks,
        *,
        concurrency: int = CONCURRENCY,
        timeout: float = webhooks.ATTEMPT_TIMEOUT_SECONDS,
    ) -> None:
        self.webhooks = webhooks_
        self.concurrency = concurrency
        self.timeout = timeout
        self._loop = Loop("webhook", self._pass, idle=IDLE_SECONDS, floor=MIN_SECONDS, log=log)
        self._attempts: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        # Told of each attempt recorded, by the state it left the delivery in (telemetry sets it).
        self.on_delivery: Callable[[DeliveryState], None] | None = None
        # Whether any webhook exists, as the last look found it (None: not looked, or one was created
        # or deleted since). A deployment event queues deliveries only for the webhooks that exist in
        # its transaction: with none, its commit has nothing to wake the loop for (every
        # auto-deploying registration's commit woke it for a read of the outbox through the pool).
        self._webhooks_exist: bool | None = None
        self._webhook_changes = 0  # counts the changes that make `_webhooks_exist` unknown

    def poke(self) -> None:
        self._loop.poke()

    def on_commit(self, events: Sequence[Event]) -> None:
        """Subscribed to the store: a deployment event may have queued deliveries (unless no webhook
        exists); a webhook created or deleted makes that unknown again."""
        wake = False
        for e in events:
            if e.kind in _WEBHOOK_SET_CHANGES:
                self.on_reset()
                return
            if not wake and self._webhooks_exist is not False and is_deployment_kind(e.kind):
                wake = True
        if wake:
            self.poke()

    def on_reset(self) -> None:
        """Commits may have been missed (or a webhook came or went): whether one exists is unknown."""
        self._webhook_changes += 1
        self._webhooks_exist = None
        self.poke()

    # -- the loop --------------------------------------------------------------------------------

    async def run_once(self) -> datetime | None:
        """Start an attempt for each due delivery there is room for; when the next one is due, if known."""
        free = self.concurrency - len(self._attempts)
        if free <= 0:
            return None  # a finishing attempt pokes
        if self._webhooks_exist is None:
            changes = self._webhook_changes
            exist = await self.webhooks.any_webhook()
            if changes == self._webhook_changes:  # else one came or went as we read: look again later
                self._webhooks_exist = exist
        next_due = await self.webhooks.next_due()
        if next_due is not None and next_due <= self.webhooks.clock.now():
            for due in await self.webhooks.claim(free):
                task = asyncio.get_running_loop().create_task(
                    self._attempt(due), name=f"webhook-{due.id}", context=contextvars.Context()
                )
                self._attempts.add(task)
                task.add_done_callback(self._finished)
            if len(self._attempts) >= self.concurrency:
                return None
            next_due = await self.webhooks.next_due()
        return next_due

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._attempts.discard(task)
        self.poke()  # room for another attempt

    async def _pass(self) -> float | None:
        next_due = await self.run_once()
        return None if next_due is None else (next_due - self.webhooks.clock.now()).total_seconds()

    # -- one attempt -----------------------------------------------------------------------------

    async def _attempt(self, due: Due) -> None:
        attempted = self.webhooks.clock.now()
        try:
            outcome = await self.post(due)
        except Exception as exc:  # unforeseen: recorded as a failed attempt, so that it is retried
            log.warning("webhook delivery %s failed unexpectedly", due.id, exc_info=True)
            outcome = Outcome(0, f"{type(exc).__name__}: {exc}")
        try:
            state = await self.webhooks.settle(due, outcome, attempted)
        except Exception:  # unrecorded: the lease runs out and the delivery is tried again
            log.warning("could not record webhook delivery %s", due.id, exc_info=True)
            return
        if self.on_delivery is not None:
            self.on_delivery(state)
        extra = {"webhook": due.webhook, "delivery": due.id, "status": outcome.status}
        if state == DeliveryState.FAILED:
            log.warning("gave up on webhook delivery: %s", outcome.error, extra=extra)
        elif state == DeliveryState.PENDING:
            log.info("webhook delivery failed; will retry: %s", outcome.error, extra=extra)

    async def post(self, due: Due) -> Outcome:
        """One POST of `due`: the HTTP status, or 0 and why no answer came."""
        session = self._session
        if session is None:
            return Outcome(0, "the notifier is stopped")
        try:
            endpoint = webhooks.check_url(due.url, "url")
            try:
                literal = ipaddress.ip_address(endpoint.host)
            except ValueError:
                literal = None  # a name: the resolver checks what it resolves to
            if literal is not None:  # the client connects to a literal without resolving it
                why = webhooks.refusal(literal, self.webhooks.allow)
                if why is not None:
                    return Outcome(0, f"refused: {why}")
        except InvalidArgument as exc:  # validated at CreateWebhook: only a rule change gets here
            return Outcome(0, f"bad URL: {exc.message}")
        body = due.body.encode()
        headers = webhooks.headers(due, int(self.webhooks.clock.now().timestamp()), body)
        try:
            async with session.post(
                due.url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                status = response.status
                error = "" if 200 <= status < 300 else f"HTTP {status} {response.reason or ''}".strip()
                return Outcome(status, error)
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, RefusedAddress):
                return Outcome(0, f"refused: {exc.os_error.strerror}")
            return Outcome(0, str(exc))
        except TimeoutError:
            return Outcome(0, f"no answer within {self.timeout:g} s")
        except aiohttp.ClientError as exc:
            return Outcome(0, str(exc) or type(exc).__name__)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=_CheckedResolver(self.webhooks.allow), use_dns_cache=False, limit=self.concurrency
        )
        self._session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
        )
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        if self._attempts:
            _, late = await asyncio.wait(set(self._attempts), timeout=STOP_GRACE_SECONDS)
            for task in late:  # their leases run out; a later start tries them again
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

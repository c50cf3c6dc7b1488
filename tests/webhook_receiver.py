"""A real HTTP receiver of webhooks on 127.0.0.1, for the tests: it records each POST and checks its signatures:
the header of earlier releases with the server's own function, and Standard Webhooks' with the
`standardwebhooks` package, as a receiver written in any language would."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import standardwebhooks
from aiohttp import web

from dspy_registry.server.domain import webhooks


@dataclass(frozen=True, kw_only=True)
class Received:
    delivery: str
    event: str  # the X-DSPy-Registry-Event header
    timestamp: str
    signature: str
    body: bytes
    valid: bool  # the signature verifies with the receiver's secret
    standard_valid: bool  # standardwebhooks verifies webhook-signature with the receiver's standard_secret
    standard_signatures: int  # how many `v1,…` webhook-signature carries
    arrived: float  # time.monotonic()
    status: int  # what the receiver answered
    headers: dict[str, str]  # all of them, as received


@dataclass
class Receiver:
    """Answers each POST with the next of `statuses` (200 once they run out)."""

    secret: str
    statuses: list[int] = field(default_factory=list)
    # The secret a Standard Webhooks receiver holds (else `secret`); a test rotating it changes it.
    standard_secret: str | None = None
    got: list[Received] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    async def start(self, port: int = 0) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port or self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.statuses.pop(0) if self.statuses else 200
        h = request.headers
        timestamp = h.get(webhooks.TIMESTAMP_HEADER, "")
        signature = h.get(webhooks.SIGNATURE_HEADER, "")
        self.got.append(
            Received(
                delivery=h.get(webhooks.DELIVERY_HEADER, ""),
                event=h.get(webhooks.EVENT_HEADER, ""),
                timestamp=timestamp,
                signature=signature,
                body=body,
                valid=webhooks.verify(self.secret, timestamp, body, signature),
                standard_valid=_standard_verifies(self.standard_secret or self.secret, body, dict(h)),
                standard_signatures=len(h.get("webhook-signature", "").split()),
                arrived=time.monotonic(),
                status=status,
                headers=dict(h),
            )
        )
        return web.Response(status=status)

    def delivered(self) -> dict[str, Received]:
        """Each delivery id answered 2xx, with its (first) successful request."""
        out: dict[str, Received] = {}
        for r in self.got:
            if 200 <= r.status < 300:
                out.setdefault(r.delivery, r)
        return out


def _standard_verifies(secret: str, body: bytes, headers: dict[str, str]) -> bool:
    """As the package's documentation shows: a `whsec_` secret as given, any other one as its bytes."""
    key: str | bytes = secret if secret.startswith("whsec_") else secret.encode()
    try:
        standardwebhooks.Webhook(key).verify(body, headers)
    except standardwebhooks.WebhookVerificationError:
        return False
    return True


class ThreadedReceiver:
    """A Receiver on an event loop of its own thread, for tests whose loop blocks (synchronous gRPC)."""

    def __init__(self, secret: str) -> None:
        self.receiver = Receiver(secret)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="webhook-receiver", daemon=True)
        self._thread.start()

    def start(self) -> ThreadedReceiver:
        """Listen (again: on the same port after a stop)."""
        asyncio.run_coroutine_threadsafe(self.receiver.start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        """Stop listening: connections are refused until the next start."""
        asyncio.run_coroutine_threadsafe(self.receiver.stop(), self._loop).result(10)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

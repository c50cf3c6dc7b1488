"""Webhooks: which events go where, which addresses may be called, how a POST is signed and retried.

No I/O here: the use cases resolve host names and pass the addresses in; the
notifier makes the POSTs. The rules:

- A URL is http:// or https:// with a host and no credentials.
- Every address its host resolves to must be public: private, loopback,
  link-local, shared (100.64/10), unspecified, multicast and reserved
  addresses are refused (a webhook is a request the server makes on an
  admin's behalf; it must not reach into the server's own network), unless
  the address is inside a network of the allow-list the server was started
  with (`--webhook-allow`). Checked at CreateWebhook and at every attempt,
  since DNS answers change.
- A webhook receives the deployment events whose kind it lists (none
  listed: all) of targets matching one of its selectors (none: all).
- Each POST's body is the DeploymentEvent in the proto3 JSON mapping; it
  carries the delivery id (the same on every retry, so receivers can drop
  duplicates), a timestamp and signatures of both, signed too so that a
  captured request cannot be replayed later with a fresh timestamp:
  - Standard Webhooks (standardwebhooks.com), which receivers verify with a
    library in their language: `webhook-id`, `webhook-timestamp` and
    `webhook-signature`, one `v1,<base64>` per active secret, each the
    HMAC-SHA256 of `<id>.<timestamp>.<body>`. A `whsec_<base64>` secret's key
    is the bytes it encodes, as the libraries take it; any other secret's key
    is its UTF-8 bytes.
  - The header of earlier releases, kept for one release: `sha256=<hex>`, the
    HMAC-SHA256 of `<timestamp>.<body>` keyed with the oldest active secret
    as given (the one its receivers hold).
- A webhook has one to MAX_SECRETS active secrets: a secret rotates without
  downtime by adding the new one, switching the receiver to it (it verifies
  either), then retiring the old one.
- A 2xx answer completes a delivery. Anything else (another status, no
  answer within the timeout, a refused address) is retried after an
  exponentially growing delay, 1 s doubling up to 10 min, each +-20 %
  jitter, until 24 h after the event; then the delivery is FAILED.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from functools import partial
from urllib.parse import urlsplit

from ..errors import InvalidArgument, Violations, quote
from .access import ALL, check_glob, glob_matches, principal_name
from .deployments import Kind
from .events import DeploymentChanged
from .names import check_name, check_text

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DELIVERY_HEADER = "X-DSPy-Registry-Delivery"
TIMESTAMP_HEADER = "X-DSPy-Registry-Timestamp"
SIGNATURE_HEADER = "X-DSPy-Registry-Signature"
EVENT_HEADER = "X-DSPy-Registry-Event"
# Standard Webhooks' headers (lower case, as its specification writes them).
STANDARD_ID_HEADER = "webhook-id"
STANDARD_TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"
STANDARD_SECRET_PREFIX = "whsec_"

MAX_WEBHOOKS = 100  # each deployment event is queued once per matching webhook, in its transaction
MAX_URL_LENGTH = 2048
MAX_SECRET_LENGTH = 1024
MAX_SECRETS = 10  # active at once: each POST carries a signature per secret
MAX_SELECTORS = 100

RETRY_BASE_SECONDS = 1.0
RETRY_CAP_SECONDS = 600.0
RETRY_JITTER = 0.2  # each delay is scaled by a random factor in [0.8, 1.2)
MAX_AGE = timedelta(hours=24)  # no attempt is scheduled later than this after the event
ATTEMPT_TIMEOUT_SECONDS = 10.0
# A claimed delivery is due again after this, should its attempt never report (a crash):
# longer than any attempt takes, so that no two attempts of one delivery overlap.
LEASE_SECONDS = ATTEMPT_TIMEOUT_SECONDS + 10.0
DELIVERY_RETENTION = timedelta(days=7)  # completed deliveries are listed this long

_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


class DeliveryState(IntEnum):
    """The numbers match the proto enum DeliveryState."""

    PENDING = 1
    SUCCEEDED = 2
    FAILED = 3


@dataclass(frozen=True)
class Selector:
    """Targets of programs matching `program` (a name or glob) in `environment` ("" for all)."""

    program: str
    environment: str = ""

    def matches(self, program: str, environment: str) -> bool:
        return glob_matches(self.program, program) and self.environment in ("", environment)


@dataclass(frozen=True)
class Interest:
    """What a webhook wants: these kinds (empty: all) of targets any selector matches (none: all)."""

    kinds: frozenset[Kind] = frozenset()
    selectors: tuple[Selector, ...] = ()

    def matches(self, kind: Kind, program: str, environment: str) -> bool:
        if self.kinds and kind not in self.kinds:
            return False
        return not self.selectors or any(s.matches(program, environment) for s in self.selectors)


@dataclass(frozen=True, kw_only=True)
class WebhookDraft:
    """A CreateWebhook request, before validation."""

    id: str
    url: str
    event_kinds: tuple[int, ...]
    selectors: tuple[Selector, ...]
    secret: str
    description: str


@dataclass(frozen=True, kw_only=True)
class SigningSecret:
    """One of a webhook's active secrets: `webhooks/{webhook}/secrets/{id}`; its value is never shown."""

    id: str
    value: str = field(repr=False)
    create_time: datetime


@dataclass(frozen=True, kw_only=True)
class Webhook:
    id: str
    url: str
    event_kinds: tuple[Kind, ...]
    selectors: tuple[Selector, ...]
    secrets: tuple[SigningSecret, ...]  # active, oldest first; never empty
    description: str
    creator: str
    create_time: datetime
    revision: int

    @property
    def resource_name(self) -> str:
        return f"webhooks/{self.id}"

    @property
    def interest(self) -> Interest:
        return Interest(frozenset(self.event_kinds), self.selectors)


@dataclass(frozen=True, kw_only=True)
class Delivery:
    id: str
    webhook: str  # the webhook's id
    event_id: str  # {revision}-{index}, as WatchEvents numbers it
    event_kind: Kind
    state: DeliveryState
    attempts: int
    last_response_code: int
    last_error: str
    create_time: datetime
    last_attempt_time: datetime | None
    next_attempt_time: datetime | None
    complete_time: datetime | None

    @property
    def resource_name(self) -> str:
        return f"webhooks/{self.webhook}/deliveries/{self.id}"


@dataclass(frozen=True, kw_only=True)
class Due:
    """A delivery claimed for an attempt: all the notifier needs to make it."""

    id: str
    webhook: str
    url: str
    secrets: tuple[str, ...] = field(repr=False)  # the webhook's active secrets, oldest first
    event_kind: Kind
    body: str
    attempts: int  # made before this one
    create_time: datetime
    lease_until: datetime | None = None  # the claim this attempt holds; its outcome counts only under it


@dataclass(frozen=True)
class Outcome:
    """How one attempt went: the HTTP status (0 without an answer) and the error in words."""

    status: int
    error: str = ""

    @property
    def succeeded(self) -> bool:
        return 200 <= self.status < 300


# -- validation --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str  # lower case, without the brackets of an IPv6 literal
    port: int


def check_url(url: str, path: str) -> Endpoint:
    """The URL's scheme, host and port; InvalidArgument unless it is a usable http(s) URL."""
    if not url:
        raise InvalidArgument.one(path, "is required: the http:// or https:// URL to POST events to")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidArgument.one(path, f"must be at most {MAX_URL_LENGTH} characters")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise InvalidArgument.one(path, "must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidArgument.one(path, f"is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidArgument.one(path, "must start with https:// or http://")
    if not parts.hostname:
        raise InvalidArgument.one(path, "must name a host")
    if parts.username is not None or parts.password is not None:
        # They would be listed with the webhook; the secret is what authenticates the server.
        raise InvalidArgument.one(path, "must not carry credentials (user:password@)")
    if parts.fragment:
        raise InvalidArgument.one(path, "must not have a #fragment")
    return Endpoint(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80))


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """The allow-list: CIDRs (or single addresses), comma-separated or one per value."""
    out: list[Network] = []
    for value in values:
        for item in value.split(","):
            if not item.strip():
                continue
            try:
                out.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError as exc:
                raise ValueError(f"--webhook-allow: {quote(item.strip())} is not a network: {exc}") from None
    return tuple(out)


def refusal(address: IPAddress, allow: Sequence[Network] = ()) -> str | None:
    """Why a webhook may not be sent to `address`, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    if isinstance(address, ipaddress.IPv6Address) and address.sixtofour is not None:
        inner = refusal(address.sixtofour, allow)  # 2002:0a00:0001:: carries 10.0.0.1
        if inner is not None:
            return f"{address} embeds {inner}"
    if any(address.version == net.version and address in net for net in allow):
        return None
    for what, refused in (
        ("an unspecified address", address.is_unspecified),
        ("a loopback address", address.is_loopback),
        ("a link-local address", address.is_link_local),
        ("a multicast address", address.is_multicast),
        ("a private address", address.is_private),
        ("a reserved address", address.is_reserved),
        ("not a public address", not address.is_global),
    ):
        if refused:
            return (
                f"{address} is {what}; webhooks go to public addresses unless the server "
                "allows its network (--webhook-allow)"
            )
    return None


def check_addresses(host: str, addresses: Sequence[IPAddress], allow: Sequence[Network], path: str) -> None:
    """InvalidArgument unless `host` resolved to at least one address and all of them are allowed."""
    if not addresses:
        raise InvalidArgument.one(path, f"{host} resolves to no address")
    for address in addresses:
        why = refusal(address, allow)
        if why is not None:
            shown = "" if str(address) == host else f"{host} resolves to "
            raise InvalidArgument.one(path, shown + why)


def check_secret(secret: str, path: str) -> None:
    """InvalidArgument unless `secret` can sign: present, not too long, and a `whsec_` one valid base64."""
    if not secret:
        raise InvalidArgument.one(path, "is required: the key every POST is signed with (HMAC-SHA256)")
    if len(secret) > MAX_SECRET_LENGTH:
        raise InvalidArgument.one(path, f"must be at most {MAX_SECRET_LENGTH} characters")
    if secret.startswith(STANDARD_SECRET_PREFIX) and not signing_key(secret):
        raise InvalidArgument.one(
            path, f"after {STANDARD_SECRET_PREFIX} must come the key in base64 (Standard Webhooks' form)"
        )


def new_secret_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))


def event_kinds(values: Sequence[int], path: str, v: Violations) -> tuple[Kind, ...]:
    """Known kinds, deduplicated in the order given."""
    out: list[Kind] = []
    for i, value in enumerate(values):
        try:
            kind = Kind(value)
        except ValueError:
            v.add(f"{path}[{i}]", f"unknown event kind {value}")
            continue
        if kind not in out:
            out.append(kind)
    return tuple(out)


def validate(draft: WebhookDraft, v: Violations) -> tuple[Endpoint | None, tuple[Kind, ...]]:
    """Every violation of a CreateWebhook request that needs no lookup; the URL's endpoint if valid."""
    v.collect(lambda: check_name(draft.id, "webhook_id"))
    endpoint: Endpoint | None = None
    try:
        endpoint = check_url(draft.url, "webhook.url")
    except InvalidArgument as exc:
        v.items += exc.violations
    v.collect(lambda: check_secret(draft.secret, "webhook.secret"))
    v.collect(lambda: check_text(draft.description, "webhook.description", 1024))
    kinds = event_kinds(draft.event_kinds, "webhook.event_kinds", v)
    if len(draft.selectors) > MAX_SELECTORS:
        v.add("webhook.selectors", f"at most {MAX_SELECTORS} selectors")
    for i, s in enumerate(draft.selectors):
        at = f"webhook.selectors[{i}]"
        v.collect(partial(check_glob, s.program or ALL, f"{at}.program"))
        if s.environment:
            v.collect(partial(check_name, s.environment, f"{at}.environment"))
    return endpoint, kinds


def selector(program: str, environment: str) -> Selector:
    """A selector as stored: `programs/x` and `environments/y` as short names, no program as `*`."""
    return Selector(program.removeprefix("programs/") or ALL, environment.removeprefix("environments/"))


# -- events ------------------------------------------------------------------------------------


def _rfc3339(t: datetime) -> str:
    t = t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{t.microsecond:06d}Z"


def event_body(
    event_id: str, kind: Kind, revision: int, time: datetime, deployment: str, change: DeploymentChanged
) -> str:
    """The DeploymentEvent WatchEvents would send, in the proto3 JSON mapping (camelCase, enum names)."""
    body = {
        "id": event_id,
        "kind": f"DEPLOYMENT_EVENT_KIND_{kind.name}",
        "revision": str(revision),  # int64 is a string in proto3 JSON
        "time": _rfc3339(time),
        "deployment": deployment,
        "program": change.program,
        "environment": change.environment,
        "version": change.version,
        "state": f"DEPLOYMENT_STATE_{change.state}",
        "step": change.current_step,  # as WatchEvents says it
        "weightPercent": change.weight_percent,
        "actor": principal_name(change.actor),
        "reason": change.reason,
        "relatedDeployment": change.related,
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def new_delivery_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))


# -- signing -----------------------------------------------------------------------------------


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 keyed with the secret over `<timestamp>.<body>`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signed: str) -> bool:
    """What a receiver checks (before its own check that the timestamp is recent)."""
    if not timestamp.isdigit():
        return False
    return hmac.compare_digest(signature(secret, int(timestamp), body), signed)


def signing_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks signature: a `whsec_` secret's base64, else the text's bytes
    (b"" for a `whsec_` secret that is not base64)."""
    if not secret.startswith(STANDARD_SECRET_PREFIX):
        return secret.encode()
    try:
        return base64.b64decode(secret.removeprefix(STANDARD_SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        return b""


def standard_signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64>`: HMAC-SHA256 keyed with the secret's key over `<id>.<timestamp>.<body>`."""
    mac = hmac.new(signing_key(secret), f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def headers(due: Due, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one attempt: the delivery id stays, the timestamp and signatures are fresh."""
    return {
        "Content-Type": "application/json",
        "User-Agent": "dspy-registry-webhooks",
        STANDARD_ID_HEADER: due.id,
        STANDARD_TIMESTAMP_HEADER: str(timestamp),
        STANDARD_SIGNATURE_HEADER: " ".join(
            standard_signature(s, due.id, timestamp, body) for s in due.secrets
        ),
        DELIVERY_HEADER: due.id,
        EVENT_HEADER: f"DEPLOYMENT_EVENT_KIND_{due.event_kind.name}",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(due.secrets[0], timestamp, body),
    }


# -- retries -----------------------------------------------------------------------------------


def retry_delay(failed: int, rand: float) -> float:
    """Seconds to wait after the `failed`-th failed attempt; `rand` is uniform in [0, 1)."""
    delay = min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2.0 ** min(max(failed - 1, 0), 30))
    return delay * (1 - RETRY_JITTER + 2 * RETRY_JITTER * rand)


def next_attempt(failed: int, created: datetime, now: datetime, rand: float) -> datetime | None:
    """When to try again after `failed` failed attempts; None once that is past the delivery's age limit."""
    at = now + timedelta(seconds=retry_delay(failed, rand))
    return at if at - created <= MAX_AGE else None

"""The webhook rules, pure: URLs, the address policy and its allow-list, matching, the body, signing,
the retry schedule."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import json_format

from dspy_registry.server.domain import webhooks
from dspy_registry.server.domain.deployments import Kind
from dspy_registry.server.domain.events import DeploymentChanged, deployment_kind
from dspy_registry.server.domain.webhooks import Due, Interest, Selector, WebhookDraft
from dspy_registry.server.errors import InvalidArgument, Violations
from dspy_registry.v1 import deployment_pb2 as dpb


@pytest.mark.parametrize(
    "url",
    [
        "",
        "ftp://example.com/x",
        "example.com/hook",
        "https://",
        "https://user:pw@example.com/",
        "https://example.com:0x1/",
        "https://example.com/#frag",
        "https://exa mple.com/",
        "https://example.com/" + "x" * 2100,
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        webhooks.check_url(url, "webhook.url")
    assert [v.field for v in caught.value.violations] == ["webhook.url"]


def test_a_url_gives_its_host_and_port() -> None:
    assert webhooks.check_url("https://Hooks.Example.com/a?b=c", "u") == webhooks.Endpoint(
        "https", "hooks.example.com", 443
    )
    assert webhooks.check_url("http://[::1]:8080/x", "u") == webhooks.Endpoint("http", "::1", 8080)
    assert webhooks.check_url("http://203.0.113.5/", "u").port == 80


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.200.0.1",
        "::1",
        "10.0.0.1",
        "172.31.255.255",
        "192.168.0.1",
        "169.254.169.254",
        "fe80::1",
        "fc00::1",
        "0.0.0.0",
        "::",
        "100.64.0.1",
        "224.0.0.251",
        "ff02::1",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.1",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
        "2002:a00:1::1",
        "2002:7f00:1::",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    why = webhooks.refusal(ipaddress.ip_address(address))
    assert why is not None and "--webhook-allow" in why


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert webhooks.refusal(ipaddress.ip_address(address)) is None


def test_the_allow_list_admits_its_networks_and_nothing_else() -> None:
    allow = webhooks.parse_networks(["127.0.0.0/8, 10.1.0.0/16", "::1"])
    assert [str(n) for n in allow] == ["127.0.0.0/8", "10.1.0.0/16", "::1/128"]
    for ok in ("127.0.0.1", "10.1.2.3", "::1", "::ffff:127.0.0.1"):
        assert webhooks.refusal(ipaddress.ip_address(ok), allow) is None, ok
    for refused in ("10.2.0.1", "192.168.1.1", "169.254.169.254"):
        assert webhooks.refusal(ipaddress.ip_address(refused), allow) is not None, refused
    with pytest.raises(ValueError, match="webhook-allow"):
        webhooks.parse_networks(["127.0.0.0/33"])


def test_every_address_a_name_resolves_to_must_be_allowed() -> None:
    public, private = ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("10.0.0.1")
    webhooks.check_addresses("hooks.example.com", [public], (), "webhook.url")
    with pytest.raises(InvalidArgument, match="hooks.example.com resolves to 10.0.0.1"):
        webhooks.check_addresses("hooks.example.com", [public, private], (), "webhook.url")
    with pytest.raises(InvalidArgument, match="no address"):
        webhooks.check_addresses("hooks.example.com", [], (), "webhook.url")


def test_a_draft_names_every_bad_field() -> None:
    draft = WebhookDraft(
        id="Bad",
        url="gopher://x",
        event_kinds=(0, 6, 6, 42),
        selectors=(Selector("a**", ""), Selector("ok", "Prod")),
        secret="",
        description="x\x00",
    )
    v = Violations()
    endpoint, kinds = webhooks.validate(draft, v)
    assert endpoint is None and kinds == (Kind.SUCCEEDED,)
    assert [i.field for i in v.items] == [
        "webhook_id",
        "webhook.url",
        "webhook.secret",
        "webhook.description",
        "webhook.event_kinds[0]",
        "webhook.event_kinds[3]",
        "webhook.selectors[0].program",
        "webhook.selectors[1].environment",
    ]


def test_interest_matches_kinds_and_selectors() -> None:
    everything = Interest()
    assert everything.matches(Kind.CREATED, "any", "where")
    rollbacks = Interest(
        frozenset({Kind.AUTO_ROLLBACK, Kind.ROLLED_BACK}), (Selector("sentiment_*", "production"),)
    )
    assert rollbacks.matches(Kind.AUTO_ROLLBACK, "sentiment_v2", "production")
    assert not rollbacks.matches(Kind.AUTO_ROLLBACK, "sentiment_v2", "staging")
    assert not rollbacks.matches(Kind.AUTO_ROLLBACK, "ranker", "production")
    assert not rollbacks.matches(Kind.SUCCEEDED, "sentiment_v2", "production")
    anywhere = Interest(selectors=(Selector("ranker"), Selector("*", "staging")))
    assert anywhere.matches(Kind.PAUSED, "ranker", "production") and anywhere.matches(
        Kind.PAUSED, "x", "staging"
    )
    assert webhooks.selector("programs/x", "environments/prod") == Selector("x", "prod")
    assert webhooks.selector("", "") == Selector("*", "")


def test_event_kinds_of_the_log() -> None:
    assert deployment_kind("deployment.auto_rollback") == Kind.AUTO_ROLLBACK
    assert deployment_kind("deployment.step_advanced") == Kind.STEP_ADVANCED
    assert deployment_kind("deployment.unheard_of") is None
    assert deployment_kind("target.updated") is None


def test_the_body_is_a_deployment_event_in_proto_json() -> None:
    data = {
        "program": "sentiment",
        "environment": "production",
        "version": "1.2.0",
        "state": "ROLLED_BACK",
        "step": 0,
        "weight_percent": 0,
        "actor": "controller",
        "reason": "error_rate 0.2 > 0.05",
        "related": "deployments/abc",
    }
    time = datetime(2026, 11, 27, 12, 0, 1, 250000, tzinfo=UTC)
    change = DeploymentChanged.from_json(data)
    body = webhooks.event_body("42-1", Kind.AUTO_ROLLBACK, 42, time, "deployments/xyz", change)
    event = json_format.Parse(body, dpb.DeploymentEvent())
    assert event == dpb.DeploymentEvent(
        id="42-1",
        kind=dpb.DEPLOYMENT_EVENT_KIND_AUTO_ROLLBACK,
        revision=42,
        deployment="deployments/xyz",
        program="sentiment",
        environment="production",
        version="1.2.0",
        state=dpb.DEPLOYMENT_STATE_ROLLED_BACK,
        step=1,
        weight_percent=0,
        actor="controller",
        reason="error_rate 0.2 > 0.05",
        related_deployment="deployments/abc",
        time=event.time,
    )
    assert event.time.ToDatetime(tzinfo=UTC) == time
    assert json.loads(body)["kind"] == "DEPLOYMENT_EVENT_KIND_AUTO_ROLLBACK"


def test_the_signature_is_an_hmac_of_timestamp_dot_body() -> None:
    body = b'{"id":"1-0"}'
    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert webhooks.signature("k", 1700000000, body) == "sha256=" + expected
    assert webhooks.verify("k", "1700000000", body, "sha256=" + expected)
    assert not webhooks.verify("k", "1700000001", body, "sha256=" + expected)
    assert not webhooks.verify("other", "1700000000", body, "sha256=" + expected)
    assert not webhooks.verify("k", "1700000000", body + b" ", "sha256=" + expected)
    assert not webhooks.verify("k", "-1", body, "sha256=" + expected)
    due = Due(
        id="d1",
        webhook="w",
        url="https://x/",
        secrets=("k", "whsec_" + base64.b64encode(b"standard key").decode()),
        event_kind=Kind.CREATED,
        body=body.decode(),
        attempts=0,
        create_time=datetime.now(UTC),
    )
    headers = webhooks.headers(due, 1700000000, body)
    assert headers[webhooks.DELIVERY_HEADER] == "d1"
    assert headers[webhooks.EVENT_HEADER] == "DEPLOYMENT_EVENT_KIND_CREATED"
    assert headers[webhooks.TIMESTAMP_HEADER] == "1700000000"
    assert headers[webhooks.SIGNATURE_HEADER] == "sha256=" + expected  # the oldest secret's
    # Standard Webhooks: a v1 signature per secret of `<id>.<timestamp>.<body>`; a whsec_ secret's key
    # is the bytes its base64 encodes, any other's its text.
    signed = b"d1.1700000000." + body
    assert headers["webhook-id"] == "d1" and headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-signature"].split(" ") == [
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in (b"k", b"standard key")
    ]
    assert "secret" not in repr(
        Due(
            id="d1",
            webhook="w",
            url="https://x/",
            secrets=("secret",),
            event_kind=Kind.CREATED,
            body="{}",
            attempts=0,
            create_time=datetime.now(UTC),
        )
    )


def test_retries_back_off_exponentially_with_jitter_up_to_a_cap_then_give_up() -> None:
    assert [webhooks.retry_delay(n, 0.5) for n in range(1, 13)] == [
        1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600,
    ]  # fmt: skip
    assert webhooks.retry_delay(1, 0.0) == pytest.approx(0.8) and webhooks.retry_delay(1, 0.999999) < 1.2
    assert webhooks.retry_delay(1000, 0.999999) < 720
    created = datetime(2026, 1, 1, tzinfo=UTC)
    soon = webhooks.next_attempt(3, created, created + timedelta(seconds=7), 0.5)
    assert soon == created + timedelta(seconds=11)
    late = created + webhooks.MAX_AGE - timedelta(seconds=30)
    assert webhooks.next_attempt(40, created, late, 0.5) is None  # past the day: FAILED
    # A day of failures is a bounded number of attempts.
    now, attempts = created, 0
    while (at := webhooks.next_attempt(attempts + 1, created, now, 0.5)) is not None:
        now, attempts = at, attempts + 1
    assert 100 < attempts < 200

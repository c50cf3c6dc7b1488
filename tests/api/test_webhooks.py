"""Webhooks over a real channel, on SQLite and Postgres, POSTing to a real HTTP receiver on 127.0.0.1:
create, list, delete; bad input named field by field; the address rule and its allow-list; signed
deliveries whose bodies are the events WatchEvents streams; kinds and selectors; retries with backoff;
deletion cancelling what is pending."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, json_format

from dspy_registry.server.config import add_serve_arguments, from_arguments
from dspy_registry.server.domain import webhooks
from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import access_pb2_grpc as apb_grpc
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import registry_pb2 as pb
from tests.api.conftest import Running, register_signature, start, violations
from tests.eventually import until as _eventually
from tests.factories import dspy_state
from tests.webhook_receiver import Receiver

LOOPBACK = ("127.0.0.0/8",)
SECRET = "s3cret-for-tests"
REPLACE = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE)
NO_KIND: Any = 99  # no such DeploymentEventKind
NO_STATE: Any = 7  # no such DeliveryState


@pytest.fixture
async def allowing(database_url: str) -> AsyncIterator[Running]:
    """A server whose webhooks may reach loopback (the receivers of these tests)."""
    running = await start(database_url, webhook_allow=LOOPBACK)
    yield running
    await running.channel.close(None)
    await running.app.stop(grace=0)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver(SECRET).start()
    yield r
    await r.stop()


def _webhook(
    url: str,
    *kinds: dpb.DeploymentEventKind,
    selectors: tuple[tuple[str, str], ...] = (),
    secret: str = SECRET,
) -> dpb.Webhook:
    return dpb.Webhook(
        url=url,
        event_kinds=list(kinds),
        selectors=[dpb.TargetSelector(program=p, environment=e) for p, e in selectors],
        secret=secret,
        description="for the tests",
    )


async def _create(server: Running, webhook_id: str, webhook: dpb.Webhook) -> dpb.Webhook:
    response = await server.deployments.CreateWebhook(
        dpb.CreateWebhookRequest(webhook_id=webhook_id, webhook=webhook)
    )
    created: dpb.Webhook = response.webhook
    return created


async def _refused(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def _program(
    server: Running, program: str = "sentiment", versions: tuple[str, ...] = ("1.0.0",)
) -> None:
    """Registered (which auto-deploys each version to development)."""
    await register_signature(server.registry, name="sig")
    for version in versions:
        await server.registry.RegisterProgram(
            pb.RegisterProgramRequest(
                spec=pb.ProgramVersionSpec(
                    program=program, version=version, signature="signatures/sig/versions/1.0.0"
                ),
                artifact=dspy_state(version),
            )
        )


async def _deploy(
    server: Running, version: str, environment: str = "staging", program: str = "sentiment"
) -> None:
    await server.deployments.CreateDeployment(
        dpb.CreateDeploymentRequest(
            program=program, version=version, environment=environment, strategy=REPLACE
        )
    )


async def _deliveries(server: Running, webhook: str, *states: dpb.DeliveryState) -> list[dpb.WebhookDelivery]:
    response = await server.deployments.ListWebhookDeliveries(
        dpb.ListWebhookDeliveriesRequest(parent=webhook, states=list(states), page_size=1000)
    )
    return list(response.deliveries)


async def _settled(server: Running, webhook: str) -> list[dpb.WebhookDelivery]:
    """The webhook's deliveries once none is pending."""

    async def done() -> bool:
        return not await _deliveries(server, webhook, dpb.DELIVERY_STATE_PENDING)

    await _eventually(done)
    return await _deliveries(server, webhook)


# -- management ----------------------------------------------------------------------------------


async def test_create_list_and_delete_webhooks(allowing: Running, receiver: Receiver) -> None:
    deploy = allowing.deployments
    first = await _create(
        allowing,
        "alerts",
        _webhook(receiver.url, dpb.DEPLOYMENT_EVENT_KIND_AUTO_ROLLBACK, selectors=(("sent*", "production"),)),
    )
    assert first.name == "webhooks/alerts" and first.url == receiver.url and first.secret == ""
    assert list(first.event_kinds) == [dpb.DEPLOYMENT_EVENT_KIND_AUTO_ROLLBACK]
    assert [(s.program, s.environment) for s in first.selectors] == [("sent*", "production")]
    assert first.creator == "principals/admin" and first.revision > 0 and first.create_time.seconds > 0
    await _create(allowing, "audit", _webhook(receiver.url))

    err = await _refused(_create(allowing, "alerts", _webhook(receiver.url)))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS

    # A retry with the same request_id gets the first answer; the id reused for another request does not.
    request = dpb.CreateWebhookRequest(webhook_id="retried", webhook=_webhook(receiver.url), request_id="r-1")
    once = await deploy.CreateWebhook(request)
    again = await deploy.CreateWebhook(request)
    assert once == again
    other = dpb.CreateWebhookRequest(webhook_id="other", webhook=_webhook(receiver.url), request_id="r-1")
    err = await _refused(deploy.CreateWebhook(other))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and violations(err) == {"request_id"}

    listed = await deploy.ListWebhooks(dpb.ListWebhooksRequest(page_size=2))
    assert [w.name for w in listed.webhooks] == ["webhooks/alerts", "webhooks/audit"]
    assert listed.total_size == 3 and all(w.secret == "" for w in listed.webhooks)
    rest = await deploy.ListWebhooks(dpb.ListWebhooksRequest(page_size=2, page_token=listed.next_page_token))
    assert [w.name for w in rest.webhooks] == ["webhooks/retried"] and rest.next_page_token == ""

    deleted = await deploy.DeleteWebhook(dpb.DeleteWebhookRequest(name="webhooks/alerts"))
    assert deleted.webhook.name == "webhooks/alerts" and deleted.webhook.secret == ""
    for call in (
        deploy.DeleteWebhook(dpb.DeleteWebhookRequest(name="webhooks/alerts")),
        deploy.ListWebhookDeliveries(dpb.ListWebhookDeliveriesRequest(parent="webhooks/alerts")),
    ):
        assert (await _refused(call)).code() == grpc.StatusCode.NOT_FOUND
    err = await _refused(deploy.DeleteWebhook(dpb.DeleteWebhookRequest(name="alerts")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and violations(err) == {"name"}
    assert (await deploy.ListWebhooks(dpb.ListWebhooksRequest())).total_size == 2

    # Both mutations are in the audit log, by the admin.
    audit = await apb_grpc.AccessServiceStub(allowing.channel).ListAuditEvents(apb.ListAuditEventsRequest())
    done = [
        (e.method.rsplit("/", 1)[1], e.resource)
        for e in audit.audit_events
        if "Webhook" in e.method and e.outcome == apb.AUDIT_OUTCOME_SUCCEEDED
    ]
    assert sorted(set(done)) == [  # (the retried create is audited twice)
        ("CreateWebhook", "webhooks/alerts"),
        ("CreateWebhook", "webhooks/audit"),
        ("CreateWebhook", "webhooks/retried"),
        ("DeleteWebhook", "webhooks/alerts"),
    ]
    assert "s3cret" not in str(audit)


async def test_bad_webhooks_are_refused_field_by_field_and_change_nothing(server: Running) -> None:
    deploy = server.deployments
    cases: list[tuple[str, dpb.Webhook, set[str]]] = [
        ("ok", _webhook(""), {"webhook.url"}),
        ("ok", _webhook("ftp://203.0.113.9/hook"), {"webhook.url"}),
        ("ok", _webhook("https:///no-host"), {"webhook.url"}),
        ("ok", _webhook("https://user:pw@203.0.113.9/hook"), {"webhook.url"}),
        ("ok", _webhook("https://203.0.113.9:99999/hook"), {"webhook.url"}),
        ("ok", _webhook("https://203.0.113.9/hook\n"), {"webhook.url"}),
        ("ok", _webhook("https://10.0.0.1/hook"), {"webhook.url"}),  # private: refused (see below)
        ("ok", _webhook("https://8.8.8.8/hook", secret=""), {"webhook.secret"}),
        ("ok", _webhook("https://8.8.8.8/hook", NO_KIND), {"webhook.event_kinds[0]"}),
        ("ok", _webhook("https://8.8.8.8/hook", selectors=(("Bad!", ""),)), {"webhook.selectors[0].program"}),
        (
            "ok",
            _webhook("https://8.8.8.8/hook", selectors=(("x", "Prod"),)),
            {"webhook.selectors[0].environment"},
        ),
        ("Not-A-Name", _webhook("https://8.8.8.8/hook"), {"webhook_id"}),
        (
            "",
            _webhook("ftp://x", dpb.DEPLOYMENT_EVENT_KIND_UNSPECIFIED, secret="", selectors=(("a**", ""),)),
            {
                "webhook_id",
                "webhook.url",
                "webhook.secret",
                "webhook.event_kinds[0]",
                "webhook.selectors[0].program",
            },
        ),
    ]
    for webhook_id, webhook, fields in cases:
        err = await _refused(
            deploy.CreateWebhook(dpb.CreateWebhookRequest(webhook_id=webhook_id, webhook=webhook))
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, webhook
        assert violations(err) == fields, (webhook, err.details())
    assert (await deploy.ListWebhooks(dpb.ListWebhooksRequest())).total_size == 0
    err = await _refused(
        deploy.ListWebhookDeliveries(dpb.ListWebhookDeliveriesRequest(parent="webhooks/x", states=[NO_STATE]))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and violations(err) == {"states"}


async def test_secrets_are_added_and_retired_with_bad_input_refused_and_never_shown(server: Running) -> None:
    deploy = server.deployments
    created = await _create(server, "hook", _webhook("https://8.8.8.8/hook"))
    [first] = created.secrets
    assert first.name.startswith("webhooks/hook/secrets/") and first.create_time.seconds > 0

    def add(secret: str, parent: str = "webhooks/hook", request_id: str = "") -> Any:
        return deploy.AddWebhookSecret(
            dpb.AddWebhookSecretRequest(parent=parent, secret=secret, request_id=request_id)
        )

    for secret in ("", "x" * (webhooks.MAX_SECRET_LENGTH + 1), "whsec_not base64!"):
        err = await _refused(add(secret))
        assert (err.code(), violations(err)) == (grpc.StatusCode.INVALID_ARGUMENT, {"secret"}), secret
    assert (await _refused(add("k", parent="webhooks/none"))).code() == grpc.StatusCode.NOT_FOUND
    assert (await _refused(add("k", parent="hooks/x"))).code() == grpc.StatusCode.INVALID_ARGUMENT

    added = await add("whsec_" + "a" * 32, request_id="rotate-1")
    again = await add("whsec_" + "a" * 32, request_id="rotate-1")  # a retry: the first answer
    assert again.secret.name == added.secret.name
    assert [s.name for s in added.webhook.secrets] == [first.name, added.secret.name]
    assert "whsec_" not in str(added) and SECRET not in str(added)  # names, never values
    for _ in range(webhooks.MAX_SECRETS - 2):
        await add("another")
    err = await _refused(add("one too many"))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    def retire(name: str) -> Any:
        return deploy.RetireWebhookSecret(dpb.RetireWebhookSecretRequest(name=name))

    for name in (
        "webhooks/hook",
        "webhooks/hook/secrets/",
        "webhooks/hook/keys/x",
        "webhooks/Bad!/secrets/x",
    ):
        assert (await _refused(retire(name))).code() == grpc.StatusCode.INVALID_ARGUMENT, name
    assert (await _refused(retire("webhooks/hook/secrets/nope"))).code() == grpc.StatusCode.NOT_FOUND
    assert (await _refused(retire("webhooks/none/secrets/nope"))).code() == grpc.StatusCode.NOT_FOUND
    left = (await retire(first.name)).webhook.secrets
    assert first.name not in [s.name for s in left] and len(left) == webhooks.MAX_SECRETS - 1
    for secret in left[:-1]:
        await retire(secret.name)
    err = await _refused(retire(left[-1].name))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION  # every POST is signed: one stays
    [listed] = (await deploy.ListWebhooks(dpb.ListWebhooksRequest())).webhooks
    assert [s.name for s in listed.secrets] == [left[-1].name]


REFUSED = [
    "http://127.0.0.1:9/hook",
    "http://127.1.2.3/hook",
    "http://[::1]:9/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://localhost:9/hook",  # a name: what it resolves to is checked
    "http://10.1.2.3/hook",
    "http://172.16.0.1/hook",
    "http://192.168.1.1/hook",
    "http://169.254.169.254/latest/meta-data",  # the cloud metadata service
    "http://[fe80::1]/hook",
    "http://[fd00::1]/hook",
    "http://100.64.0.1/hook",
    "http://0.0.0.0/hook",
    "http://224.0.0.1/hook",
    "http://240.0.0.1/hook",
]


async def test_private_link_local_and_loopback_addresses_are_refused(server: Running) -> None:
    deploy = server.deployments
    for url in REFUSED:
        err = await _refused(
            deploy.CreateWebhook(dpb.CreateWebhookRequest(webhook_id="w", webhook=_webhook(url)))
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and violations(err) == {"webhook.url"}, url
        assert "--webhook-allow" in (err.details() or ""), err.details()
    assert (await deploy.ListWebhooks(dpb.ListWebhooksRequest())).total_size == 0
    # A public address is fine (nothing is sent to it: no deployment happens here).
    await _create(server, "public", _webhook("https://8.8.8.8/hook"))


async def test_the_allow_list_lets_webhooks_reach_its_networks_only(database_url: str) -> None:
    allowing = await start(database_url, webhook_allow=("127.0.0.0/8", "::1/128"))
    try:
        for i, url in enumerate(["http://127.0.0.1:9/hook", "http://127.1.2.3/hook", "http://[::1]:9/hook"]):
            await _create(allowing, f"loop{i}", _webhook(url))
        for url in ("http://10.1.2.3/hook", "http://169.254.169.254/", "http://[::ffff:10.1.2.3]/"):
            err = await _refused(_create(allowing, "private", _webhook(url)))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and violations(err) == {"webhook.url"}
    finally:
        await allowing.channel.close(None)
        await allowing.app.stop(grace=0)
    with pytest.raises(ValueError, match="webhook-allow"):
        await start(database_url, webhook_allow=("not-a-network",))


# -- delivery ------------------------------------------------------------------------------------


async def _watched_events(server: Running, after: int) -> dict[str, dpb.DeploymentEvent]:
    """Every deployment event after revision `after`, as WatchEvents streams them, until caught up."""
    interval = duration_pb2.Duration()
    interval.FromMilliseconds(100)
    stream = server.deployments.WatchEvents(
        dpb.WatchEventsRequest(start_revision=after, progress_interval=interval)
    )
    out: dict[str, dpb.DeploymentEvent] = {}
    try:
        while True:
            message = await stream.read()
            if message.HasField("progress"):
                return out
            for e in message.events.events:
                out[e.id] = e
    finally:
        stream.cancel()


async def test_every_event_arrives_signed_as_watch_events_streams_it(
    allowing: Running, receiver: Receiver
) -> None:
    created = await _create(allowing, "all", _webhook(receiver.url))
    await _program(allowing, versions=("1.0.0", "1.1.0"))  # each auto-deployed to development
    await _deploy(allowing, "1.0.0")
    delivered = await _settled(allowing, "webhooks/all")
    watched = await _watched_events(allowing, created.revision)
    assert len(watched) == 9  # created, promoted and succeeded, three times
    assert sorted(d.event_id for d in delivered) == sorted(watched)
    assert all(
        d.state == dpb.DELIVERY_STATE_SUCCEEDED
        and d.attempts == 1
        and d.last_response_code == 200
        and not d.last_error
        for d in delivered
    )
    assert all(d.HasField("complete_time") and not d.HasField("next_attempt_time") for d in delivered)
    # Newest first.
    revisions = [tuple(int(x) for x in d.event_id.split("-")) for d in delivered]
    assert revisions == sorted(revisions, reverse=True)

    got = receiver.delivered()
    assert sorted(got) == sorted(d.name.rsplit("/", 1)[1] for d in delivered)
    for received in got.values():
        assert received.valid, received
        assert abs(int(received.timestamp) - time.time()) < 60
        event = json_format.Parse(received.body, dpb.DeploymentEvent())
        assert event == watched[event.id]  # the same event, field for field
        assert received.event == dpb.DeploymentEventKind.Name(event.kind)
    # A wrong secret does not verify.
    one = next(iter(got.values()))
    assert not webhooks.verify("another secret", one.timestamp, one.body, one.signature)
    assert not webhooks.verify(SECRET, str(int(one.timestamp) + 1), one.body, one.signature)

    names, token, sizes = [], "", []
    while True:
        page = await allowing.deployments.ListWebhookDeliveries(
            dpb.ListWebhookDeliveriesRequest(parent="webhooks/all", page_size=4, page_token=token)
        )
        names += [d.name for d in page.deliveries]
        sizes.append(page.total_size)
        if not (token := page.next_page_token):
            break
    assert names == [d.name for d in delivered] and sizes == [9, 9, 9]
    assert await _deliveries(allowing, "webhooks/all", dpb.DELIVERY_STATE_FAILED) == []


async def test_kinds_and_selectors_choose_what_each_webhook_gets(
    allowing: Running, receiver: Receiver
) -> None:
    everything = await _create(allowing, "everything", _webhook(receiver.url))
    await _create(allowing, "succeeded", _webhook(receiver.url, dpb.DEPLOYMENT_EVENT_KIND_SUCCEEDED))
    await _create(allowing, "staging", _webhook(receiver.url, selectors=(("sent*", "staging"),)))
    await _create(
        allowing,
        "others",
        _webhook(
            receiver.url, dpb.DEPLOYMENT_EVENT_KIND_CREATED, selectors=(("other", ""), ("x*", "production"))
        ),
    )
    await _program(allowing)  # to development
    await _program(allowing, program="other")  # to development
    await _deploy(allowing, "1.0.0")  # sentiment to staging
    watched = await _watched_events(allowing, everything.revision)

    async def kinds_of(webhook: str) -> list[tuple[str, int]]:
        found = [
            (watched[d.event_id].program + "/" + watched[d.event_id].environment, d.event_kind)
            for d in await _settled(allowing, f"webhooks/{webhook}")
        ]
        return sorted(found)

    created, promoted, succeeded = (
        dpb.DEPLOYMENT_EVENT_KIND_CREATED,
        dpb.DEPLOYMENT_EVENT_KIND_PROMOTED,
        dpb.DEPLOYMENT_EVENT_KIND_SUCCEEDED,
    )
    assert await kinds_of("everything") == sorted(
        [
            (t, k)
            for t in ("sentiment/development", "other/development", "sentiment/staging")
            for k in (created, promoted, succeeded)
        ]
    )
    assert await kinds_of("succeeded") == sorted(
        [
            ("sentiment/development", succeeded),
            ("other/development", succeeded),
            ("sentiment/staging", succeeded),
        ]
    )
    assert await kinds_of("staging") == [("sentiment/staging", k) for k in (created, promoted, succeeded)]
    assert await kinds_of("others") == [("other/development", created)]
    assert len(receiver.delivered()) == 9 + 3 + 3 + 1 and all(r.valid for r in receiver.got)


async def test_a_failing_receiver_is_retried_with_backoff_until_it_answers(
    allowing: Running, receiver: Receiver
) -> None:
    receiver.statuses = [500, 503]
    await _create(
        allowing,
        "flaky",
        _webhook(receiver.url, dpb.DEPLOYMENT_EVENT_KIND_CREATED, selectors=(("*", "staging"),)),
    )
    await _program(allowing)
    await _deploy(allowing, "1.0.0")

    async def failed_once() -> bool:
        found = await _deliveries(allowing, "webhooks/flaky")
        return bool(found) and found[0].attempts >= 1

    await _eventually(failed_once)
    [pending] = await _deliveries(allowing, "webhooks/flaky")
    if pending.attempts == 1:  # (the second attempt comes about a second later)
        assert pending.state == dpb.DELIVERY_STATE_PENDING and pending.last_response_code == 500
        assert "500" in pending.last_error and pending.HasField("next_attempt_time")
        assert pending.next_attempt_time.ToDatetime() > pending.last_attempt_time.ToDatetime()
    [done] = await _settled(allowing, "webhooks/flaky")
    assert done.state == dpb.DELIVERY_STATE_SUCCEEDED and done.attempts == 3
    assert done.last_response_code == 200 and done.last_error == ""
    assert [r.status for r in receiver.got] == [500, 503, 200]
    assert len({r.delivery for r in receiver.got}) == 1 and all(
        r.valid for r in receiver.got
    )  # one id throughout
    # 1 s, then 2 s, each +-20 % (webhooks.retry_delay, tests/domain): no attempt comes before its
    # time, counted from the failure before it, which the receiver saw first. How late one comes is
    # the machine's load, not the schedule: no upper bound (a run stalled 0.5 s got 1.69 s, 1.65 s).
    gaps = [b.arrived - a.arrived for a, b in zip(receiver.got, receiver.got[1:], strict=False)]
    assert gaps[0] > 0.7 and gaps[1] > 1.5, gaps


async def test_deleting_a_webhook_cancels_its_pending_deliveries(
    allowing: Running, receiver: Receiver
) -> None:
    receiver.statuses = [500] * 100
    await _create(allowing, "doomed", _webhook(receiver.url, selectors=(("*", "staging"),)))
    await _program(allowing)
    await _deploy(allowing, "1.0.0")

    async def tried() -> bool:
        return len(receiver.got) >= 2  # both events' first attempts

    await _eventually(tried)
    await allowing.deployments.DeleteWebhook(dpb.DeleteWebhookRequest(name="webhooks/doomed"))
    seen = len(receiver.got)
    await asyncio.sleep(2.5)  # past the retries that were due
    assert len(receiver.got) <= seen + 2  # at most an attempt already in flight
    async with allowing.app.store.read() as tx:
        assert await tx.next_delivery_time() is None


async def test_each_attempt_checks_the_address_again(database_url: str, receiver: Receiver) -> None:
    """Allowed when created, refused when sent: the server restarted without the allow-list (as a DNS
    answer turned private would be). The name's addresses are checked as the connection is made."""
    first = await start(database_url, webhook_allow=("127.0.0.0/8", "::1/128"))
    try:
        staging = (("*", "staging"),)
        await _create(first, "literal", _webhook(receiver.url, selectors=staging))
        await _create(first, "byname", _webhook(f"http://localhost:{receiver.port}/hook", selectors=staging))
        await _program(first, versions=("1.0.0", "1.1.0"))
        await _deploy(first, "1.0.0")
        for name in ("literal", "byname"):
            assert {d.state for d in await _settled(first, f"webhooks/{name}")} == {
                dpb.DELIVERY_STATE_SUCCEEDED
            }
    finally:
        await first.channel.close(None)
        await first.app.stop(grace=0)
    sent = len(receiver.got)
    assert sent == 6

    second = await start(database_url, admin_token=first.admin_token)  # no allow-list
    try:
        await _deploy(second, "1.1.0")

        async def attempted() -> bool:
            pending = await _deliveries(second, "webhooks/byname", dpb.DELIVERY_STATE_PENDING)
            pending += await _deliveries(second, "webhooks/literal", dpb.DELIVERY_STATE_PENDING)
            return len(pending) == 6 and all(d.attempts >= 1 for d in pending)

        await _eventually(attempted)
        for name, host in (("literal", "127.0.0.1"), ("byname", "localhost resolves to")):
            for d in await _deliveries(second, f"webhooks/{name}", dpb.DELIVERY_STATE_PENDING):
                assert d.last_response_code == 0 and d.last_error.startswith("refused: "), d
                assert host in d.last_error and "--webhook-allow" in d.last_error, d.last_error
        assert len(receiver.got) == sent  # nothing reached the receiver
    finally:
        await second.channel.close(None)
        await second.app.stop(grace=0)


def test_the_allow_list_flag_is_repeatable_and_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def parsed(*argv: str) -> tuple[str, ...]:
        parser = argparse.ArgumentParser()
        add_serve_arguments(parser)
        return from_arguments(parser.parse_args(list(argv))).webhook_allow

    assert parsed() == ()
    assert parsed("--webhook-allow", "127.0.0.0/8", "--webhook-allow", "::1/128,10.0.0.0/8") == (
        "127.0.0.0/8",
        "::1/128,10.0.0.0/8",
    )
    monkeypatch.setenv("DSPY_REGISTRY_WEBHOOK_ALLOW", "192.168.0.0/16")
    assert parsed() == ("192.168.0.0/16",)
    assert len(webhooks.parse_networks(parsed("--webhook-allow", "10.0.0.0/8,::1"))) == 3


async def test_with_no_webhook_deployments_leave_the_outbox_unread_and_a_new_one_gets_what_follows(
    allowing: Running, receiver: Receiver
) -> None:
    """A deployment event queues deliveries only for the webhooks that exist: with none, its commit
    does not wake the notifier to read the outbox (every auto-deploying registration's did); a
    webhook created afterwards makes it look again, and gets the events that follow."""
    notifier = allowing.app.notifier
    reads = 0
    next_due = notifier.webhooks.next_due

    async def counted() -> Any:
        nonlocal reads
        reads += 1
        return await next_due()

    notifier.webhooks.next_due = counted  # type: ignore[method-assign]
    await _eventually(lambda: notifier._webhooks_exist is False, "the notifier found no webhook")
    before = reads
    await _program(allowing, versions=tuple(f"1.{n}.0" for n in range(20)))  # 20 auto-deploys
    assert reads - before <= 2  # the idle passes (one per 5 s) at most
    await _create(allowing, "late", _webhook(receiver.url))
    await _deploy(allowing, "1.19.0")
    delivered = await _settled(allowing, "webhooks/late")
    assert len(delivered) == 3  # created, promoted, succeeded
    assert all(d.state == dpb.DELIVERY_STATE_SUCCEEDED for d in delivered)

"""The webhook outbox on SQLite and Postgres: a delivery is written exactly when its event commits,
claims lease, outcomes settle, deletion and retention forget."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dspy_registry.server.domain.deployments import Kind
from dspy_registry.server.domain.model import Event, Page
from dspy_registry.server.domain.webhooks import DeliveryState, Selector, SigningSecret, Webhook
from dspy_registry.server.store.base import Store

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _hook(name: str, kinds: tuple[Kind, ...] = (), selectors: tuple[Selector, ...] = ()) -> Webhook:
    return Webhook(
        id=name,
        url="https://8.8.8.8/",
        event_kinds=kinds,
        selectors=selectors,
        secrets=(
            SigningSecret(id="first", value="secret", create_time=NOW),
            SigningSecret(id="second", value="whsec_c2Vjb25k", create_time=NOW + timedelta(seconds=1)),
        ),
        description="",
        creator="admin",
        create_time=NOW,
        revision=1,
    )


def _event(kind: str, program: str = "p", environment: str = "staging") -> Event:
    data: dict[str, Any] = {
        "program": program,
        "environment": environment,
        "version": "1.0.0",
        "state": "SUCCEEDED",
        "step": 0,
        "weight_percent": 0,
        "actor": "admin",
        "reason": "",
        "related": "",
    }
    return Event(kind=f"deployment.{kind}", resource="deployments/d1", data=data)


async def _deliveries(store: Store, webhook: str) -> list[tuple[str, Kind, DeliveryState]]:
    async with store.read() as tx:
        found, _, _ = await tx.list_deliveries(webhook, (), Page(100))
    return [(d.event_id, d.event_kind, d.state) for d in found]


async def test_deliveries_are_queued_in_the_events_transaction(store: Store) -> None:
    async with store.write() as tx:
        for hook in (
            _hook("all"),
            _hook("succeeded", (Kind.SUCCEEDED,)),
            _hook("prod", selectors=(Selector("p*", "production"),)),
        ):
            await tx.insert_webhook(hook)
    async with store.write() as tx:
        await tx.append(
            [Event(kind="target.updated", resource="programs/p/environments/staging/target", data={})]
        )
        await tx.append([_event("created"), _event("succeeded")])  # a second append: seq goes on
        revision = tx.revision
    assert await _deliveries(store, "all") == [
        (f"{revision}-2", Kind.SUCCEEDED, DeliveryState.PENDING),
        (f"{revision}-1", Kind.CREATED, DeliveryState.PENDING),
    ]
    assert await _deliveries(store, "succeeded") == [(f"{revision}-2", Kind.SUCCEEDED, DeliveryState.PENDING)]
    assert await _deliveries(store, "prod") == []

    # A transaction that rolls back leaves no delivery behind.
    with pytest.raises(RuntimeError):
        async with store.write() as tx:
            await tx.append([_event("aborted", environment="production")])
            raise RuntimeError("changed my mind")
    assert await _deliveries(store, "prod") == []
    async with store.write() as tx:
        await tx.append([_event("aborted", environment="production")])
        revision = tx.revision
    assert await _deliveries(store, "prod") == [(f"{revision}-0", Kind.ABORTED, DeliveryState.PENDING)]


async def test_a_webhooks_secrets_are_kept_oldest_first_and_retired_one_by_one(store: Store) -> None:
    hook = _hook("w")
    async with store.write() as tx:
        await tx.insert_webhook(hook)
    async with store.read() as tx:
        found = await tx.get_webhook("w")
        listed, _, _ = await tx.list_webhooks(Page(size=10, after=None))
    assert found is not None and found.secrets == hook.secrets and listed[0].secrets == hook.secrets
    async with store.write() as tx:
        await tx.delete_webhook_secret("w", "first")
    async with store.read() as tx:
        found = await tx.get_webhook("w")
    assert found is not None and [s.id for s in found.secrets] == ["second"]


async def test_claims_lease_and_outcomes_settle(store: Store) -> None:
    async with store.write() as tx:
        await tx.insert_webhook(_hook("w"))
    async with store.write() as tx:
        await tx.append([_event("created")])
    async with store.read() as tx:
        due_at = await tx.next_delivery_time()
    assert due_at is not None
    now = due_at + timedelta(seconds=1)
    lease = now + timedelta(seconds=20)
    async with store.write() as tx:
        [due] = await tx.claim_deliveries(now, lease, 10)
    assert due.url == "https://8.8.8.8/" and due.secrets == ("secret", "whsec_c2Vjb25k") and due.attempts == 0
    assert '"kind":"DEPLOYMENT_EVENT_KIND_CREATED"' in due.body
    async with store.write() as tx:  # leased: nobody else gets it
        assert await tx.claim_deliveries(now + timedelta(seconds=19), lease, 10) == []
    async with store.read() as tx:
        assert await tx.next_delivery_time() == lease
    async with store.write() as tx:  # the lease ran out (its attempt never reported): due again
        [again] = await tx.claim_deliveries(lease, lease + timedelta(seconds=20), 10)
    assert again.id == due.id

    retry = now + timedelta(seconds=2)
    assert again.lease_until is not None and due.lease_until is not None
    async with store.write() as tx:
        # The first attempt outlived its lease: its late outcome is not recorded over the second's.
        await tx.settle_delivery(due.id, DeliveryState.SUCCEEDED, 204, "", now, None, due.lease_until)
        await tx.settle_delivery(
            due.id, DeliveryState.PENDING, 500, "HTTP 500", now, retry, again.lease_until
        )
    async with store.read() as tx:
        [d], _, total = await tx.list_deliveries("w", (DeliveryState.PENDING,), Page(10))
    assert (d.attempts, d.last_response_code, d.last_error, d.next_attempt_time) == (
        1,
        500,
        "HTTP 500",
        retry,
    )
    assert d.complete_time is None and total == 1
    async with store.write() as tx:
        [third] = await tx.claim_deliveries(retry, retry + timedelta(seconds=20), 10)
        assert third.lease_until is not None
        await tx.settle_delivery(due.id, DeliveryState.SUCCEEDED, 204, "", retry, None, third.lease_until)
        # Settled: a second outcome under the same lease is ignored.
        await tx.settle_delivery(due.id, DeliveryState.FAILED, 0, "late", retry, None, third.lease_until)
    async with store.read() as tx:
        [d], _, _ = await tx.list_deliveries("w", (), Page(10))
        assert await tx.next_delivery_time() is None
        assert (await tx.list_deliveries("w", (DeliveryState.PENDING,), Page(10)))[2] == 0
    assert (d.state, d.attempts, d.last_response_code, d.complete_time) == (
        DeliveryState.SUCCEEDED,
        2,
        204,
        retry,
    )

    async with store.write() as tx:
        assert await tx.forget_deliveries(retry, 10) == 0
        assert await tx.forget_deliveries(retry + timedelta(seconds=1), 10) == 1
    assert await _deliveries(store, "w") == []


async def test_deleting_a_webhook_drops_its_deliveries(store: Store) -> None:
    async with store.write() as tx:
        await tx.insert_webhook(_hook("gone"))
        await tx.insert_webhook(_hook("kept"))
    async with store.write() as tx:
        await tx.append([_event("created")])
    async with store.write() as tx:
        await tx.delete_webhook("gone")
    async with store.read() as tx:
        assert await tx.get_webhook("gone") is None
        assert [w.id for w in (await tx.list_webhooks(Page(10)))[0]] == ["kept"]
    assert await _deliveries(store, "gone") == [] and len(await _deliveries(store, "kept")) == 1


async def test_maintenance_forgets_old_deliveries_a_bounded_step_a_transaction(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction holds in memory every page it changes (SQLite's savepoint journal): a week of
    completed deliveries, each with its body, is forgotten some at a time, the oldest first."""
    from dspy_registry.server import maintenance as housekeeping
    from dspy_registry.server.domain.webhooks import DELIVERY_RETENTION
    from tests.clock import FakeClock

    async with store.write() as tx:
        await tx.insert_webhook(_hook("w"))
    async with store.write() as tx:
        await tx.append([_event("created") for _ in range(5)])
    async with store.read() as tx:
        due_at = await tx.next_delivery_time()
    assert due_at is not None
    lease = due_at + timedelta(seconds=20)
    async with store.write() as tx:
        due = await tx.claim_deliveries(due_at, lease, 10)
        for i, d in enumerate(due):
            await tx.settle_delivery(
                d.id, DeliveryState.SUCCEEDED, 204, "", due_at + timedelta(seconds=i), None, lease
            )
    async with store.write() as tx:  # the oldest first
        assert await tx.forget_deliveries(due_at + timedelta(days=1), 1) == 1
    assert len(await _deliveries(store, "w")) == 4

    left: list[int] = []  # the deliveries left after each transaction of maintenance
    write = store.write

    @asynccontextmanager
    async def counted(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async with write(*args, **kwargs) as tx:
            yield tx
        left.append(len(await _deliveries(store, "w")))

    monkeypatch.setattr(store, "write", counted)
    monkeypatch.setattr(housekeeping, "DELIVERIES_PER_STEP", 2)
    clock = FakeClock(due_at + DELIVERY_RETENTION + timedelta(days=1))
    await housekeeping.Maintenance(store, request_retention=60, clock=clock).run_once()
    assert left[-1] == 0
    assert max(before - after for before, after in zip([4, *left], left, strict=False)) == 2

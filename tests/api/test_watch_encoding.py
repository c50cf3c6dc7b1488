"""The event log through the watches' proto encoding: every kind they carry, and a kind from a newer release."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from dspy_registry.server.api.watch import encode_changes, encode_events
from dspy_registry.server.domain.deployments import Kind as DeploymentKind
from dspy_registry.server.domain.deployments import Pinned, Target
from dspy_registry.server.domain.events import DeploymentChanged, EventKind, TargetUpdated, new_event
from dspy_registry.server.domain.model import Event
from dspy_registry.server.watch import deployment_events, target_changes
from dspy_registry.v1 import deployment_pb2 as dpb

NOW = datetime(2026, 11, 27, 12, 0, 1, tzinfo=UTC)
CHANGE = DeploymentChanged(
    program="p",
    environment="production",
    version="1.1.0",
    state="IN_PROGRESS",
    current_step=2,
    weight_percent=50,
    actor="alice",
    reason="why not",
    related="deployments/d0",
)


def _stamped(e: Event, revision: int) -> Event:
    return Event(kind=e.kind, resource=e.resource, data=e.data, revision=revision, create_time=NOW)


@pytest.mark.parametrize("kind", list(DeploymentKind))
def test_every_deployment_kind_reaches_watch_events_as_itself(kind: DeploymentKind) -> None:
    event = _stamped(new_event(EventKind.of_deployment(kind), "deployments/d1", CHANGE), 42)
    response = dpb.WatchEventsResponse.FromString(encode_events(42, deployment_events([event])))
    [sent] = response.events.events
    assert dpb.DeploymentEventKind.Name(sent.kind) == f"DEPLOYMENT_EVENT_KIND_{kind.name}"
    assert (sent.id, sent.revision, sent.deployment, sent.program, sent.environment, sent.version) == (
        "42-0",
        42,
        "deployments/d1",
        "p",
        "production",
        "1.1.0",
    )
    assert (sent.state, sent.step, sent.weight_percent, sent.reason, sent.related_deployment) == (
        dpb.DEPLOYMENT_STATE_IN_PROGRESS,
        2,
        50,
        "why not",
        "deployments/d0",
    )
    assert sent.actor == "principals/alice" and sent.time.ToDatetime(tzinfo=UTC) == NOW


def test_a_target_update_reaches_watch_targets_whole() -> None:
    target = Target(
        program="p",
        environment="production",
        stable=Pinned("1.0.0", "sha256:" + "a" * 64),
        candidate=Pinned("1.1.0", "sha256:" + "b" * 64),
        candidate_weight=10,
        deployment="d1",
    )
    event = _stamped(new_event(EventKind.TARGET_UPDATED, target.resource_name, TargetUpdated.of(target)), 9)
    [read] = target_changes([event])
    assert read == Target(
        program="p",
        environment="production",
        stable=target.stable,
        candidate=target.candidate,
        candidate_weight=10,
        deployment="d1",
        revision=9,
        update_time=NOW,
    )
    [sent] = dpb.WatchTargetsResponse.FromString(encode_changes(9, [read])).changes.targets
    assert (sent.stable.version, sent.candidate.version, sent.candidate.weight_percent, sent.revision) == (
        "1.0.0",
        "1.1.0",
        10,
        9,
    )


def test_a_deployment_kind_of_a_newer_release_is_left_out_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A newer replica (a rolling upgrade) wrote a lifecycle kind this release has no wire value for:
    # the watch goes on with the events it can say, instead of sending UNSPECIFIED or failing.
    known = new_event(EventKind.DEPLOYMENT_CREATED, "deployments/d1", CHANGE)
    unknown = Event(kind="deployment.teleported", resource="deployments/d1", data=CHANGE.to_json())
    other = Event(kind="gadget.invented", resource="gadgets/g", data={})  # not a lifecycle event at all
    with caplog.at_level(logging.WARNING, logger="dspy_registry.watch"):
        extracted = deployment_events([_stamped(e, 5) for e in (unknown, known, other)])
    assert [(e.id, e.kind) for e in extracted] == [("5-1", DeploymentKind.CREATED)]
    assert "deployment.teleported" in caplog.text and "gadget" not in caplog.text
    sent = dpb.WatchEventsResponse.FromString(encode_events(5, extracted)).events.events
    assert [dpb.DeploymentEventKind.Name(e.kind) for e in sent] == ["DEPLOYMENT_EVENT_KIND_CREATED"]

"""The event log's schema: every kind has a payload type, and what is stored keeps today's strings and JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from dspy_registry.server.domain.deployments import Kind as DeploymentKind
from dspy_registry.server.domain.deployments import Pinned, Target
from dspy_registry.server.domain.events import (
    SCHEMAS,
    CheckReported,
    DeploymentChanged,
    EnvironmentChanged,
    EventKind,
    Payload,
    PrincipalChanged,
    PrincipalStatusChanged,
    ProgramVersionRegistered,
    SignatureRegistered,
    TargetUpdated,
    WebhookChanged,
    YankChanged,
    changes_access,
    changes_credentials,
    changes_grants,
    deployment_kind,
    is_deployment_kind,
    new_event,
    payload,
    target_update,
)
from dspy_registry.server.domain.model import Event

NOW = datetime(2026, 11, 27, 12, 0, 1, tzinfo=UTC)

# One payload of each type: a kind whose type has none here fails test_every_kind_round_trips.
SAMPLES: dict[type[Payload], Payload] = {
    SignatureRegistered: SignatureRegistered(signature="sig", version="1.0.0"),
    ProgramVersionRegistered: ProgramVersionRegistered(
        program="p", version="1.0.0", digest="sha256:" + "a" * 64
    ),
    YankChanged: YankChanged(program="p", version="1.0.0", reason="broken"),
    EnvironmentChanged: EnvironmentChanged(environment="staging", source="api"),
    PrincipalChanged: PrincipalChanged(principal="alice"),
    PrincipalStatusChanged: PrincipalStatusChanged(principal="alice", reason="left"),
    WebhookChanged: WebhookChanged(webhook="slack"),
    CheckReported: CheckReported(program="p", version="1.0.0", check="load_test", state="PASSED", actor="ci"),
    TargetUpdated: TargetUpdated(
        program="p",
        environment="production",
        stable=Pinned("1.0.0", "sha256:" + "a" * 64),
        candidate=Pinned("1.1.0", "sha256:" + "b" * 64),
        weight_percent=10,
        deployment="d1",
    ),
    DeploymentChanged: DeploymentChanged(
        program="p",
        environment="production",
        version="1.1.0",
        state="IN_PROGRESS",
        current_step=2,
        weight_percent=50,
        actor="controller",
        reason="step 2 of 3",
        related="deployments/d0",
    ),
}

# What the log holds today: other replicas and earlier releases read these strings.
STORED_KINDS = {
    "signature.registered",
    "program_version.registered",
    "program_version.yanked",
    "program_version.unyanked",
    "environment.created",
    "environment.updated",
    "principal.created",
    "principal.disabled",
    "principal.enabled",
    "token.created",
    "token.revoked",
    "permission.granted",
    "permission.revoked",
    "webhook.created",
    "webhook.deleted",
    "webhook.secrets_changed",
    "target.updated",
    "check.reported",
    *(f"deployment.{k.name.lower()}" for k in DeploymentKind),
}


def test_the_kinds_are_the_strings_the_log_holds() -> None:
    assert {k.value for k in EventKind} == STORED_KINDS
    stored: str = "deployment.auto_rollback"  # as a row gives it back
    assert (
        stored == EventKind.DEPLOYMENT_AUTO_ROLLBACK
        and EventKind.known(stored) is EventKind.DEPLOYMENT_AUTO_ROLLBACK
    )


@pytest.mark.parametrize("kind", list(EventKind))
def test_every_kind_round_trips(kind: EventKind) -> None:
    assert kind in SCHEMAS, f"{kind} has no payload type"
    sample = SAMPLES[SCHEMAS[kind]]
    assert type(sample).from_json(sample.to_json()) == sample
    event = new_event(kind, "things/x", sample)
    assert (event.kind, type(event.kind), event.resource) == (kind.value, str, "things/x")
    assert payload(event) == sample


def test_a_payload_of_another_kind_is_refused() -> None:
    with pytest.raises(TypeError, match="carries a PrincipalChanged"):
        new_event(EventKind.TOKEN_CREATED, "tokens/t", WebhookChanged(webhook="w"))


def test_the_json_is_what_earlier_releases_wrote() -> None:
    assert SAMPLES[TargetUpdated].to_json() == {
        "program": "p",
        "environment": "production",
        "stable": "1.0.0",
        "stable_digest": "sha256:" + "a" * 64,
        "candidate": "1.1.0",
        "candidate_digest": "sha256:" + "b" * 64,
        "weight_percent": 10,
        "deployment": "d1",
    }
    empty = TargetUpdated.of(Target(program="p", environment="staging"))
    assert empty.to_json() == {
        "program": "p",
        "environment": "staging",
        "stable": None,
        "stable_digest": None,
        "candidate": None,
        "candidate_digest": None,
        "weight_percent": 0,
        "deployment": "",
    }
    assert SAMPLES[DeploymentChanged].to_json() == {
        "program": "p",
        "environment": "production",
        "version": "1.1.0",
        "state": "IN_PROGRESS",
        "current_step": 2,
        "step": 1,  # the 0-based step in force, for a server of the previous release
        "weight_percent": 50,
        "actor": "controller",
        "reason": "step 2 of 3",
        "related": "deployments/d0",
    }
    assert PrincipalStatusChanged(principal="a", reason="r").to_json() == {"principal": "a", "reason": "r"}


def test_rows_written_before_the_optional_keys_are_read() -> None:
    old_target: dict[str, Any] = {"program": "p", "environment": "staging", "stable": "1.0.0"}
    event = Event(kind="target.updated", resource="t", data=old_target, revision=7, create_time=NOW)
    assert target_update(event) == Target(
        program="p",
        environment="staging",
        stable=Pinned("1.0.0", ""),
        candidate=None,
        candidate_weight=0,
        deployment="",
        revision=7,
        update_time=NOW,
    )
    before_current_step = {
        "program": "p",
        "environment": "production",
        "version": "1.1.0",
        "state": "IN_PROGRESS",
        "step": 0,
        "weight_percent": 10,
    }
    assert DeploymentChanged.from_json(before_current_step) == DeploymentChanged(
        program="p",
        environment="production",
        version="1.1.0",
        state="IN_PROGRESS",
        current_step=1,
        weight_percent=10,
    )
    assert WebhookChanged.from_json({"webhook": "w", "added_by_a_newer_release": 1}) == WebhookChanged(
        webhook="w"
    )
    with pytest.raises(KeyError):
        WebhookChanged.from_json({})


def test_kind_families_include_kinds_this_release_does_not_know() -> None:
    assert deployment_kind("deployment.auto_rollback") is DeploymentKind.AUTO_ROLLBACK
    assert deployment_kind("deployment.teleported") is None and is_deployment_kind("deployment.teleported")
    assert deployment_kind("target.updated") is None and not is_deployment_kind("target.updated")
    assert all(EventKind.of_deployment(k).value == f"deployment.{k.name.lower()}" for k in DeploymentKind)
    assert changes_credentials("token.expired") and not changes_credentials("permission.granted")
    assert changes_grants("permission.granted") and changes_grants("principal.disabled")
    assert not changes_access("webhook.created") and changes_access("principal.created")
    assert EventKind.known("deployment.teleported") is None
    assert payload(Event(kind="deployment.teleported", resource="deployments/d", data={})) is None
    assert target_update(Event(kind="deployment.created", resource="deployments/d", data={})) is None

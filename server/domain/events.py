"""The event log's schema: every kind of event, and the payload each kind carries.

Every mutation appends events to the log in its own transaction (`Records.append`);
the watch hubs, the webhook outbox, the controller, the notifier, the caches and
the metrics read them back. This module is the one place that says what an event
of each kind holds, so that a writer and its readers cannot drift apart:

- `EventKind` names every kind. Its values are the strings stored in the `kind`
  column (`deployment.created`, `target.updated`, ...): the stored rows and what
  other replicas read keep exactly these strings.
- One frozen payload type per shape of event data, with `to_json()` and
  `from_json()`; `SCHEMAS` gives each kind its payload type (kinds that differ
  only in what happened share one: `token.created` and `token.revoked` both name
  a principal). The JSON is the `data` column as earlier releases wrote it: a
  key optional when it was added later stays optional when read.
- `new_event` builds a log entry from a kind and its payload, and refuses a
  payload of another kind's type.

A log written by a newer release may hold kinds this one does not know. They
are not errors: `EventKind.known` answers None for them and each reader says what
it does then (the watch of deployment events skips such an event and logs it,
since this release has no wire value for it). The prefix tests
(`is_deployment_kind`, `changes_credentials`, `changes_grants`) look at the
family, not the member, so that an unknown deployment or access event still
wakes the controller or drops a cache: doing so needlessly is cheap, missing it
is not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, Self

from .deployments import Deployment, Pinned, Target, event_step, step_json
from .deployments import Kind as DeploymentKind
from .model import Event

_DEPLOYMENT = "deployment."
_CREDENTIALS = ("token.", "principal.")  # who a token says the caller is, and whether it may act
_GRANTS = ("permission.", "principal.")  # what a principal may do


class EventKind(StrEnum):
    """Every kind of event the log holds; the value is the stored string."""

    SIGNATURE_REGISTERED = "signature.registered"
    PROGRAM_VERSION_REGISTERED = "program_version.registered"
    PROGRAM_VERSION_YANKED = "program_version.yanked"
    PROGRAM_VERSION_UNYANKED = "program_version.unyanked"
    ENVIRONMENT_CREATED = "environment.created"
    ENVIRONMENT_UPDATED = "environment.updated"
    PRINCIPAL_CREATED = "principal.created"
    PRINCIPAL_DISABLED = "principal.disabled"
    PRINCIPAL_ENABLED = "principal.enabled"
    TOKEN_CREATED = "token.created"
    TOKEN_REVOKED = "token.revoked"
    PERMISSION_GRANTED = "permission.granted"
    PERMISSION_REVOKED = "permission.revoked"
    WEBHOOK_CREATED = "webhook.created"
    WEBHOOK_DELETED = "webhook.deleted"
    WEBHOOK_SECRETS_CHANGED = "webhook.secrets_changed"
    TARGET_UPDATED = "target.updated"
    CHECK_REPORTED = "check.reported"
    # One per deployments.Kind (the proto enum DeploymentEventKind): `deployment.<name in lower case>`.
    DEPLOYMENT_CREATED = "deployment.created"
    DEPLOYMENT_APPROVED = "deployment.approved"
    DEPLOYMENT_REJECTED = "deployment.rejected"
    DEPLOYMENT_STEP_ADVANCED = "deployment.step_advanced"
    DEPLOYMENT_PROMOTED = "deployment.promoted"
    DEPLOYMENT_SUCCEEDED = "deployment.succeeded"
    DEPLOYMENT_FAILED = "deployment.failed"
    DEPLOYMENT_ABORTED = "deployment.aborted"
    DEPLOYMENT_ROLLED_BACK = "deployment.rolled_back"
    DEPLOYMENT_AUTO_ROLLBACK = "deployment.auto_rollback"
    DEPLOYMENT_SUPERSEDED = "deployment.superseded"
    DEPLOYMENT_PAUSED = "deployment.paused"
    DEPLOYMENT_RESUMED = "deployment.resumed"
    DEPLOYMENT_CHECKS_PENDING = "deployment.checks_pending"
    DEPLOYMENT_CHECK_PASSED = "deployment.check_passed"

    @classmethod
    def known(cls, kind: str) -> EventKind | None:
        """The member for a stored kind; None for one this release does not know (a newer one wrote it)."""
        try:
            return cls(kind)
        except ValueError:
            return None

    @classmethod
    def of_deployment(cls, kind: DeploymentKind) -> EventKind:
        """`deployments.Kind.AUTO_ROLLBACK` -> `deployment.auto_rollback`."""
        return cls(_DEPLOYMENT + kind.name.lower())


def is_deployment_kind(kind: str) -> bool:
    """An event of a deployment's lifecycle (one this release knows or not)."""
    return kind.startswith(_DEPLOYMENT)


def deployment_kind(kind: str) -> DeploymentKind | None:
    """The lifecycle kind (the proto's DeploymentEventKind) of a stored kind; None for any other
    event, and for a deployment kind this release does not know."""
    if not is_deployment_kind(kind):
        return None
    return DeploymentKind.__members__.get(kind.removeprefix(_DEPLOYMENT).upper())


def changes_credentials(kind: str) -> bool:
    """A token or principal changed: a verified token may no longer say who the caller is."""
    return kind.startswith(_CREDENTIALS)


def changes_grants(kind: str) -> bool:
    """A permission or principal changed: what a principal may do may have changed."""
    return kind.startswith(_GRANTS)


def changes_access(kind: str) -> bool:
    return changes_credentials(kind) or changes_grants(kind)


# -- payloads ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Payload:
    """The `data` of an event. A field with a default is optional in the JSON (older rows lack it)."""

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """Raises KeyError when a required key is missing."""
        given = {f.name: data[f.name] for f in fields(cls) if f.name in data or _required(f)}
        return cls(**given)


def _required(f: Any) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


@dataclass(frozen=True, kw_only=True)
class SignatureRegistered(Payload):
    """signature.registered"""

    signature: str
    version: str


@dataclass(frozen=True, kw_only=True)
class ProgramVersionRegistered(Payload):
    """program_version.registered"""

    program: str
    version: str
    digest: str


@dataclass(frozen=True, kw_only=True)
class YankChanged(Payload):
    """program_version.yanked and program_version.unyanked (the reason given for either)."""

    program: str
    version: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class EnvironmentChanged(Payload):
    """environment.created and environment.updated; `source` is `config` (the TOML file) or `api`."""

    environment: str
    source: str


@dataclass(frozen=True, kw_only=True)
class PrincipalChanged(Payload):
    """principal.created, token.*, permission.*: the principal whose access changed (a short name)."""

    principal: str


@dataclass(frozen=True, kw_only=True)
class PrincipalStatusChanged(Payload):
    """principal.disabled and principal.enabled."""

    principal: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class WebhookChanged(Payload):
    """webhook.created, webhook.deleted and webhook.secrets_changed (one added or retired)."""

    webhook: str


@dataclass(frozen=True, kw_only=True)
class CheckReported(Payload):
    """check.reported: CI's report of one check of a program version (its state's name, and who)."""

    program: str
    version: str
    check: str
    state: str
    actor: str


@dataclass(frozen=True, kw_only=True)
class TargetUpdated(Payload):
    """target.updated: the whole target, so that a watcher needs nothing but the event log.

    In the JSON a version and its digest are two keys (`stable`, `stable_digest`), null when
    the target has none; the digests, the weight and the deployment were added over time and
    are optional when read.
    """

    program: str
    environment: str
    stable: Pinned | None
    candidate: Pinned | None
    weight_percent: int
    deployment: str

    @classmethod
    def of(cls, t: Target) -> TargetUpdated:
        return cls(
            program=t.program,
            environment=t.environment,
            stable=t.stable,
            candidate=t.candidate,
            weight_percent=t.candidate_weight,
            deployment=t.deployment,
        )

    def to_target(self, *, revision: int, update_time: datetime | None) -> Target:
        return Target(
            program=self.program,
            environment=self.environment,
            stable=self.stable,
            candidate=self.candidate,
            candidate_weight=self.weight_percent,
            deployment=self.deployment,
            revision=revision,
            update_time=update_time,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "program": self.program,
            "environment": self.environment,
            "stable": self.stable.version if self.stable else None,
            "stable_digest": self.stable.digest if self.stable else None,
            "candidate": self.candidate.version if self.candidate else None,
            "candidate_digest": self.candidate.digest if self.candidate else None,
            "weight_percent": self.weight_percent,
            "deployment": self.deployment,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            program=data["program"],
            environment=data["environment"],
            stable=_pinned(data, "stable"),
            candidate=_pinned(data, "candidate"),
            weight_percent=int(data.get("weight_percent") or 0),
            deployment=data.get("deployment") or "",
        )


def _pinned(data: Mapping[str, Any], key: str) -> Pinned | None:
    if not data.get(key):
        return None
    return Pinned(data[key], data.get(f"{key}_digest") or "")


@dataclass(frozen=True, kw_only=True)
class DeploymentChanged(Payload):
    """deployment.*: the deployment as it is after the change, and who made it why.

    `state` is a deployments.State name. The JSON holds the step twice (`deployments.step_json`:
    `current_step`, and `step` for the release before); rows written before `current_step`
    hold only `step` (`deployments.event_step` reads either). `actor`, `reason` and `related`
    (the deployment this one rolled back, was superseded by, or rolls back) came later.
    """

    program: str
    environment: str
    version: str
    state: str
    current_step: int
    weight_percent: int
    actor: str = ""
    reason: str = ""
    related: str = ""  # `deployments/<id>`, or ""

    @classmethod
    def of(cls, d: Deployment) -> DeploymentChanged:
        last = d.timeline[-1] if d.timeline else None
        related = d.rolled_back_by or d.superseded_by or d.rollback_of
        return cls(
            program=d.program,
            environment=d.environment,
            version=d.version,
            state=d.state.name,
            current_step=d.steps_applied,
            weight_percent=d.weight_percent,
            actor=last.actor if last else d.creator,
            reason=last.reason if last else d.reason,
            related=f"deployments/{related}" if related else "",
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "program": self.program,
            "environment": self.environment,
            "version": self.version,
            "state": self.state,
            **step_json(self.current_step),
            "weight_percent": self.weight_percent,
            "actor": self.actor,
            "reason": self.reason,
            "related": self.related,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            program=data["program"],
            environment=data["environment"],
            version=data["version"],
            state=data["state"],
            current_step=event_step(data),
            weight_percent=int(data["weight_percent"]),
            actor=data.get("actor", ""),
            reason=data.get("reason", ""),
            related=data.get("related", ""),
        )


SCHEMAS: Mapping[EventKind, type[Payload]] = {
    EventKind.SIGNATURE_REGISTERED: SignatureRegistered,
    EventKind.PROGRAM_VERSION_REGISTERED: ProgramVersionRegistered,
    EventKind.PROGRAM_VERSION_YANKED: YankChanged,
    EventKind.PROGRAM_VERSION_UNYANKED: YankChanged,
    EventKind.ENVIRONMENT_CREATED: EnvironmentChanged,
    EventKind.ENVIRONMENT_UPDATED: EnvironmentChanged,
    EventKind.PRINCIPAL_CREATED: PrincipalChanged,
    EventKind.PRINCIPAL_DISABLED: PrincipalStatusChanged,
    EventKind.PRINCIPAL_ENABLED: PrincipalStatusChanged,
    EventKind.TOKEN_CREATED: PrincipalChanged,
    EventKind.TOKEN_REVOKED: PrincipalChanged,
    EventKind.PERMISSION_GRANTED: PrincipalChanged,
    EventKind.PERMISSION_REVOKED: PrincipalChanged,
    EventKind.WEBHOOK_CREATED: WebhookChanged,
    EventKind.WEBHOOK_DELETED: WebhookChanged,
    EventKind.WEBHOOK_SECRETS_CHANGED: WebhookChanged,
    EventKind.TARGET_UPDATED: TargetUpdated,
    EventKind.CHECK_REPORTED: CheckReported,
    **{EventKind.of_deployment(k): DeploymentChanged for k in DeploymentKind},
}


def new_event(kind: EventKind, resource: str, payload: Payload) -> Event:
    """A log entry about `resource` (its resource name); the store stamps revision and time."""
    return new_events((kind,), resource, payload)[0]


def new_events(kinds: Sequence[EventKind], resource: str, payload: Payload) -> list[Event]:
    """`new_event` for each of `kinds`, about one resource with one payload: the entries share its
    JSON (the store then encodes it once). A deployment created, promoted and succeeded in one
    transaction, as every auto-deploy is, notes the same deployment three times."""
    for kind in kinds:
        if SCHEMAS[kind] is not type(payload):
            raise TypeError(
                f"a {kind} event carries a {SCHEMAS[kind].__name__}, not a {type(payload).__name__}"
            )
    data = payload.to_json()
    return [Event(kind=kind.value, resource=resource, data=data) for kind in kinds]


def payload(e: Event) -> Payload | None:
    """The payload of a logged event; None when its kind is one this release does not know."""
    kind = EventKind.known(e.kind)
    return None if kind is None else SCHEMAS[kind].from_json(e.data)


def target_update(e: Event) -> Target | None:
    """The target a `target.updated` event carries, at the event's revision; None for other events."""
    if e.kind != EventKind.TARGET_UPDATED:
        return None
    return TargetUpdated.from_json(e.data).to_target(revision=e.revision, update_time=e.create_time)

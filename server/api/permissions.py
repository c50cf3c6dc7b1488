"""The one table of RPC permissions: what each RPC needs, on what.

Deny by default: an RPC missing here cannot be served (the handlers refuse
to start, and tests/api/test_permissions.py walks the service descriptors).
Resources are names, read from the request before anything is looked up, so
the answer to a caller without the grant is PERMISSION_DENIED whether the
program exists or not.

    rule                     who may call
    Rule(A, f)               holders of action A on every name f(request) returns
    Rule(A, EVERYTHING)      holders of A on `*` (managing principals, tokens, grants)
    Rule(READ, filtered)     any principal; the answer holds only what it may read
    Rule(None)               any authenticated principal
    Rule(A, by_servicer)     the servicer checks A once it has looked up the resource
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from google.protobuf.message import Message

from ..domain.access import ALL, Action

Resources = Callable[[Any], list[str]]
Audited = Callable[[Any], str]

EVERYTHING: Resources = lambda _request: [ALL]  # noqa: E731
MAX_REMEMBERED = 4096  # resource names a rule keeps resolved (_Field.resolve)


def _reader(path: str) -> Callable[[Any], str]:
    """What reads the (dotted) field `path` of a request as text; made once, at import."""
    get = attrgetter(path)
    return lambda request: str(get(request))


def _segment(value: str, collection: str) -> str:
    """The {name} of `{collection}/{name}/…`, or the value itself when it is a bare name."""
    parts = value.split("/")
    if len(parts) >= 2 and parts[0] == collection:
        return parts[1]
    return value


class _Field:
    """A resource named by a (dotted) request field, in `collection`."""

    def __init__(self, path: str, collection: str) -> None:
        self.path = path
        self.collection = collection
        self.read = _reader(path)
        self.prefix = collection + "/"
        self._known: dict[str, tuple[Sequence[str], str]] = {}

    def __call__(self, request: Any) -> list[str]:
        return [_segment(self.read(request), self.collection)]

    def qualified(self, request: Any) -> str:
        """The resource name for the audit log: `programs/x/versions/1.0.0`, `signatures/s` …"""
        return self._qualify(self.read(request))

    def _qualify(self, value: str) -> str:
        return value if value.startswith(self.prefix) else self.prefix + value

    def resolve(self, request: Any) -> tuple[Sequence[str], str]:
        """`(self(request), self.qualified(request))`, remembered by the field's value: every pod
        asks for the same few names, call after call."""
        value = self.read(request)
        known = self._known.get(value)
        if known is None:
            if len(self._known) >= MAX_REMEMBERED:
                self._known.clear()  # names never seen again must not grow memory
            known = self._known[value] = ((_segment(value, self.collection),), self._qualify(value))
        return known


def _field(path: str, collection: str) -> _Field:
    return _Field(path, collection)


class _Fields:
    def __init__(self, *fields: _Field) -> None:
        self.fields = fields

    def __call__(self, request: Any) -> list[str]:
        return [name for f in self.fields for name in f(request) if name]

    def qualified(self, request: Any) -> str:
        return self.fields[0].qualified(request)


def _fields(*fields: _Field) -> _Fields:
    return _Fields(*fields)


def _target(path: str, template: str = "{}") -> Audited:
    """What a management call is about, for the audit log (its permission is on `*`)."""
    read = _reader(path)
    return lambda request: template.format(read(request))


@dataclass(frozen=True, kw_only=True)
class Rule:
    action: Action | None
    resources: Resources | None = None
    mutation: bool = False  # audited in its own transaction
    filtered: bool = False  # a list showing only what the caller may read
    by_servicer: bool = False  # the resource needs a lookup first: the servicer must authorize
    audited: Audited | None = None  # the audit log's resource, when the permission is on `*`

    def names(self, request: Message) -> list[str]:
        return self.resources(request) if self.resources is not None else []

    def audit_resource(self, request: Message, names: Sequence[str]) -> str:
        if self.audited is not None:
            return self.audited(request)
        qualified = getattr(self.resources, "qualified", None)
        if qualified is not None:
            return str(qualified(request))
        return names[0] if names else ""

    def resolver(self) -> Callable[[Message], tuple[Sequence[str], str]]:
        """`names` and `audit_resource` of a request together, for the handlers (made once per RPC)."""
        if self.audited is None and isinstance(self.resources, _Field):
            return self.resources.resolve

        def resolve(request: Message) -> tuple[Sequence[str], str]:
            names = self.names(request)
            return names, self.audit_resource(request, names)

        return resolve


READ, REGISTER, DEPLOY, ROLLBACK, APPROVE, ADMIN, CHECK = (
    Action.READ,
    Action.REGISTER,
    Action.DEPLOY,
    Action.ROLLBACK,
    Action.APPROVE,
    Action.ADMIN,
    Action.CHECK,
)
REGISTRY = "/dspy_registry.v1.RegistryService/"
DEPLOYMENT = "/dspy_registry.v1.DeploymentService/"
ACCESS = "/dspy_registry.v1.AccessService/"

RULES: dict[str, Rule] = {
    # -- RegistryService ---------------------------------------------------------------------
    REGISTRY + "RegisterSignature": Rule(
        action=REGISTER, resources=_field("signature", "signatures"), mutation=True
    ),
    REGISTRY + "GetSignature": Rule(action=READ, resources=_field("name", "signatures")),
    REGISTRY + "ListSignatures": Rule(action=READ, filtered=True),
    REGISTRY + "ListSignatureVersions": Rule(action=READ, resources=_field("parent", "signatures")),
    REGISTRY + "CheckSignatureCompatibility": Rule(
        action=READ, resources=_fields(_field("base", "signatures"), _field("target", "signatures"))
    ),
    REGISTRY + "RegisterProgram": Rule(
        action=REGISTER, resources=_field("spec.program", "programs"), mutation=True
    ),
    # A client stream: the resource comes from its first message, the header.
    REGISTRY + "UploadProgram": Rule(
        action=REGISTER, resources=_field("header.spec.program", "programs"), mutation=True
    ),
    REGISTRY + "GetProgram": Rule(action=READ, resources=_field("name", "programs")),
    REGISTRY + "GetProgramVersion": Rule(action=READ, resources=_field("name", "programs")),
    REGISTRY + "ListPrograms": Rule(action=READ, filtered=True),
    REGISTRY + "ListProgramVersions": Rule(action=READ, resources=_field("parent", "programs")),
    REGISTRY + "GetArtifact": Rule(action=READ, resources=_field("program", "programs")),
    REGISTRY + "CompareProgramVersions": Rule(
        action=READ, resources=_fields(_field("base", "programs"), _field("target", "programs"))
    ),
    REGISTRY + "GetUpgradePath": Rule(action=READ, resources=_field("program", "programs")),
    REGISTRY + "YankProgramVersion": Rule(
        action=REGISTER, resources=_field("name", "programs"), mutation=True
    ),
    # -- AccessService: managing principals, tokens and grants needs admin on `*` -------------
    ACCESS + "WhoAmI": Rule(action=None),
    ACCESS + "CreatePrincipal": Rule(
        action=ADMIN, resources=EVERYTHING, mutation=True, audited=_target("principal_id", "principals/{}")
    ),
    ACCESS + "ListPrincipals": Rule(action=ADMIN, resources=EVERYTHING),
    ACCESS + "DisablePrincipal": Rule(
        action=ADMIN, resources=EVERYTHING, mutation=True, audited=_target("name")
    ),
    ACCESS + "CreateToken": Rule(
        action=ADMIN, resources=EVERYTHING, mutation=True, audited=_target("parent")
    ),
    ACCESS + "ListTokens": Rule(action=ADMIN, resources=EVERYTHING),
    ACCESS + "RevokeToken": Rule(action=ADMIN, resources=EVERYTHING, mutation=True, audited=_target("name")),
    ACCESS + "GrantPermission": Rule(
        action=ADMIN, resources=EVERYTHING, mutation=True, audited=_target("principal")
    ),
    ACCESS + "RevokePermission": Rule(
        action=ADMIN, resources=EVERYTHING, mutation=True, audited=_target("name")
    ),
    ACCESS + "ListPermissions": Rule(action=ADMIN, resources=EVERYTHING),
    # About oneself: anyone; about another principal: admin (checked by the servicer).
    ACCESS + "CheckPermission": Rule(action=None),
    ACCESS + "ListAuditEvents": Rule(action=ADMIN, resources=EVERYTHING),
    # -- DeploymentService -------------------------------------------------------------------
    DEPLOYMENT + "ListEnvironments": Rule(action=None),
    DEPLOYMENT + "GetEnvironment": Rule(action=None),
    DEPLOYMENT + "UpdateEnvironment": Rule(
        action=ADMIN,
        resources=EVERYTHING,
        mutation=True,
        audited=_target("environment.name", "environments/{}"),
    ),
    DEPLOYMENT + "CreateDeployment": Rule(
        action=DEPLOY, resources=_field("program", "programs"), mutation=True
    ),
    DEPLOYMENT + "GetDeployment": Rule(action=READ, by_servicer=True),
    DEPLOYMENT + "ListDeployments": Rule(action=READ, filtered=True),
    DEPLOYMENT + "ApproveDeployment": Rule(action=APPROVE, by_servicer=True, mutation=True),
    DEPLOYMENT + "PromoteDeployment": Rule(action=DEPLOY, by_servicer=True, mutation=True),
    DEPLOYMENT + "AbortDeployment": Rule(action=DEPLOY, by_servicer=True, mutation=True),
    DEPLOYMENT + "RollbackDeployment": Rule(action=ROLLBACK, by_servicer=True, mutation=True),
    DEPLOYMENT + "GetDeploymentStatus": Rule(action=READ, resources=_field("program", "programs")),
    # Read on every selected program (globs too); no selectors: all the caller may read.
    DEPLOYMENT + "WatchTargets": Rule(action=READ, by_servicer=True),
    # Like WatchTargets: read on every selected program; no selectors, all the caller may read.
    DEPLOYMENT + "WatchEvents": Rule(action=READ, by_servicer=True),
    # Read on each reported program. Telemetry, not a change to the registry: a heartbeat is not audited.
    DEPLOYMENT + "ReportSidecarStatus": Rule(action=READ, by_servicer=True),
    # Measurements roll deployments back (or let them pass): reporting them takes the right to roll
    # back each program reported. Telemetry, not audited, as sidecar reports are not.
    DEPLOYMENT + "ReportMetrics": Rule(action=ROLLBACK, by_servicer=True),
    # Audited by name: a URL can carry a secret of its own (a chat service's incoming-webhook path).
    DEPLOYMENT + "CreateWebhook": Rule(
        action=ADMIN, resources=EVERYTHING, mutation=True, audited=_target("webhook_id", "webhooks/{}")
    ),
    DEPLOYMENT + "ListWebhooks": Rule(action=ADMIN, resources=EVERYTHING),
    DEPLOYMENT + "DeleteWebhook": Rule(
        action=ADMIN, resources=EVERYTHING, mutation=True, audited=_target("name")
    ),
    DEPLOYMENT + "ListWebhookDeliveries": Rule(action=ADMIN, resources=EVERYTHING),
    # Audited by the webhook's name, never the secret.
    DEPLOYMENT + "AddWebhookSecret": Rule(
        action=ADMIN, resources=EVERYTHING, mutation=True, audited=_target("parent")
    ),
    DEPLOYMENT + "RetireWebhookSecret": Rule(
        action=ADMIN, resources=EVERYTHING, mutation=True, audited=_target("name")
    ),
    # CI's report gates deployments (required checks): its own action, on the program.
    DEPLOYMENT + "ReportVersionCheck": Rule(
        action=CHECK, resources=_field("program_version", "programs"), mutation=True
    ),
}

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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from ..domain.access import ALL, Action

Resources = Callable[[Any], list[str]]

EVERYTHING: Resources = lambda _request: [ALL]  # noqa: E731


@dataclass(frozen=True)
class Rule:
    action: Action | None
    resources: Resources | None = None
    mutation: bool = False  # audited in its own transaction
    filtered: bool = False  # a list showing only what the caller may read
    by_servicer: bool = False  # the resource needs a lookup first

    def names(self, request: Message) -> list[str]:
        return self.resources(request) if self.resources is not None else []


def _segment(value: str, collection: str) -> str:
    """The {name} of `{collection}/{name}/…`, or the value itself when it is a bare name."""
    parts = value.split("/")
    if len(parts) >= 2 and parts[0] == collection:
        return parts[1]
    return value


def _field(path: str, collection: str) -> Resources:
    """A resource read from a (dotted) request field."""

    def read(request: Any) -> list[str]:
        value: Any = request
        for attribute in path.split("."):
            value = getattr(value, attribute)
        return [_segment(str(value), collection)]

    return read


def _fields(*readers: Resources) -> Resources:
    def read(request: Any) -> list[str]:
        return [name for reader in readers for name in reader(request) if name]

    return read


def _selectors(request: Any) -> list[str]:
    return [s.program for s in request.selectors] or [ALL]


READ, REGISTER, DEPLOY, ROLLBACK, APPROVE, ADMIN = (
    Action.READ,
    Action.REGISTER,
    Action.DEPLOY,
    Action.ROLLBACK,
    Action.APPROVE,
    Action.ADMIN,
)
REGISTRY = "/dspy_registry.v1.RegistryService/"
DEPLOYMENT = "/dspy_registry.v1.DeploymentService/"
ACCESS = "/dspy_registry.v1.AccessService/"

RULES: dict[str, Rule] = {
    # -- RegistryService ---------------------------------------------------------------------
    REGISTRY + "RegisterSignature": Rule(REGISTER, _field("signature", "signatures"), mutation=True),
    REGISTRY + "GetSignature": Rule(READ, _field("name", "signatures")),
    REGISTRY + "ListSignatures": Rule(READ, filtered=True),
    REGISTRY + "ListSignatureVersions": Rule(READ, _field("parent", "signatures")),
    REGISTRY + "CheckSignatureCompatibility": Rule(
        READ, _fields(_field("base", "signatures"), _field("target", "signatures"))
    ),
    REGISTRY + "RegisterProgram": Rule(REGISTER, _field("spec.program", "programs"), mutation=True),
    # A client stream: the resource comes from its first message, the header.
    REGISTRY + "UploadProgram": Rule(REGISTER, _field("header.spec.program", "programs"), mutation=True),
    REGISTRY + "GetProgram": Rule(READ, _field("name", "programs")),
    REGISTRY + "GetProgramVersion": Rule(READ, _field("name", "programs")),
    REGISTRY + "ListPrograms": Rule(READ, filtered=True),
    REGISTRY + "ListProgramVersions": Rule(READ, _field("parent", "programs")),
    REGISTRY + "GetArtifact": Rule(READ, _field("program", "programs")),
    REGISTRY + "CompareProgramVersions": Rule(
        READ, _fields(_field("base", "programs"), _field("target", "programs"))
    ),
    REGISTRY + "GetUpgradePath": Rule(READ, _field("program", "programs")),
    REGISTRY + "YankProgramVersion": Rule(REGISTER, _field("name", "programs"), mutation=True),
    # -- AccessService: managing principals, tokens and grants needs admin on `*` -------------
    ACCESS + "WhoAmI": Rule(None),
    ACCESS + "CreatePrincipal": Rule(ADMIN, EVERYTHING, mutation=True),
    ACCESS + "ListPrincipals": Rule(ADMIN, EVERYTHING),
    ACCESS + "DisablePrincipal": Rule(ADMIN, EVERYTHING, mutation=True),
    ACCESS + "CreateToken": Rule(ADMIN, EVERYTHING, mutation=True),
    ACCESS + "ListTokens": Rule(ADMIN, EVERYTHING),
    ACCESS + "RevokeToken": Rule(ADMIN, EVERYTHING, mutation=True),
    ACCESS + "GrantPermission": Rule(ADMIN, EVERYTHING, mutation=True),
    ACCESS + "RevokePermission": Rule(ADMIN, EVERYTHING, mutation=True),
    ACCESS + "ListPermissions": Rule(ADMIN, EVERYTHING),
    # About oneself: anyone; about another principal: admin (checked by the servicer).
    ACCESS + "CheckPermission": Rule(None),
    ACCESS + "ListAuditEvents": Rule(ADMIN, EVERYTHING),
    # -- DeploymentService (its RPCs answer UNIMPLEMENTED until the deployments issue) ----------
    DEPLOYMENT + "ListEnvironments": Rule(None),
    DEPLOYMENT + "GetEnvironment": Rule(None),
    DEPLOYMENT + "UpdateEnvironment": Rule(ADMIN, EVERYTHING, mutation=True),
    DEPLOYMENT + "CreateDeployment": Rule(DEPLOY, _field("program", "programs"), mutation=True),
    DEPLOYMENT + "GetDeployment": Rule(READ, by_servicer=True),
    DEPLOYMENT + "ListDeployments": Rule(READ, filtered=True),
    DEPLOYMENT + "ApproveDeployment": Rule(APPROVE, by_servicer=True, mutation=True),
    DEPLOYMENT + "PromoteDeployment": Rule(DEPLOY, by_servicer=True, mutation=True),
    DEPLOYMENT + "AbortDeployment": Rule(DEPLOY, by_servicer=True, mutation=True),
    DEPLOYMENT + "RollbackDeployment": Rule(ROLLBACK, by_servicer=True, mutation=True),
    DEPLOYMENT + "GetDeploymentStatus": Rule(READ, _field("program", "programs")),
    DEPLOYMENT + "WatchTargets": Rule(READ, _selectors),
    DEPLOYMENT + "WatchEvents": Rule(READ, filtered=True),
    DEPLOYMENT + "ReportSidecarStatus": Rule(READ, by_servicer=True, mutation=True),
    DEPLOYMENT + "ReportMetrics": Rule(READ, by_servicer=True, mutation=True),
    DEPLOYMENT + "CreateWebhook": Rule(ADMIN, EVERYTHING, mutation=True),
    DEPLOYMENT + "ListWebhooks": Rule(ADMIN, EVERYTHING),
    DEPLOYMENT + "DeleteWebhook": Rule(ADMIN, EVERYTHING, mutation=True),
    DEPLOYMENT + "ListWebhookDeliveries": Rule(ADMIN, EVERYTHING),
}

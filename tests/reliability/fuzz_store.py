"""The store side of test_fuzz_grpc.py: what the fuzzed calls name (set up first, over the API),
and snapshots of what matters in the store, to compare before and after a phase."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc
from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import access_pb2_grpc as apb_grpc
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as rpb
from dspy_registry.v1 import registry_pb2_grpc as rpb_grpc
from tests.eventually import until
from tests.factories import dspy_state, spec_proto
from tests.reliability.conftest import Tally
from tests.reliability.fuzz import Hostile, rpcs, seed

CALL_SECONDS = 30.0  # an answer later than this is a hang
SENTINEL = "sentinel"  # the program, signature, principal and webhook no fuzzed call may change


# -- names a passed write accounts for --------------------------------------------------------


def strings(message: Message) -> Iterator[str]:
    """Every string in `message`, map keys and nested messages included."""
    for f, value in message.ListFields():
        items = list(value.items()) if _is_map(f) else value if f.is_repeated else [value]
        for item in items:
            for part in item if isinstance(item, tuple) else (item,):
                if isinstance(part, str):
                    yield part
                elif isinstance(part, Message):
                    yield from strings(part)


def _is_map(f: FieldDescriptor) -> bool:
    return f.message_type is not None and f.message_type.GetOptions().map_entry


def named(h: Hostile, owners: dict[str, str]) -> set[str]:
    """The names a request's strings carry: each string, its path segments, and the owner of a
    server-assigned name (deployments/x belongs to its program, permissions/y to its principal)."""
    out: set[str] = set()
    for raw in h.messages:
        message = h.rpc.request_class()()
        try:
            message.ParseFromString(raw)
        except DecodeError:
            continue
        for s in strings(message):
            out |= {s, *s.split("/")}
            if s in owners:
                out.add(owners[s])
    return out


# -- the store, as a snapshot -----------------------------------------------------------------


@dataclass
class Snapshot:
    groups: dict[tuple[str, str], str]  # (kind, name) -> everything about it, as text
    owners: dict[str, str]  # server-assigned names -> the name of the group they belong to
    revision: int

    def changed(self, other: Snapshot) -> list[tuple[str, str]]:
        keys = self.groups.keys() | other.groups.keys()
        return sorted(k for k in keys if self.groups.get(k) != other.groups.get(k))

    def diff(self, other: Snapshot, keys: list[tuple[str, str]]) -> str:
        out = []
        for key in keys[:5]:
            before, after = self.groups.get(key, "(absent)"), other.groups.get(key, "(absent)")
            out.append(f"{key}:\n  before: {before[:1500]}\n  after:  {after[:1500]}")
        return "\n".join(out)


class Admin:
    """The bootstrap admin's stubs, for the set-up and the snapshots."""

    def __init__(self, channel: grpc.aio.Channel, token: str, tally: Tally) -> None:
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.registry = rpb_grpc.RegistryServiceStub(channel)
        self.deployments = dpb_grpc.DeploymentServiceStub(channel)
        self.access = apb_grpc.AccessServiceStub(channel)
        self.tally = tally

    async def __call__(self, method: Callable[..., Awaitable[Any]], request: Message) -> Any:
        self.tally.operations += 1
        return await method(request, metadata=self.metadata, timeout=CALL_SECONDS)

    async def pages(self, method: Callable[..., Awaitable[Any]], request: Any, items: str) -> list[Any]:
        out: list[Any] = []
        request.page_size = 1000
        while True:
            page = await self(method, request)
            out += list(getattr(page, items))
            if not page.next_page_token:
                return out
            request.page_token = page.next_page_token

    async def snapshot(self) -> Snapshot:
        groups: dict[tuple[str, str], str] = {}
        owners: dict[str, str] = {}

        def text(*messages: Message) -> str:
            return "\n".join(text_format.MessageToString(m, as_one_line=True) for m in messages)

        environments = await self.pages(
            self.deployments.ListEnvironments, dpb.ListEnvironmentsRequest(), "environments"
        )
        for e in environments:
            groups[("environments", e.name.split("/")[-1])] = text(e)
        revision = 0
        for p in await self.pages(self.registry.ListPrograms, rpb.ListProgramsRequest(), "programs"):
            name = p.name.split("/")[-1]
            versions = await self.pages(
                self.registry.ListProgramVersions,
                rpb.ListProgramVersionsRequest(parent=p.name),
                "program_versions",
            )
            deployments = await self.pages(
                self.deployments.ListDeployments, dpb.ListDeploymentsRequest(program=name), "deployments"
            )
            targets = []
            for e in environments:
                try:
                    status = await self(
                        self.deployments.GetDeploymentStatus,
                        dpb.GetDeploymentStatusRequest(program=name, environment=e.name.split("/")[-1]),
                    )
                except grpc.aio.AioRpcError as err:
                    if err.code() != grpc.StatusCode.NOT_FOUND:  # never deployed there
                        raise
                    continue
                targets.append(status.target)
                revision = max(revision, status.revision)
            groups[("programs", name)] = text(p, *versions, *deployments, *targets)
            owners.update({d.name: name for d in deployments})
        for s in await self.pages(self.registry.ListSignatures, rpb.ListSignaturesRequest(), "signatures"):
            versions = await self.pages(
                self.registry.ListSignatureVersions,
                rpb.ListSignatureVersionsRequest(parent=s.name),
                "signature_versions",
            )
            groups[("signatures", s.name.split("/")[-1])] = text(s, *versions)
        principals = await self.pages(
            self.access.ListPrincipals, apb.ListPrincipalsRequest(include_disabled=True), "principals"
        )
        for principal in principals:
            name = principal.name.split("/")[-1]
            tokens = await self.pages(
                self.access.ListTokens,
                apb.ListTokensRequest(parent=principal.name, include_inactive=True),
                "tokens",
            )
            for t in tokens:
                t.ClearField("last_use_time")  # every authenticated call moves it
            grants = await self.pages(
                self.access.ListPermissions,
                apb.ListPermissionsRequest(principal=principal.name),
                "permissions",
            )
            groups[("principals", name)] = text(principal, *tokens, *grants)
            owners.update({g.name: name for g in grants})
        for w in await self.pages(self.deployments.ListWebhooks, dpb.ListWebhooksRequest(), "webhooks"):
            groups[("webhooks", w.name.split("/")[-1])] = text(w)
        return Snapshot(groups, owners, revision)

    async def quiet_snapshot(self) -> Snapshot:
        """A snapshot once two in a row agree: what the controller was still doing is done."""
        last = await self.snapshot()
        latest = last

        async def settled() -> bool:
            nonlocal last, latest
            last, latest = latest, await self.snapshot()
            return last.groups == latest.groups and last.revision == latest.revision

        await until(settled, "the store stopped changing", seconds=60)
        return latest


# -- the set-up -------------------------------------------------------------------------------


@dataclass
class Setup:
    names: dict[str, dict[str, str]]  # seed names for the admin's and the scoped principal's calls
    tokens: dict[str, str]  # principal -> bearer token


async def set_up(admin: Admin) -> Setup:
    """Signatures, programs, environments, deployments, principals, tokens, grants and webhooks
    for the seeds to name; the same for SENTINEL, which nothing names."""
    a = admin
    for signature, version in (("sig", "1.0.0"), ("sig", "1.1.0"), (SENTINEL, "1.0.0")):
        await a(
            a.registry.RegisterSignature,
            rpb.RegisterSignatureRequest(signature=signature, version=version, spec=spec_proto()),
        )
    for webhook in ("fuzz-hook", SENTINEL):  # before the deployments, so that they are delivered
        created = await a(
            a.deployments.CreateWebhook,
            dpb.CreateWebhookRequest(
                webhook_id=webhook, webhook=dpb.Webhook(url=f"http://127.0.0.1:9/{webhook}", secret="s")
            ),
        )
        if webhook == "fuzz-hook":  # a second secret, so that the first may be retired
            first_secret = created.webhook.secrets[0].name
            await a(
                a.deployments.AddWebhookSecret,
                dpb.AddWebhookSecretRequest(parent="webhooks/fuzz-hook", secret="second"),
            )
    policies = {
        "fuzz-env": dpb.EnvironmentPolicy(rollback_enabled=True),
        "fuzz-gate": dpb.EnvironmentPolicy(
            approval_required=True, required_approvals=1, rollback_enabled=True
        ),
        "fuzz-policy": dpb.EnvironmentPolicy(),
    }
    for environment, policy in policies.items():
        policy.default_strategy.strategy = dpb.STRATEGY_REPLACE
        await a(
            a.deployments.UpdateEnvironment,
            dpb.UpdateEnvironmentRequest(
                environment=dpb.Environment(name=f"environments/{environment}", policy=policy),
                allow_missing=True,
            ),
        )
    names: dict[str, dict[str, str]] = {}
    for program in ("fuzzed", "sentiment", SENTINEL):
        digest = ""
        for version in ("1.0.0", "1.1.0"):
            spec = rpb.ProgramVersionSpec(
                program=program,
                version=version,
                signature="signatures/sig/versions/1.0.0",
                labels={"team": "ml"},
            )
            registered = await a(
                a.registry.RegisterProgram,
                rpb.RegisterProgramRequest(spec=spec, artifact=dspy_state(version)),
            )
            digest = digest or registered.program_version.artifact.digest
        deployment = ""
        for version in ("1.0.0", "1.1.0"):
            created = await a(
                a.deployments.CreateDeployment,
                dpb.CreateDeploymentRequest(
                    program=program, version=version, environment="fuzz-env", reason="set-up", supersede=True
                ),
            )
            deployment = created.deployment.name
            await until(partial(_succeeded, admin, deployment), f"{deployment} succeeded", seconds=30)
        pending = await a(
            a.deployments.CreateDeployment,
            dpb.CreateDeploymentRequest(
                program=program, version="1.0.0", environment="fuzz-gate", reason="set-up"
            ),
        )
        names[program] = {
            "program": program,
            "version": "1.0.0",
            "version2": "1.1.0",
            "digest": digest,
            "signature": "sig",
            "environment": "fuzz-env",
            "gate": "fuzz-gate",
            "policy": "fuzz-policy",
            "deployment": deployment,
            "pending": pending.deployment.name,
            "webhook": "fuzz-hook",
            "webhook_secret": first_secret,
            "team": "fuzz",
        }
    tokens: dict[str, str] = {}
    grants = {
        "reader": [(apb.ACTION_READ, "*")],
        "scoped": [(apb.ACTION_READ, "*")]
        + [
            (action, "sentiment")
            for action in (apb.ACTION_REGISTER, apb.ACTION_DEPLOY, apb.ACTION_ROLLBACK, apb.ACTION_APPROVE)
        ],
        "fuzz-target": [(apb.ACTION_READ, "fuzzed"), (apb.ACTION_READ, "fuzzed_*")],
        SENTINEL: [(apb.ACTION_READ, SENTINEL)],
    }
    for principal, granted in grants.items():
        await a(
            a.access.CreatePrincipal,
            apb.CreatePrincipalRequest(
                principal_id=principal,
                principal=apb.Principal(type=apb.PRINCIPAL_TYPE_SERVICE_ACCOUNT, team="fuzz"),
            ),
        )
        permission = ""
        for action, resource in granted:
            grant = await a(
                a.access.GrantPermission,
                apb.GrantPermissionRequest(
                    principal=f"principals/{principal}", action=action, resource=resource
                ),
            )
            permission = grant.permission.name
        for _ in range(2):  # two, for ListTokens to have a second page
            created_token = await a(
                a.access.CreateToken, apb.CreateTokenRequest(parent=f"principals/{principal}")
            )
        tokens[principal] = created_token.secret
        if principal == "fuzz-target":
            for seed_names in names.values():
                seed_names.update(principal=principal, token=created_token.token.name, permission=permission)
    return Setup(names, tokens)


LISTS = [rpc for rpc in rpcs() if "page_token" in rpc.method.input_type.fields_by_name]


async def page_tokens(channel: grpc.aio.Channel, admin: Admin, names: dict[str, str]) -> dict[str, str]:
    """A real next_page_token for each List RPC's seed query, asked for one item a page."""
    tokens: dict[str, str] = {}

    async def each_list_has_one() -> bool:
        for rpc in LISTS:
            request: Any = rpc.request_class().FromString(seed(rpc, names)[0])
            request.page_size = 1
            call = channel.unary_unary(rpc.path, request_serializer=None, response_deserializer=None)
            admin.tally.operations += 1
            answer = await call(request.SerializeToString(), metadata=admin.metadata, timeout=CALL_SECONDS)
            token: str = rpc.response_class().FromString(answer).next_page_token  # type: ignore[attr-defined]
            if token:
                tokens[rpc.name] = token
        return len(tokens) == len(LISTS)

    # Webhook deliveries are queued as the notifier gets to the events: they may take a moment.
    await until(each_list_has_one, "a second page of each List RPC's seed query", seconds=30)
    return tokens


async def _succeeded(admin: Admin, name: str) -> bool:
    found = await admin(admin.deployments.GetDeployment, dpb.GetDeploymentRequest(name=name))
    return bool(found.deployment.state == dpb.DEPLOYMENT_STATE_SUCCEEDED)

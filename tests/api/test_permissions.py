"""Authorization, from the service descriptors: every RPC × every kind of caller, on both backends.

For each RPC the expected answer follows from its rule in
server/api/permissions.py, never from the program existing or not.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from dspy_registry.server.api.permissions import EVERYTHING, RULES, Rule
from dspy_registry.server.app import SERVICES
from dspy_registry.server.domain.access import Action
from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import access_pb2_grpc as apb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from tests.api.conftest import Running, register_signature
from tests.calls import principal_token
from tests.factories import dspy_state, spec_proto

EXISTING, MISSING = "prog_a", "prog_missing"
SIGNATURE = "prog_a"  # signatures follow the same rule, on their own names


def test_every_rpc_has_exactly_one_rule() -> None:
    rpcs = {f"/{s.full_name}/{m.name}" for s in SERVICES.values() for m in s.methods}
    assert rpcs - RULES.keys() == set(), "RPCs without a rule would be refused at start-up"
    assert RULES.keys() - rpcs == set(), "rules for RPCs that do not exist"


def _request(method: str, program: str) -> Message:
    """A well-formed request of `method` about `program` (and the signature of the same name)."""
    service, name = method.strip("/").split("/")
    descriptor = SERVICES[service].methods_by_name[name]
    message: Any = GetMessageClass(descriptor.input_type)()
    version = f"programs/{program}/versions/1.0.0"
    fields = {
        "RegisterSignature": {"signature": program, "version": "9.0.0"},
        "GetSignature": {"name": f"signatures/{program}"},
        "ListSignatureVersions": {"parent": f"signatures/{program}"},
        "CheckSignatureCompatibility": {"base": f"signatures/{program}", "target": f"signatures/{program}"},
        "GetProgram": {"name": f"programs/{program}"},
        "GetProgramVersion": {"name": version},
        "ListProgramVersions": {"parent": f"programs/{program}"},
        "GetArtifact": {"program": f"programs/{program}", "digest": "sha256:" + "0" * 64},
        "CompareProgramVersions": {"base": version, "target": version},
        "GetUpgradePath": {"program": f"programs/{program}", "from_version": "1.0.0", "to_version": "1.0.0"},
        "YankProgramVersion": {"name": version, "reason": "matrix"},
        "CreateDeployment": {"program": program, "version": "1.0.0", "environment": "staging"},
        "GetDeploymentStatus": {"program": program, "environment": "staging"},
        "ReportVersionCheck": {"program_version": version, "check": "load_test"},
    }.get(name, {})
    for key, value in fields.items():
        setattr(message, key, value)
    if name == "RegisterSignature":
        message.spec.CopyFrom(spec_proto())
    if name == "RegisterProgram":
        message.spec.program = program
        message.spec.version = "9.0.0"
        message.spec.signature = f"signatures/{SIGNATURE}/versions/1.0.0"
        message.artifact = dspy_state()
    if name == "ReportVersionCheck":
        message.state = 1  # CHECK_STATE_PASSED
    if name in ("WatchTargets", "WatchEvents"):
        message.selectors.add(program=program)
    if name == "UploadProgram":
        message.header.spec.program = program
    return message  # type: ignore[no-any-return]


async def _call(channel: grpc.aio.Channel, method: str, request: Message) -> grpc.StatusCode:
    service, name = method.strip("/").split("/")
    descriptor = SERVICES[service].methods_by_name[name]
    response: Any = GetMessageClass(descriptor.output_type)
    payload = request.SerializeToString()
    try:
        if descriptor.server_streaming:
            call = channel.unary_stream(method, None, response.FromString)(payload, timeout=10)
            await call.read()
        elif descriptor.client_streaming:

            async def stream() -> AsyncIterator[bytes]:
                yield payload

            await channel.stream_unary(method, None, response.FromString)(stream(), timeout=10)
        else:
            await channel.unary_unary(method, None, response.FromString)(payload, timeout=10)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


@dataclass(frozen=True, kw_only=True)
class Caller:
    label: str
    token: str | None
    # given the RPC's rule, is this caller let through?
    admitted: Callable[[Rule], bool]
    refusal: grpc.StatusCode = grpc.StatusCode.PERMISSION_DENIED


async def _principal(
    running: Running, admin: apb_grpc.AccessServiceStub, name: str, grants: list[tuple[int, str]]
) -> str:
    return await principal_token(admin, name, grants)


def _authenticated(_: Rule) -> bool:
    return True


def _holds(action: Action, on: str) -> Callable[[Rule], bool]:
    """Admitted when the rule needs `action` and `on` covers what it needs (or needs nothing)."""

    def check(rule: Rule) -> bool:
        if rule.action is None or rule.filtered or rule.by_servicer:
            return True
        if rule.resources is EVERYTHING:
            return on == "*" and action in (rule.action, Action.ADMIN)
        return on in ("*", EXISTING) and action in (rule.action, Action.ADMIN)

    return check


async def _callers(running: Running) -> list[Caller]:
    admin = apb_grpc.AccessServiceStub(running.channel)
    callers = [
        Caller(
            label="no token", token=None, admitted=lambda _: False, refusal=grpc.StatusCode.UNAUTHENTICATED
        ),
        Caller(
            label="malformed token",
            token="not-a-token",
            admitted=lambda _: False,
            refusal=grpc.StatusCode.UNAUTHENTICATED,
        ),
        Caller(
            label="unknown token",
            token="dspyr_000000000000_" + "A" * 43,
            admitted=lambda _: False,
            refusal=grpc.StatusCode.UNAUTHENTICATED,
        ),
    ]
    revoked = await admin.CreateToken(apb.CreateTokenRequest(parent="principals/admin"))
    await admin.RevokeToken(apb.RevokeTokenRequest(name=revoked.token.name))
    callers.append(
        Caller(
            label="revoked token",
            token=revoked.secret,
            admitted=lambda _: False,
            refusal=grpc.StatusCode.UNAUTHENTICATED,
        )
    )
    expiring = await admin.CreateToken(apb.CreateTokenRequest(parent="principals/admin", ttl=_seconds(1)))
    disabled = await _principal(running, admin, "disabled_one", [(apb.ACTION_ADMIN, "*")])
    await admin.DisablePrincipal(apb.DisablePrincipalRequest(name="principals/disabled_one", reason="left"))
    callers.append(
        Caller(
            label="disabled principal",
            token=disabled,
            admitted=lambda _: False,
            refusal=grpc.StatusCode.UNAUTHENTICATED,
        )
    )
    callers.append(
        Caller(
            label="no grant",
            token=await _principal(running, admin, "nogrant", []),
            admitted=_authenticated_only,
        )
    )
    for action in Action:
        label = action.name.lower()
        exact = await _principal(
            running, admin, f"exact_{label}", [(int(action), EXISTING), (int(action), MISSING)]
        )
        callers.append(
            Caller(label=f"{label} on the program", token=exact, admitted=_holds(action, EXISTING))
        )
        other = await _principal(running, admin, f"other_{label}", [(int(action), "another_*")])
        callers.append(
            Caller(label=f"{label} on another program", token=other, admitted=_holds(action, "another"))
        )
    callers.append(Caller(label="admin on *", token=running.admin_token, admitted=_holds(Action.ADMIN, "*")))
    await asyncio.sleep(1.1)  # the expiring token is expired now
    callers.append(
        Caller(
            label="expired token",
            token=expiring.secret,
            admitted=lambda _: False,
            refusal=grpc.StatusCode.UNAUTHENTICATED,
        )
    )
    return callers


def _effective(method: str, rule: Rule) -> Rule:
    """Rules the servicer applies itself, as the matrix's requests meet them."""
    if method.endswith(("/WatchTargets", "/WatchEvents")):  # read on the selected program
        return Rule(action=Action.READ, resources=lambda request: [request.selectors[0].program])
    return rule


def _authenticated_only(rule: Rule) -> bool:
    return rule.action is None or rule.filtered or rule.by_servicer


def _seconds(n: int) -> Any:
    from google.protobuf import duration_pb2

    return duration_pb2.Duration(seconds=n)


async def test_the_authorization_matrix(server: Running) -> None:
    await register_signature(server.registry, name=SIGNATURE)
    await server.registry.RegisterProgram(
        pb.RegisterProgramRequest(
            spec=pb.ProgramVersionSpec(
                program=EXISTING, version="1.0.0", signature=f"signatures/{SIGNATURE}/versions/1.0.0"
            ),
            artifact=dspy_state(),
        )
    )
    callers = await _callers(server)
    wrong: list[str] = []
    for caller in callers:
        channel = server.channel_for(caller.token)
        try:
            for method, declared in RULES.items():
                rule = _effective(method, declared)
                for program in (EXISTING, MISSING):
                    code = await _call(channel, method, _request(method, program))
                    if caller.admitted(rule):
                        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                            wrong.append(f"{caller.label}: {method} on {program} refused with {code.name}")
                    elif code != caller.refusal:
                        expected = caller.refusal.name
                        wrong.append(
                            f"{caller.label}: {method} on {program} gave {code.name}, not {expected}"
                        )
        finally:
            await channel.close(None)
    assert wrong == []
    assert len(callers) == 22 and len(RULES) == 49  # two callers per action (seven, with check)


async def test_lists_show_and_count_only_what_the_caller_may_read(server: Running) -> None:
    admin = apb_grpc.AccessServiceStub(server.channel)
    for name in ("sentiment_a", "sentiment_b", "ranker"):
        await register_signature(server.registry, name=name)
        await server.registry.RegisterProgram(
            pb.RegisterProgramRequest(
                spec=pb.ProgramVersionSpec(
                    program=name, version="1.0.0", signature=f"signatures/{name}/versions/1.0.0"
                ),
                artifact=dspy_state(),
            )
        )
    reader = await _principal(server, admin, "reader", [(apb.ACTION_READ, "sentiment_*")])
    channel = server.channel_for(reader)
    try:
        from dspy_registry.v1 import registry_pb2_grpc as pb_grpc

        registry = pb_grpc.RegistryServiceStub(channel)
        programs = await registry.ListPrograms(pb.ListProgramsRequest(page_size=1))
        assert [p.name for p in programs.programs] == ["programs/sentiment_a"] and programs.total_size == 2
        signatures = await registry.ListSignatures(pb.ListSignaturesRequest())
        assert [s.name for s in signatures.signatures] == ["signatures/sentiment_a", "signatures/sentiment_b"]
        everything = await server.registry.ListPrograms(pb.ListProgramsRequest())
        assert everything.total_size == 3
    finally:
        await channel.close(None)

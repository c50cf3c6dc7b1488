"""Principals, tokens, grants, the audit log and the bootstrap admin, over a real channel."""

from __future__ import annotations

import asyncio
import logging
import stat
from pathlib import Path

import grpc
import pytest

from dspy_registry.server.api.permissions import RULES
from dspy_registry.server.domain.access import Action
from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import access_pb2_grpc as apb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc
from tests.api.conftest import Running, register_signature, start
from tests.calls import code_of
from tests.factories import dspy_state

REGISTRY = "/dspy_registry.v1.RegistryService/"


def test_the_seeds_actions_guard_the_rpcs_they_name() -> None:
    """A few rules pinned in words, so that the table cannot drift silently."""
    assert RULES[REGISTRY + "GetProgramVersion"].action is Action.READ
    assert RULES[REGISTRY + "RegisterProgram"].action is Action.REGISTER
    assert RULES[REGISTRY + "RegisterProgram"].mutation
    assert RULES["/dspy_registry.v1.DeploymentService/CreateDeployment"].action is Action.DEPLOY
    assert RULES["/dspy_registry.v1.DeploymentService/RollbackDeployment"].action is Action.ROLLBACK
    assert RULES["/dspy_registry.v1.DeploymentService/ApproveDeployment"].action is Action.APPROVE
    for name in ("CreatePrincipal", "CreateToken", "GrantPermission", "ListAuditEvents"):
        assert RULES["/dspy_registry.v1.AccessService/" + name].action is Action.ADMIN


async def _teammate(admin: apb_grpc.AccessServiceStub, name: str, *grants: tuple[int, str]) -> str:
    await admin.CreatePrincipal(
        apb.CreatePrincipalRequest(principal_id=name, principal=apb.Principal(team="ml_platform"))
    )
    for action, resource in grants:
        await admin.GrantPermission(
            apb.GrantPermissionRequest(principal=f"principals/{name}", action=action, resource=resource)  # type: ignore[arg-type]
        )
    return str((await admin.CreateToken(apb.CreateTokenRequest(parent=f"principals/{name}"))).secret)


def _program(name: str, version: str) -> pb.RegisterProgramRequest:
    return pb.RegisterProgramRequest(
        spec=pb.ProgramVersionSpec(program=name, version=version, signature="signatures/sig/versions/1.0.0"),
        artifact=dspy_state(f"{name} {version}"),
    )


async def test_audit_holds_exactly_the_mutations_and_the_refusals(server: Running) -> None:
    admin = apb_grpc.AccessServiceStub(server.channel)
    await register_signature(server.registry, name="sig")
    secret = await _teammate(
        admin, "bob", (apb.ACTION_REGISTER, "sentiment_*"), (apb.ACTION_READ, "sentiment_*")
    )
    channel = server.channel_for(secret)
    bob = pb_grpc.RegistryServiceStub(channel)
    try:
        # Calls start when made: lambdas keep them in order.
        mutations = [
            lambda: bob.RegisterProgram(_program("sentiment_a", "1.0.0")),
            lambda: bob.RegisterProgram(_program("sentiment_a", "1.1.0")),
            lambda: bob.YankProgramVersion(
                pb.YankProgramVersionRequest(name="programs/sentiment_a/versions/1.1.0", reason="worse")
            ),
        ]
        for call in mutations:
            assert await code_of(call()) == grpc.StatusCode.OK
        # Reads are not audited.
        latest = pb.GetProgramVersionRequest(name="programs/sentiment_a/versions/latest")
        assert await code_of(bob.GetProgramVersion(latest)) == grpc.StatusCode.OK
        denials = [
            lambda: bob.RegisterProgram(_program("ranker", "1.0.0")),
            lambda: bob.GetProgramVersion(pb.GetProgramVersionRequest(name="programs/ranker/versions/1.0.0")),
            lambda: bob.GetProgramVersion(
                pb.GetProgramVersionRequest(name="programs/no_such_thing/versions/1.0.0")
            ),
            lambda: apb_grpc.AccessServiceStub(channel).CreatePrincipal(
                apb.CreatePrincipalRequest(principal_id="mallory", principal=apb.Principal())
            ),
        ]
        for call in denials:
            assert await code_of(call()) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await channel.close(None)
    listed = await admin.ListAuditEvents(apb.ListAuditEventsRequest(principal="principals/bob"))
    assert listed.total_size == len(mutations) + len(denials) == 7
    outcomes = [(e.method.rsplit("/", 1)[1], e.resource, e.outcome) for e in reversed(listed.audit_events)]
    assert outcomes == [
        ("RegisterProgram", "programs/sentiment_a", apb.AUDIT_OUTCOME_SUCCEEDED),
        ("RegisterProgram", "programs/sentiment_a", apb.AUDIT_OUTCOME_SUCCEEDED),
        ("YankProgramVersion", "programs/sentiment_a/versions/1.1.0", apb.AUDIT_OUTCOME_SUCCEEDED),
        ("RegisterProgram", "programs/ranker", apb.AUDIT_OUTCOME_DENIED),
        ("GetProgramVersion", "programs/ranker/versions/1.0.0", apb.AUDIT_OUTCOME_DENIED),
        ("GetProgramVersion", "programs/no_such_thing/versions/1.0.0", apb.AUDIT_OUTCOME_DENIED),
        ("CreatePrincipal", "principals/mallory", apb.AUDIT_OUTCOME_DENIED),
    ]
    events = list(reversed(listed.audit_events))
    assert all(
        e.principal == "principals/bob" and e.token.startswith("principals/bob/tokens/") for e in events
    )
    assert [e.revision > 0 for e in events[:3]] == [True, True, True] and events[3].revision == 0
    assert events[3].code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    below = await admin.ListAuditEvents(apb.ListAuditEventsRequest(resource="programs/sentiment_a"))
    assert below.total_size == 3  # the program, and what is below it (its versions)
    system = await admin.ListAuditEvents(apb.ListAuditEventsRequest(principal="principals/system"))
    assert [e.method for e in system.audit_events] == ["bootstrap"]
    denied_only = await admin.ListAuditEvents(
        apb.ListAuditEventsRequest(
            principal="principals/bob", outcomes=[apb.AUDIT_OUTCOME_DENIED], page_size=2
        )
    )
    assert denied_only.total_size == 4 and len(denied_only.audit_events) == 2 and denied_only.next_page_token


async def test_revocation_disabling_and_expiry_take_effect_at_once(server: Running) -> None:
    admin = apb_grpc.AccessServiceStub(server.channel)
    secret = await _teammate(admin, "carol", (apb.ACTION_READ, "*"))
    channel = server.channel_for(secret)
    carol = apb_grpc.AccessServiceStub(channel)
    try:
        me = await carol.WhoAmI(apb.WhoAmIRequest())
        assert me.principal.name == "principals/carol" and me.permissions[0].resource == "*"
        for _ in range(50):  # the use is recorded off the call's path
            tokens = await admin.ListTokens(apb.ListTokensRequest(parent="principals/carol"))
            if tokens.tokens[0].HasField("last_use_time"):
                break
            await asyncio.sleep(0.02)
        assert tokens.tokens[0].HasField("last_use_time")
        assert [t.secret_prefix for t in tokens.tokens] == [secret[: len(tokens.tokens[0].secret_prefix)]]
        assert all(not t.secret_prefix.endswith(secret[-8:]) for t in tokens.tokens)
        await admin.RevokeToken(apb.RevokeTokenRequest(name=tokens.tokens[0].name))
        assert await code_of(carol.WhoAmI(apb.WhoAmIRequest())) == grpc.StatusCode.UNAUTHENTICATED
        fresh = await admin.CreateToken(apb.CreateTokenRequest(parent="principals/carol"))
        again = server.channel_for(fresh.secret)
        assert (
            await code_of(apb_grpc.AccessServiceStub(again).WhoAmI(apb.WhoAmIRequest())) == grpc.StatusCode.OK
        )
        await admin.DisablePrincipal(
            apb.DisablePrincipalRequest(name="principals/carol", reason="left the team")
        )
        assert (
            await code_of(apb_grpc.AccessServiceStub(again).WhoAmI(apb.WhoAmIRequest()))
            == grpc.StatusCode.UNAUTHENTICATED
        )
        # No power for an account that was shut: enabling it comes first, then grants work again.
        admin_grant = apb.GrantPermissionRequest(
            principal="principals/carol", action=apb.ACTION_ADMIN, resource="*"
        )
        assert await code_of(admin.GrantPermission(admin_grant)) == grpc.StatusCode.FAILED_PRECONDITION
        assert not [
            g
            for g in (await admin.ListPermissions(apb.ListPermissionsRequest())).permissions
            if g.action == apb.ACTION_ADMIN and g.principal == "principals/carol"
        ]
        await admin.DisablePrincipal(apb.DisablePrincipalRequest(name="principals/carol", undo=True))
        assert (
            await code_of(apb_grpc.AccessServiceStub(again).WhoAmI(apb.WhoAmIRequest())) == grpc.StatusCode.OK
        )
        assert await code_of(admin.GrantPermission(admin_grant)) == grpc.StatusCode.OK
        await again.close(None)
    finally:
        await channel.close(None)


async def test_tokens_are_shown_once_and_retries_never_see_the_secret(server: Running) -> None:
    admin = apb_grpc.AccessServiceStub(server.channel)
    await admin.CreatePrincipal(apb.CreatePrincipalRequest(principal_id="dave", principal=apb.Principal()))
    request = apb.CreateTokenRequest(parent="principals/dave", description="ci", request_id="token-once")
    first = await admin.CreateToken(request)
    retry = await admin.CreateToken(request)
    assert first.secret.startswith("dspyr_") and retry.secret == "" and retry.token == first.token
    listed = await admin.ListTokens(apb.ListTokensRequest(parent="principals/-"))
    assert first.secret not in str(listed)


async def test_grants_are_idempotent_checkable_and_revocable(server: Running) -> None:
    admin = apb_grpc.AccessServiceStub(server.channel)
    await admin.CreatePrincipal(apb.CreatePrincipalRequest(principal_id="erin", principal=apb.Principal()))
    grant = apb.GrantPermissionRequest(
        principal="principals/erin", action=apb.ACTION_DEPLOY, resource="sentiment_*"
    )
    first, second = await admin.GrantPermission(grant), await admin.GrantPermission(grant)
    assert first.created and not second.created and first.permission.name == second.permission.name
    check = apb.CheckPermissionRequest(
        principal="principals/erin", action=apb.ACTION_DEPLOY, resource="sentiment_x"
    )
    assert (await admin.CheckPermission(check)).allowed
    other = apb.CheckPermissionRequest(
        principal="principals/erin", action=apb.ACTION_DEPLOY, resource="ranker"
    )
    assert not (await admin.CheckPermission(other)).allowed
    await admin.RevokePermission(apb.RevokePermissionRequest(name=first.permission.name))
    assert not (await admin.CheckPermission(check)).allowed
    bad = apb.GrantPermissionRequest(
        principal="principals/erin", action=apb.ACTION_READ, resource="Bad Glob!"
    )
    assert await code_of(admin.GrantPermission(bad)) == grpc.StatusCode.INVALID_ARGUMENT


async def test_bootstrap_once_with_a_private_token_file_never_logged(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token_file = tmp_path / "secrets" / "admin.token"
    with caplog.at_level(logging.INFO):
        first = await start(database_url, admin_token_file=str(token_file))
    token = token_file.read_text().strip()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert str(token_file) in logged and token not in logged and token[:19] in logged
    me = await apb_grpc.AccessServiceStub(first.channel).WhoAmI(apb.WhoAmIRequest())
    assert me.principal.name == "principals/admin"
    await first.channel.close(None)
    await first.app.stop(grace=0)
    token_file.unlink()
    second = await start(database_url, admin_token=token, admin_token_file=str(token_file))
    try:
        assert not token_file.exists()  # no second admin, no second token
        principals = await apb_grpc.AccessServiceStub(second.channel).ListPrincipals(
            apb.ListPrincipalsRequest()
        )
        assert [p.name for p in principals.principals] == ["principals/admin"]
    finally:
        await second.channel.close(None)
        await second.app.stop(grace=0)


async def test_hostile_input_is_refused_and_still_audited(server: Running) -> None:
    admin = apb_grpc.AccessServiceStub(server.channel)
    secret = await _teammate(admin, "frank", (apb.ACTION_READ, "sentiment_*"))
    channel = server.channel_for(secret)
    try:
        probe = pb_grpc.RegistryServiceStub(channel).GetProgram(pb.GetProgramRequest(name="programs/a\x00b"))
        assert await code_of(probe) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await channel.close(None)
    events = await admin.ListAuditEvents(apb.ListAuditEventsRequest(principal="principals/frank"))
    assert [e.resource for e in events.audit_events] == ["programs/a?b"]  # written, control character defused
    too_wild = apb.GrantPermissionRequest(
        principal="principals/frank", action=apb.ACTION_READ, resource="*a*a*a*b"
    )
    assert await code_of(admin.GrantPermission(too_wild)) == grpc.StatusCode.INVALID_ARGUMENT
    forever = apb.CreateTokenRequest(parent="principals/frank")
    forever.ttl.seconds = 315_576_000_000
    assert await code_of(admin.CreateToken(forever)) == grpc.StatusCode.INVALID_ARGUMENT
    for seconds in (2**63 - 1, -(2**63)):  # beyond a timedelta: this was INTERNAL (OverflowError)
        beyond = apb.CreateTokenRequest(parent="principals/frank")
        beyond.ttl.seconds = seconds
        assert await code_of(admin.CreateToken(beyond)) == grpc.StatusCode.INVALID_ARGUMENT
    odd_type = apb.ListPrincipalsRequest(type=99)  # type: ignore[arg-type]
    assert await code_of(admin.ListPrincipals(odd_type)) == grpc.StatusCode.INVALID_ARGUMENT
    bad_id = apb.RevokeTokenRequest(name="principals/frank/tokens/x\x00")
    assert await code_of(admin.RevokeToken(bad_id)) == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_flood_of_refusals_is_throttled_in_the_audit_log(server: Running) -> None:
    channel = server.channel_for(None)  # no token at all
    try:
        stub = apb_grpc.AccessServiceStub(channel)
        for _ in range(30):
            assert await code_of(stub.WhoAmI(apb.WhoAmIRequest())) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await channel.close(None)
    admin = apb_grpc.AccessServiceStub(server.channel)
    refused = await admin.ListAuditEvents(
        apb.ListAuditEventsRequest(
            outcomes=[apb.AUDIT_OUTCOME_DENIED], method="/dspy_registry.v1.AccessService/WhoAmI"
        )
    )
    assert 20 <= refused.total_size <= 22  # a burst of 20 one by one, then about one a second


async def test_the_names_the_server_acts_under_are_reserved(server: Running) -> None:
    admin = apb_grpc.AccessServiceStub(server.channel)
    for reserved in ("controller", "bootstrap", "system", "anonymous"):
        impostor = apb.CreatePrincipalRequest(principal_id=reserved, principal=apb.Principal())
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin.CreatePrincipal(impostor)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "reserved" in (refused.value.details() or "")
    listed = await admin.ListPrincipals(apb.ListPrincipalsRequest())
    assert {p.name for p in listed.principals} == {"principals/admin"}


async def test_display_names_read_as_stored(server: Running) -> None:
    """No bidi override, isolate or C1 control: a name shown in a table or the audit reads as stored."""
    admin = apb_grpc.AccessServiceStub(server.channel)
    for display_name in ("admin\u202e", "x\u2066y", "a\x85b"):
        tricky = apb.CreatePrincipalRequest(
            principal_id="mallory", principal=apb.Principal(display_name=display_name)
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin.CreatePrincipal(tricky)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, display_name


async def test_a_retried_mutation_is_audited_once(server: Running) -> None:
    """A retry with the same request_id gets the first answer and writes no second audit event."""
    admin = apb_grpc.AccessServiceStub(server.channel)
    await register_signature(server.registry, name="sig")
    register = _program("sentiment_a", "1.0.0")
    register.request_id = "register-once"
    principal = apb.CreatePrincipalRequest(
        principal_id="erin", principal=apb.Principal(), request_id="erin-once"
    )
    for _ in range(3):
        first = await server.registry.RegisterProgram(register)
        assert first.program_version.version == "1.0.0"
        assert (await admin.CreatePrincipal(principal)).principal.name == "principals/erin"
    for request_id in ("register-once", "erin-once"):
        listed = await admin.ListAuditEvents(apb.ListAuditEventsRequest(principal="principals/admin"))
        audited = [e for e in listed.audit_events if e.request_id == request_id]
        assert len(audited) == 1 and audited[0].revision > 0, request_id


async def test_a_revoked_grant_stops_cached_reads_of_the_serving_path_at_once(server: Running) -> None:
    # Reads remember what a principal's grants answered (Access.allowed) and the encoded answer
    # (the response cache): neither may outlive the grant, nor let one program's answer pass for another.
    admin = apb_grpc.AccessServiceStub(server.channel)
    await register_signature(server.registry, name="sig")
    registry = pb_grpc.RegistryServiceStub(server.channel)
    await registry.RegisterProgram(_program("sentiment_a", "1.0.0"))  # development auto-deploys it
    await registry.RegisterProgram(_program("ranker", "1.0.0"))
    secret = await _teammate(admin, "gina", (apb.ACTION_READ, "sentiment_*"))
    channel = server.channel_for(secret)
    try:
        reads = pb_grpc.RegistryServiceStub(channel)
        serving = pb.GetProgramVersionRequest(name="programs/sentiment_a", environment="development")
        for _ in range(3):  # the first fills the caches, the others are answered from them
            assert (await reads.GetProgramVersion(serving)).program_version.version == "1.0.0"
        other = pb.GetProgramVersionRequest(name="programs/ranker", environment="development")
        assert await code_of(reads.GetProgramVersion(other)) == grpc.StatusCode.PERMISSION_DENIED
        bad = pb.GetProgramVersionRequest(name="programs/sentiment_a", environment="Dev elopment")
        assert await code_of(reads.GetProgramVersion(bad)) == grpc.StatusCode.INVALID_ARGUMENT
        listed = await admin.ListPermissions(apb.ListPermissionsRequest(principal="principals/gina"))
        await admin.RevokePermission(apb.RevokePermissionRequest(name=listed.permissions[0].name))
        assert await code_of(reads.GetProgramVersion(serving)) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await channel.close(None)


async def test_concurrent_callers_are_each_known_by_their_own_metadata(server: Running) -> None:
    """Calls of three callers, interleaved on one server, never pass for another's: the serving path
    admits a caller known lately without a wait (Guard.known, Guard.allows), from its own metadata."""
    admin = apb_grpc.AccessServiceStub(server.channel)
    await register_signature(server.registry, name="sig")
    await server.registry.RegisterProgram(_program("sentiment_a", "1.0.0"))
    await server.registry.RegisterProgram(_program("ranker", "1.0.0"))
    secret = await _teammate(admin, "hana", (apb.ACTION_READ, "sentiment_*"))
    hana, nobody = server.channel_for(secret), server.channel_for(None)
    ranker = pb.GetProgramVersionRequest(name="programs/ranker", environment="development")

    async def as_admin() -> None:
        assert (await admin.WhoAmI(apb.WhoAmIRequest())).principal.name == "principals/admin"
        assert (await server.registry.GetProgramVersion(ranker)).program_version.program == "ranker"

    async def as_hana() -> None:
        me = await apb_grpc.AccessServiceStub(hana).WhoAmI(apb.WhoAmIRequest())
        assert me.principal.name == "principals/hana"
        refused = pb_grpc.RegistryServiceStub(hana).GetProgramVersion(ranker)
        assert await code_of(refused) == grpc.StatusCode.PERMISSION_DENIED

    async def as_nobody() -> None:
        anonymous = pb_grpc.RegistryServiceStub(nobody).GetProgramVersion(ranker)
        assert await code_of(anonymous) == grpc.StatusCode.UNAUTHENTICATED

    try:
        for _ in range(3):
            await asyncio.gather(*(call() for _ in range(20) for call in (as_admin, as_hana, as_nobody)))
    finally:
        await hana.close(None)
        await nobody.close(None)

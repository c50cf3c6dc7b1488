"""The bootstrap admin's token from a mounted Secret, and `dspy-registry admin reset-token` getting
access back when it is lost: on SQLite and PostgreSQL, the command a real process."""

from __future__ import annotations

import asyncio
import getpass
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from dspy_registry.server.app import App
from dspy_registry.server.config import Config
from dspy_registry.server.domain import access
from dspy_registry.server.store.backends import open_store
from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import access_pb2_grpc as apb_grpc
from tests.api.conftest import Running, start
from tests.calls import code_of
from tests.conftest import SKIP_POSTGRES, PostgresDatabases
from tests.eventually import until

CLI = Path(sys.executable).parent / "dspy-registry"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


async def _who(running: Running, token: str) -> grpc.StatusCode:
    channel = running.channel_for(token)
    try:
        return await code_of(apb_grpc.AccessServiceStub(channel).WhoAmI(apb.WhoAmIRequest()))
    finally:
        await channel.close(None)


async def test_a_token_file_that_exists_is_adopted_and_left_as_it_is(
    database_url: str, tmp_path: Path
) -> None:
    generated = _cli("admin", "generate-token", cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr
    token = generated.stdout.strip()
    secret = tmp_path / "secret" / "token"  # as Kubernetes mounts a Secret's key
    secret.parent.mkdir()
    secret.write_text(token + "\n")
    secret.chmod(0o400)
    before = secret.stat()
    running = await start(database_url, admin_token_file=str(secret))
    try:
        assert running.admin_token == token
        me = await apb_grpc.AccessServiceStub(running.channel).WhoAmI(apb.WhoAmIRequest())
        assert me.principal.name == "principals/admin"
        after = secret.stat()
        assert (after.st_ino, after.st_mtime_ns, stat.S_IMODE(after.st_mode)) == (
            before.st_ino,
            before.st_mtime_ns,
            0o400,
        )
        assert sorted(p.name for p in secret.parent.iterdir()) == ["token"]  # nothing written beside it
    finally:
        await running.channel.close(None)
        await running.app.stop(grace=0)


async def test_a_token_file_holding_anything_else_stops_the_first_start(
    database_url: str, tmp_path: Path
) -> None:
    secret = tmp_path / "token"
    secret.write_text("hunter2\n")
    app = App(Config(listen="127.0.0.1:0", database=database_url, admin_token_file=str(secret)))
    with pytest.raises(ValueError, match="does not hold a dspy-registry token.*generate-token"):
        await app.start()
    await app.stop(grace=0)
    assert await _principals(database_url) == 0  # nobody to call it, so no admin either


async def test_a_token_file_that_cannot_be_written_stops_the_first_start(
    database_url: str, tmp_path: Path
) -> None:
    # As a read-only Secret mount whose key has another name: there is no file to adopt, and none
    # can be written there (sysfs refuses to create files, even to root).
    app = App(Config(listen="127.0.0.1:0", database=database_url, admin_token_file="/sys/token"))
    with pytest.raises(OSError, match="cannot write the new admin token to /sys/token.*another file name"):
        await app.start()
    await app.stop(grace=0)
    assert await _principals(database_url) == 0  # rolled back: no admin without its token


async def _principals(database_url: str) -> int:
    store = open_store(database_url)
    await store.open()
    try:
        async with store.read() as tx:
            return await tx.count_principals()
    finally:
        await store.close()


async def test_reset_token_recovers_access_and_is_audited(database_url: str, tmp_path: Path) -> None:
    running = await start(database_url)
    accounts = apb_grpc.AccessServiceStub(running.channel)
    # The worst case: the token lost, and admin disabled and stripped of its grant by another admin.
    await accounts.CreatePrincipal(apb.CreatePrincipalRequest(principal_id="ops", principal=apb.Principal()))
    await accounts.GrantPermission(
        apb.GrantPermissionRequest(principal="principals/ops", action=apb.ACTION_ADMIN, resource="*")
    )
    ops_secret = (await accounts.CreateToken(apb.CreateTokenRequest(parent="principals/ops"))).secret
    second = (await accounts.CreateToken(apb.CreateTokenRequest(parent="principals/admin"))).secret
    ops_channel = running.channel_for(ops_secret)
    ops = apb_grpc.AccessServiceStub(ops_channel)
    grants = await ops.ListPermissions(apb.ListPermissionsRequest(principal="principals/admin"))
    for grant in grants.permissions:
        await ops.RevokePermission(apb.RevokePermissionRequest(name=grant.name))
    await ops.DisablePrincipal(apb.DisablePrincipalRequest(name="principals/admin", reason="test"))
    await ops_channel.close(None)
    lost = running.admin_token
    # PostgreSQL: the replicas keep serving and honour the reset. SQLite: one process owns the file,
    # so the server is stopped for it (the command says so if it is not) and started again.
    live = database_url.startswith("postgresql")
    if not live:
        refused = _cli("admin", "reset-token", "--database", database_url, cwd=tmp_path)
        assert refused.returncode == 1 and "in use by another dspy-registry server" in refused.stderr
        await running.channel.close(None)
        await running.app.stop(grace=0)

    written = tmp_path / "recovered" / "admin.token"
    reset = _cli(
        "admin", "reset-token", "--database", database_url, "--token-file", str(written), cwd=tmp_path
    )
    assert reset.returncode == 0, reset.stderr
    assert reset.stdout == "" and "2 token(s) revoked" in reset.stderr
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    new = written.read_text().strip()
    assert new not in reset.stderr
    printed = _cli("admin", "reset-token", "--database", database_url, cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    newest = printed.stdout.strip()
    assert "1 token(s) revoked" in printed.stderr and newest.startswith("dspyr_")

    if not live:
        running = await start(database_url, admin_token=newest)
    try:
        await until(lambda: _ok(running, newest), "the reset token accepted by the server")
        for old in (lost, second, new):
            assert await _who(running, old) == grpc.StatusCode.UNAUTHENTICATED
        channel = running.channel_for(newest)
        try:
            me = await apb_grpc.AccessServiceStub(channel).WhoAmI(apb.WhoAmIRequest())
            audit = await apb_grpc.AccessServiceStub(channel).ListAuditEvents(
                apb.ListAuditEventsRequest(principal="principals/system")
            )
        finally:
            await channel.close(None)
        assert me.principal.name == "principals/admin" and not me.principal.disabled
        assert [(p.action, p.resource) for p in me.permissions] == [(apb.ACTION_ADMIN, "*")]
        events = [(e.method, e.resource, e.outcome, e.peer) for e in reversed(audit.audit_events)]
        who = f"{getpass.getuser()}@{socket.gethostname()}"
        assert events == [
            ("bootstrap", "principals/admin", apb.AUDIT_OUTCOME_SUCCEEDED, ""),
            ("admin reset-token", "principals/admin", apb.AUDIT_OUTCOME_SUCCEEDED, who),
            ("admin reset-token", "principals/admin", apb.AUDIT_OUTCOME_SUCCEEDED, who),
        ]
    finally:
        await running.channel.close(None)
        await running.app.stop(grace=0)


async def _unauthenticated(running: Running, token: str) -> bool:
    return await _who(running, token) == grpc.StatusCode.UNAUTHENTICATED


async def _ok(running: Running, token: str) -> bool:
    return await _who(running, token) == grpc.StatusCode.OK


def test_reset_token_refuses_a_store_no_server_started_on(tmp_path: Path) -> None:
    missing = _cli("admin", "reset-token", "--database", f"sqlite:///{tmp_path / 'typo.db'}", cwd=tmp_path)
    assert missing.returncode == 1 and "no database at" in missing.stderr
    assert not (tmp_path / "typo.db").exists()
    empty = tmp_path / "empty.db"
    empty.touch()
    never = _cli("admin", "reset-token", "--database", f"sqlite:///{empty}", cwd=tmp_path)
    assert never.returncode == 1 and "no principals" in never.stderr and never.stdout == ""
    env = dict(os.environ, DSPY_REGISTRY_DATABASE="mysql://nope")
    bad = subprocess.run(
        [str(CLI), "admin", "reset-token"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "unsupported database URL" in bad.stderr


@pytest.mark.postgres
async def test_replicas_starting_together_adopt_the_one_token(
    tmp_path: Path, pg_databases: PostgresDatabases
) -> None:
    """Replicas of a new Deployment start at once on an empty database, all with the same Secret."""
    if SKIP_POSTGRES:
        pytest.skip("DSPY_REGISTRY_SKIP_POSTGRES=1")
    url = await pg_databases.create()
    secret = tmp_path / "token"
    secret.write_text(access.new_bearer_token())
    replicas = await asyncio.gather(*(start(url, admin_token_file=str(secret)) for _ in range(3)))
    try:
        for running in replicas:
            assert await _ok(running, secret.read_text().strip())
        admin = apb_grpc.AccessServiceStub(replicas[0].channel)
        principals = await admin.ListPrincipals(apb.ListPrincipalsRequest())
        tokens = await admin.ListTokens(apb.ListTokensRequest(parent="principals/admin"))
        assert [p.name for p in principals.principals] == ["principals/admin"] and len(tokens.tokens) == 1
    finally:
        for running in replicas:
            await running.channel.close(None)
            await running.app.stop(grace=0)

"""SIGKILL the server again and again while clients mutate through the real API: nothing acknowledged is
lost, nothing retried is applied twice, nothing is left half-done.

Four workers (crash_workers.py) register signatures and program versions,
deploy (replace, blue-green, canary, the environment's default), approve,
promote, abort, roll back, grant and revoke permissions, create and revoke
tokens, each call with a request_id, and ask again with the same request
when a kill ate the answer. Meanwhile the test kills the server at random
moments and starts it again. Afterwards, on a freshly restarted server,
every acknowledged answer is checked against the store (crash_checks.py).
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import access_pb2_grpc as apb_grpc
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc
from tests.factories import dspy_state, spec_proto
from tests.reliability import crash_checks as checks
from tests.reliability.conftest import Tally, budget, soaking
from tests.reliability.crash_workers import APPROVER, Journal, Tokens, Worker
from tests.reliability.servers import Restartable, current_revision, integrity_check, sqlite_path

SECONDS = budget(16, 0.175)  # per backend (with its checks, about 20 s); 0.35 of the soak for the two
# The bar under `make soak`: at least 50 kills per backend. The run goes on past its time
# until it has them (a slow machine restarts slowly), and a short run still kills a handful of times.
KILLS = 50 if soaking() else 4
WORKERS = 4


def _setup(server: Restartable, workers: int) -> Tokens:
    """Environments, the approver, and each worker's signature, programs and principal (no kills yet)."""
    with server.channel() as channel:
        deploy = dpb_grpc.DeploymentServiceStub(channel)
        qa = dpb.Environment(name="environments/qa", description="approved canaries", position=5)
        qa.policy.approval_required = True
        qa.policy.required_approvals = 1
        qa.policy.rollback_enabled = True
        qa.policy.default_strategy.strategy = dpb.STRATEGY_CANARY
        for weight in (25, 75):
            qa.policy.default_strategy.canary.steps.add(weight_percent=weight).pause.FromMilliseconds(400)
        deploy.UpdateEnvironment(dpb.UpdateEnvironmentRequest(environment=qa, allow_missing=True))
        access = apb_grpc.AccessServiceStub(channel)
        registry = pb_grpc.RegistryServiceStub(channel)
        access.CreatePrincipal(
            apb.CreatePrincipalRequest(
                principal_id=APPROVER, principal=apb.Principal(type=apb.PRINCIPAL_TYPE_USER)
            )
        )
        access.GrantPermission(
            apb.GrantPermissionRequest(
                principal=f"principals/{APPROVER}", action=apb.ACTION_APPROVE, resource="*"
            )
        )
        approver = access.CreateToken(apb.CreateTokenRequest(parent=f"principals/{APPROVER}")).secret
        for i in range(workers):
            access.CreatePrincipal(
                apb.CreatePrincipalRequest(
                    principal_id=f"w{i}-bot", principal=apb.Principal(type=apb.PRINCIPAL_TYPE_SERVICE_ACCOUNT)
                )
            )
            registry.RegisterSignature(
                pb.RegisterSignatureRequest(signature=f"w{i}sig", version="1.0.0", spec=spec_proto())
            )
            for program in (f"w{i}a", f"w{i}b"):
                spec = pb.ProgramVersionSpec(
                    program=program,
                    version="1.0.0",
                    signature=f"signatures/w{i}sig/versions/1.0.0",
                    performance={"accuracy": 0.9},
                )
                registry.RegisterProgram(pb.RegisterProgramRequest(spec=spec, artifact=dspy_state(program)))
    return Tokens(server.admin_token(), approver)


def _restart(server: Restartable, journal: Journal, database: str) -> None:
    """Kill, look at the file while no one holds it, start again; the store is never behind an answer."""
    server.kill()
    with journal.lock:
        answered = journal.max_revision  # every answer counted here came from the process just killed
    if (path := sqlite_path(database)) is not None:
        verdict = integrity_check(path)
        assert verdict == "ok", f"after kill {server.kills}: {verdict}"
    server.start()
    with server.channel() as channel:
        revision = current_revision(channel)
    assert revision >= answered, (
        f"after kill {server.kills} the store is at {revision}, an answer said {answered}"
    )


@pytest.mark.timeout(int(SECONDS * 3 + 180))
def test_sigkills_during_mixed_mutations_lose_nothing_and_apply_nothing_twice(
    database_url: str, tmp_path: Path, tally: Tally
) -> None:
    seed = int(os.environ.get("CRASH_SEED") or random.randrange(1 << 32))  # replay with CRASH_SEED=<seed>
    rng = random.Random(seed)
    server = Restartable(database_url, tmp_path)
    try:
        server.start()
        tokens = _setup(server, WORKERS)
        journal = Journal()
        stop = threading.Event()
        workers = [Worker(i, server, tokens, journal, rng.randrange(1 << 32), stop) for i in range(WORKERS)]
        for w in workers:
            w.start()
        began = time.monotonic()
        while time.monotonic() - began < SECONDS or server.kills < KILLS:
            time.sleep(rng.uniform(0.2, 1.6))
            assert all(w.is_alive() for w in workers), [w.error for w in workers]
            _restart(server, journal, database_url)
        stop.set()
        for w in workers:
            w.join(timeout=120)
            assert not w.is_alive(), f"{w.name} still waits for an answer"
            assert w.error is None, (seed, w.name, w.error)
        _restart(server, journal, database_url)  # what follows reads what the store kept, not a cache
        found = checks.Findings()
        with server.channel() as channel:
            for w in workers:
                checks.check_registrations(channel, w, found)
                checks.check_access(channel, w, found)
                checks.check_deployments(
                    channel, w, [a for a in journal.acks if a.method in checks.LEFT], found
                )
                checks.check_consistency(channel, w, found)
            checks.check_audit(channel, journal, found)
        tally.operations += len(journal.acks) + sum(journal.refusals.values())
        tally.kills += server.kills
        tally.writes_checked += found.writes_checked
        tally.lost += found.lost
        tally.duplicates += found.duplicates
        tally.codes.update(journal.codes)
        assert server.stop() == 0, server.log()
        if (path := sqlite_path(database_url)) is not None:
            assert integrity_check(path) == "ok"
    finally:
        server.ensure_dead()
    # Enough happened for the checks to mean something: every kind of write was answered.
    methods = {a.method for a in journal.acks}
    assert len(methods) >= 9, (seed, sorted(methods), journal.refusals)
    assert journal.resent > 0 and journal.retried > 0, (seed, journal.resent, journal.retried)
    problems = journal.surprises[:10] + found.problems[:20]
    assert not problems, (
        f"seed {seed}: {len(journal.surprises)} surprises, {len(found.problems)} problems:\n"
        + "\n".join(problems)
    )

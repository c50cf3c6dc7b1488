"""SIGKILL the leader of three `dspy-registry serve` processes on one PostgreSQL, ten times under `make soak`
(issue 13's count), three inside `make test`, while canaries step and webhooks are delivered: another
replica leads within 5 s each time (the takeover times are printed), every canary step is taken exactly
once, every webhook delivered at least once and recorded once.

Each round registers a program (auto-deployed to development: webhook deliveries), deploys it to staging
and starts a canary of a second version there, then kills the replica that GetDeploymentStatus names the
leader, waits for another to be named, and starts the killed one again on a new port.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import grpc
import pytest

from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc
from tests.calls import canary_strategy
from tests.conftest import SKIP_POSTGRES, PostgresDatabases
from tests.eventually import eventually
from tests.factories import dspy_state, spec_proto
from tests.reliability.conftest import Tally, soaking
from tests.reliability.servers import RETRYABLE, Restartable
from tests.webhook_receiver import ThreadedReceiver

pytestmark = pytest.mark.postgres
# Issue 13's ten SIGKILLs run under `make soak`. Inside `make test`, three: each the same round as the
# ten (a canary started, the leader killed, another leading within TAKEOVER_SECONDS, the victim started
# again beside the next round), so every assertion below still follows kills that overlap a restart.
KILLS = 10 if soaking() else 3
REPLICAS = 3
TAKEOVER_SECONDS = 5.0
SECRET = "s3cret-for-the-leader-test"
K = dpb.DeploymentEventKind
S = dpb.DeploymentState
CANARY = canary_strategy((20, 0.4), (50, 0.4), (80, 0.4))


def _call(replicas: list[Restartable], method: str, request: object, stub: str = "deployments") -> object:
    """`method` on the first live replica that answers (a replica killed a moment ago does not)."""
    deadline = time.monotonic() + 30
    while True:
        for replica in replicas:
            if not replica.alive:
                continue
            with replica.channel() as channel:
                service = (
                    dpb_grpc.DeploymentServiceStub(channel)
                    if stub == "deployments"
                    else pb_grpc.RegistryServiceStub(channel)
                )
                try:
                    return getattr(service, method)(request, timeout=10)
                except grpc.RpcError as err:
                    if err.code() not in RETRYABLE or time.monotonic() > deadline:
                        raise
        time.sleep(0.05)


def _leader(replicas: list[Restartable]) -> str:
    """The leader as the live replicas name it, if they all name the same live one; else ""."""
    names = set()
    for replica in replicas:
        if not replica.alive:
            continue
        with replica.channel() as channel:
            try:
                status = dpb_grpc.DeploymentServiceStub(channel).GetDeploymentStatus(
                    dpb.GetDeploymentStatusRequest(program="p0", environment="development"), timeout=2
                )
            except grpc.RpcError as err:
                if err.code() in RETRYABLE:
                    continue  # starting again, or just killed
                raise
            names.add(status.leader)
    live = {r.address for r in replicas if r.alive}
    return next(iter(names)) if len(names) == 1 and names <= live else ""


def _round(replicas: list[Restartable], i: int) -> str:
    """A program p{i} with two versions (each auto-deployed to development), 1.0.0 in staging and a
    canary of 1.1.0 started there; the canary's name."""
    for version in ("1.0.0", "1.1.0"):
        spec = pb.ProgramVersionSpec(
            program=f"p{i}", version=version, signature="signatures/sig/versions/1.0.0"
        )
        _call(
            replicas,
            "RegisterProgram",
            pb.RegisterProgramRequest(spec=spec, artifact=dspy_state(version), request_id=f"p{i}-{version}"),
            stub="registry",
        )
    replace = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE)
    for version, strategy in (("1.0.0", replace), ("1.1.0", CANARY)):
        created = _call(
            replicas,
            "CreateDeployment",
            dpb.CreateDeploymentRequest(
                program=f"p{i}",
                version=version,
                environment="staging",
                strategy=strategy,
                request_id=f"p{i}-{version}-staging",
            ),
        )
    return str(created.deployment.name)  # type: ignore[attr-defined]


@pytest.mark.timeout(240)
def test_sigkilling_the_leader_again_and_again_hands_the_lead_on_and_loses_no_step_or_webhook(
    pg_databases: PostgresDatabases, tmp_path: Path, tally: Tally
) -> None:
    if SKIP_POSTGRES:
        pytest.skip("DSPY_REGISTRY_SKIP_POSTGRES=1")
    url = asyncio.run(pg_databases.create())
    receiver = ThreadedReceiver(SECRET).start()
    receiver.receiver.statuses = [503, 503, 500]  # a few deliveries are retried, by whichever leader
    allow = ["--webhook-allow", "127.0.0.0/8"]
    replicas = [Restartable(url, tmp_path, f"replica-{n}", allow) for n in range(REPLICAS)]
    takeovers: list[float] = []
    try:
        replicas[0].start()  # first alone: it bootstraps the admin whose token the others share
        others = [threading.Thread(target=r.start, name=f"start-{r.name}") for r in replicas[1:]]
        for thread in others:
            thread.start()
        for thread in others:
            thread.join()
        _call(
            replicas,
            "CreateWebhook",
            dpb.CreateWebhookRequest(
                webhook_id="all", webhook=dpb.Webhook(url=receiver.receiver.url, secret=SECRET)
            ),
        )
        _call(
            replicas,
            "RegisterSignature",
            pb.RegisterSignatureRequest(signature="sig", version="1.0.0", spec=spec_proto()),
            stub="registry",
        )
        canaries = [_round(replicas, 0)]
        restarting: threading.Thread | None = None
        eventually(lambda: bool(_leader(replicas)), "the replicas agree on a leader")
        for i in range(1, KILLS + 1):
            canaries.append(_round(replicas, i))
            old = _leader(replicas)
            victim = next(r for r in replicas if r.alive and r.address == old)
            killed = time.monotonic()
            victim.kill()
            eventually(
                lambda old=old: _leader(replicas) not in ("", old),  # type: ignore[misc]
                f"another replica leads after kill {i}",
                seconds=TAKEOVER_SECONDS,
            )
            takeovers.append(time.monotonic() - killed)
            # Started again beside the next round: two replicas are enough for the next takeover.
            if restarting is not None:
                restarting.join()
            restarting = threading.Thread(target=victim.start, name=f"restart-{i}")
            restarting.start()
        if restarting is not None:
            restarting.join()
        print(f"\ntakeover seconds after each SIGKILL of the leader: {[round(t, 2) for t in takeovers]}")

        def ended(name: str) -> dpb.Deployment:
            response = _call(replicas, "GetDeployment", dpb.GetDeploymentRequest(name=name))
            deployment: dpb.Deployment = response.deployment  # type: ignore[attr-defined]
            return deployment

        for name in canaries:
            eventually(
                lambda name=name: ended(name).state == S.DEPLOYMENT_STATE_SUCCEEDED,  # type: ignore[misc]
                f"{name} succeeds",
                60,
            )
            steps = [e.step for e in ended(name).timeline if e.kind == K.DEPLOYMENT_EVENT_KIND_STEP_ADVANCED]
            assert steps == [2, 3], (name, steps)

        def deliveries() -> list[dpb.WebhookDelivery]:
            response = _call(
                replicas,
                "ListWebhookDeliveries",
                dpb.ListWebhookDeliveriesRequest(parent="webhooks/all", page_size=1000),
            )
            return list(response.deliveries)  # type: ignore[attr-defined]

        eventually(
            lambda: all(d.state == dpb.DELIVERY_STATE_SUCCEEDED for d in deliveries()),
            "every delivery succeeds",
            seconds=90,
        )
        recorded = deliveries()
        assert len({d.event_id for d in recorded}) == len(recorded)  # one delivery per event
        # 4 per program to development (two versions: created, promoted, succeeded, and superseded or
        # not), then staging's: at least the canaries' created and succeeded, each round.
        assert len(recorded) >= 4 * (KILLS + 1)
        arrived = receiver.receiver.delivered()
        assert {d.name.rsplit("/", 1)[1] for d in recorded} <= set(arrived)  # each arrived at least once
        assert all(r.valid for r in arrived.values())
        tally.kills += KILLS
        tally.operations += len(canaries) * 4 + len(recorded)
        tally.writes_checked += len(canaries) + len(recorded)
    finally:
        for replica in replicas:
            replica.ensure_dead()
        receiver.close()

"""What the crash test checks once the kills are over, against every acknowledged answer.

Each check reads through the public API of a freshly restarted server (so
nothing is answered from a cache the crash would have emptied) and adds what
it finds to `Findings`: acknowledged writes checked, lost, duplicated, and a
line per problem naming the request.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import access_pb2_grpc as apb_grpc
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc
from tests.eventually import eventually
from tests.reliability.crash_workers import ENVIRONMENTS, Ack, Journal, Worker, made_revision

K = dpb.DeploymentEventKind
S = dpb.DeploymentState
ACTIVE = (S.DEPLOYMENT_STATE_PENDING_APPROVAL, S.DEPLOYMENT_STATE_IN_PROGRESS)
# The timeline entry that ends a deployment in each final state.
ENDING = {
    S.DEPLOYMENT_STATE_SUCCEEDED: K.DEPLOYMENT_EVENT_KIND_SUCCEEDED,
    S.DEPLOYMENT_STATE_FAILED: K.DEPLOYMENT_EVENT_KIND_FAILED,
    S.DEPLOYMENT_STATE_ROLLED_BACK: K.DEPLOYMENT_EVENT_KIND_ROLLED_BACK,
    S.DEPLOYMENT_STATE_ABORTED: K.DEPLOYMENT_EVENT_KIND_ABORTED,
    S.DEPLOYMENT_STATE_SUPERSEDED: K.DEPLOYMENT_EVENT_KIND_SUPERSEDED,
}
# The entries an acknowledged call must have left at the revision its answer carried.
LEFT = {
    "CreateDeployment": {K.DEPLOYMENT_EVENT_KIND_CREATED},
    "ApproveDeployment": {K.DEPLOYMENT_EVENT_KIND_APPROVED, K.DEPLOYMENT_EVENT_KIND_REJECTED},
    "PromoteDeployment": {K.DEPLOYMENT_EVENT_KIND_STEP_ADVANCED, K.DEPLOYMENT_EVENT_KIND_PROMOTED},
    "AbortDeployment": {K.DEPLOYMENT_EVENT_KIND_ABORTED},
    "RollbackDeployment": {K.DEPLOYMENT_EVENT_KIND_ROLLED_BACK},
}


@dataclass
class Findings:
    writes_checked: int = 0
    lost: int = 0
    duplicates: int = 0
    problems: list[str] = field(default_factory=list)

    def missing(self, what: str) -> None:
        self.lost += 1
        self.problems.append(f"lost: {what}")

    def extra(self, what: str) -> None:
        self.duplicates += 1
        self.problems.append(f"duplicate: {what}")

    def wrong(self, what: str) -> None:
        self.problems.append(what)


def _pages(call: Callable[..., Any], request: Any, items: str) -> Iterator[Any]:
    while True:
        page = call(request, timeout=30)
        yield from getattr(page, items)
        if not page.next_page_token:
            return
        request.page_token = page.next_page_token


def _compare(found: Findings, what: str, expected: set[str], actual: set[str]) -> None:
    found.writes_checked += len(expected)
    for name in sorted(expected - actual):
        found.missing(f"{what} {name}")
    for name in sorted(actual - expected):
        found.extra(f"{what} {name}")


def check_registrations(channel: grpc.Channel, w: Worker, found: Findings) -> None:
    """Exactly the versions the worker was told it registered: none lost, none created twice."""
    registry = pb_grpc.RegistryServiceStub(channel)
    for program in w.programs:
        listed = _pages(
            registry.ListProgramVersions,
            pb.ListProgramVersionsRequest(parent=f"programs/{program}", page_size=1000),
            "program_versions",
        )
        _compare(found, f"programs/{program} version", set(w.versions[program]), {v.version for v in listed})
    listed = _pages(
        registry.ListSignatureVersions,
        pb.ListSignatureVersionsRequest(parent=f"signatures/{w.signature}", page_size=1000),
        "signature_versions",
    )
    _compare(
        found, f"signatures/{w.signature} version", set(w.signature_versions), {v.version for v in listed}
    )


def check_access(channel: grpc.Channel, w: Worker, found: Findings) -> None:
    """Exactly the grants and tokens the worker was told of, each token revoked iff it was told so."""
    access = apb_grpc.AccessServiceStub(channel)
    principal = f"principals/{w.principal}"
    grants = _pages(
        access.ListPermissions, apb.ListPermissionsRequest(principal=principal, page_size=1000), "permissions"
    )
    held = {g.name for g in grants}
    found.writes_checked += len(w.grants_revoked)
    for name in sorted(held & w.grants_revoked):
        found.missing(f"the revocation of {name}")
    _compare(found, "grant", w.grants, held - w.grants_revoked)
    tokens = list(
        _pages(
            access.ListTokens,
            apb.ListTokensRequest(parent=principal, include_inactive=True, page_size=1000),
            "tokens",
        )
    )
    _compare(found, "token", w.tokens_live | w.tokens_revoked, {t.name for t in tokens})
    for t in tokens:
        if t.revoked != (t.name in w.tokens_revoked):
            found.wrong(f"{t.name}: revoked is {t.revoked}, but the worker was told otherwise")


def _deployments(channel: grpc.Channel, program: str) -> list[dpb.Deployment]:
    deploy = dpb_grpc.DeploymentServiceStub(channel)
    request = dpb.ListDeploymentsRequest(program=program, page_size=1000)
    return list(_pages(deploy.ListDeployments, request, "deployments"))


def check_deployments(channel: grpc.Channel, w: Worker, acks: list[Ack], found: Findings) -> None:
    """Every deployment the worker was told of exists, none more; each acknowledged change is in its
    deployment's timeline at the revision the answer carried; development holds one auto-deploy per
    registered version."""
    by_name: dict[str, dpb.Deployment] = {}
    for program in w.programs:
        listed = _deployments(channel, program)
        by_name.update({d.name: d for d in listed})
        automatic = [d for d in listed if d.environment == "development"]
        found.writes_checked += len(w.versions[program])
        if len(automatic) != len(w.versions[program]):
            found.wrong(
                f"programs/{program}: {len(automatic)} auto-deploys to development "
                f"for {len(w.versions[program])} registered versions"
            )
    _compare(
        found,
        "deployment",
        set(w.deployments),
        {name for name, d in by_name.items() if d.environment != "development"},
    )
    for ack in acks:
        if ack.method not in LEFT:
            continue
        changed = ack.response.rolled_back if ack.method == "RollbackDeployment" else ack.response.deployment
        if changed.program not in w.programs:
            continue  # another worker's
        name = changed.name
        d = by_name.get(name)
        if d is None:
            continue  # counted as lost above
        found.writes_checked += 1
        revision = made_revision(ack)
        kinds = {t.kind for t in d.timeline if t.revision == revision}
        if not kinds & LEFT[ack.method]:
            found.missing(
                f"{ack.method} {ack.request_id} on {name}: no {LEFT[ack.method]} at revision {revision}"
            )
        if d.revision < revision:
            found.wrong(f"{name} is at revision {d.revision}, below the {revision} {ack.method} answered")


def _snapshot(channel: grpc.Channel, program: str) -> tuple[list[dpb.Deployment], dict[str, dpb.Target]]:
    """A program's deployments and targets as of one moment: read again until the controller did not move
    anything in between (every target change comes with a deployment change)."""
    deploy = dpb_grpc.DeploymentServiceStub(channel)
    result: list[Any] = []

    def stable_read() -> bool:
        before = _deployments(channel, program)
        targets = {}
        for env in ("development", *ENVIRONMENTS):
            try:
                status = deploy.GetDeploymentStatus(
                    dpb.GetDeploymentStatusRequest(program=program, environment=env), timeout=30
                )
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.NOT_FOUND, err
                continue
            targets[env] = status.target
        after = _deployments(channel, program)
        result[:] = [after, targets]
        return before == after

    eventually(stable_read, f"a quiet moment to read programs/{program} whole", seconds=60)
    return result[0], result[1]


def check_consistency(channel: grpc.Channel, w: Worker, found: Findings) -> None:
    """No deployment half-applied: each target agrees with its deployments, and each deployment's state
    with its timeline."""
    for program in w.programs:
        deployments, targets = _snapshot(channel, program)
        by_name = {d.name: d for d in deployments}
        for d in deployments:
            _check_timeline(d, by_name, found)
        for env, target in targets.items():
            here = [d for d in deployments if d.environment == env]
            _check_target(target, here, by_name, found)


def _check_timeline(d: dpb.Deployment, by_name: dict[str, dpb.Deployment], found: Findings) -> None:
    t = d.timeline
    revisions = [e.revision for e in t]
    if not t or t[0].kind != K.DEPLOYMENT_EVENT_KIND_CREATED:
        found.wrong(f"{d.name}: its timeline does not begin with CREATED")
        return
    if revisions != sorted(revisions) or t[-1].state != d.state or d.revision != t[-1].revision:
        found.wrong(f"{d.name}: state {S.Name(d.state)} at {d.revision}, timeline {_kinds(d)}")
    if d.state in ENDING and t[-1].kind != ENDING[d.state]:
        found.wrong(f"{d.name}: {S.Name(d.state)} but its timeline ends {K.Name(t[-1].kind)}")
    steps = [e.step for e in t if e.kind == K.DEPLOYMENT_EVENT_KIND_STEP_ADVANCED]
    if steps != list(range(2, len(steps) + 2)):
        found.wrong(f"{d.name}: canary steps taken {steps}, not each once in order")
    if d.state == S.DEPLOYMENT_STATE_ROLLED_BACK:
        # The rollback and the deployment it ended are one transaction: both or neither.
        back = by_name.get(d.rollback_deployment)
        ended_at = t[-1].revision
        if back is None or back.rolled_back_deployment != d.name or back.timeline[0].revision != ended_at:
            found.wrong(
                f"{d.name}: rolled back at {ended_at} by {d.rollback_deployment!r}, which does not say so"
            )
    if d.state == S.DEPLOYMENT_STATE_SUPERSEDED:
        by = by_name.get(d.superseded_by)
        if by is None or by.timeline[0].revision != t[-1].revision:
            found.wrong(f"{d.name}: superseded at {t[-1].revision} by {d.superseded_by!r}, created elsewhen")


def _kinds(d: dpb.Deployment) -> list[tuple[str, int]]:
    return [(K.Name(e.kind).removeprefix("DEPLOYMENT_EVENT_KIND_"), e.revision) for e in d.timeline]


def _check_target(
    target: dpb.Target, here: list[dpb.Deployment], by_name: dict[str, dpb.Deployment], found: Findings
) -> None:
    where = target.name
    active = [d for d in here if d.state in ACTIVE]
    if len(active) > 1:
        found.wrong(f"{where}: {len(active)} live deployments {[d.name for d in active]}")
    running = [d for d in active if d.state == S.DEPLOYMENT_STATE_IN_PROGRESS]
    if running:
        d = running[0]
        weight = d.weight_percent if d.strategy.strategy == dpb.STRATEGY_CANARY else 0
        shaped = (target.deployment, target.candidate.version, target.candidate.weight_percent)
        if shaped != (d.name, d.version, weight) or target.stable.version != d.previous_stable.version:
            found.wrong(
                f"{where}: {shaped} stable {target.stable.version!r}, but {d.name} is in progress {_kinds(d)}"
            )
    elif target.HasField("candidate"):
        found.wrong(f"{where}: a candidate {target.candidate.version} with no deployment in progress")
    if target.HasField("stable") and not running:
        shaping = by_name.get(target.deployment)
        if (
            shaping is None
            or shaping.state != S.DEPLOYMENT_STATE_SUCCEEDED
            or shaping.version != target.stable.version
        ):
            found.wrong(
                f"{where}: stable {target.stable.version} from {target.deployment}, which did not succeed with it"
            )
    # The timelines replayed in revision order put the same version in place.
    moves = sorted(
        (e.revision, d.version)
        for d in here
        for e in d.timeline
        if e.kind == K.DEPLOYMENT_EVENT_KIND_PROMOTED
        or (d.rolled_back_deployment and e.kind == K.DEPLOYMENT_EVENT_KIND_SUCCEEDED)
    )
    if moves and moves[-1][1] != target.stable.version:
        found.wrong(
            f"{where}: stable {target.stable.version!r}, but the timelines last put {moves[-1]} in place"
        )


def check_audit(channel: grpc.Channel, journal: Journal, found: Findings) -> None:
    """One SUCCEEDED audit event per acknowledged mutation, at the revision its answer carried; and the log,
    newest first, never goes back in revisions."""
    access = apb_grpc.AccessServiceStub(channel)
    events = list(_pages(access.ListAuditEvents, apb.ListAuditEventsRequest(page_size=1000), "audit_events"))
    succeeded: dict[tuple[str, str], list[apb.AuditEvent]] = defaultdict(list)
    for e in events:
        if e.outcome == apb.AUDIT_OUTCOME_SUCCEEDED and e.request_id:
            succeeded[(e.principal, e.request_id)].append(e)
    replays = wrong = 0
    for ack in journal.acks:
        revision = made_revision(ack)
        seen = sorted(
            (
                (e.method.rsplit("/", 1)[-1], e.revision)
                for e in succeeded.get((ack.principal, ack.request_id), [])
            ),
            key=lambda s: s[1],
        )
        if seen == [(ack.method, revision)]:
            continue
        if len(seen) > 1 and seen == [(ack.method, 0)] * (len(seen) - 1) + [(ack.method, revision)]:
            replays += 1  # audited once by the write, then once more by each replay of its answer
            continue
        wrong += 1
        if wrong <= 5:
            found.wrong(f"audit of {ack.method} {ack.request_id} (revision {revision}): {seen}")
    if wrong > 5:
        found.wrong(f"... and {wrong - 5} more acknowledged mutations audited other than once")
    if replays:
        found.wrong(
            f"{replays} acknowledged mutations audited more than once: each answer replayed to a retry "
            "with the same request_id wrote another SUCCEEDED audit event, with revision 0"
        )
    revisions = [e.revision for e in events if e.revision]
    if revisions != sorted(revisions, reverse=True) or len(set(revisions)) != len(revisions):
        found.wrong("ListAuditEvents, newest first, goes back and forth in revisions")

"""WatchTargets on SQLite and Postgres: snapshot, changes, progress; the six guarantees; cut-offs."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from dspy_registry.server import watch
from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import access_pb2_grpc as apb_grpc
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from tests.api.conftest import Running, register_signature
from tests.factories import dspy_state

PROGRAM = "watched"
REPLACE = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE)


async def _setup(server: Running) -> dpb_grpc.DeploymentServiceStub:
    await register_signature(server.registry, name="sig")
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        await server.registry.RegisterProgram(
            pb.RegisterProgramRequest(
                spec=pb.ProgramVersionSpec(
                    program=PROGRAM, version=version, signature="signatures/sig/versions/1.0.0"
                ),
                artifact=dspy_state(version),
            )
        )
    return dpb_grpc.DeploymentServiceStub(server.channel)


async def _deploy(deploy: dpb_grpc.DeploymentServiceStub, version: str) -> None:
    await deploy.CreateDeployment(
        dpb.CreateDeploymentRequest(program=PROGRAM, version=version, environment="staging", strategy=REPLACE)
    )


def _watch(
    stub: dpb_grpc.DeploymentServiceStub, start: int = 0, progress: float = 5.0, environment: str = "staging"
) -> Any:
    interval = duration_pb2.Duration()
    interval.FromNanoseconds(int(progress * 1e9))
    request = dpb.WatchTargetsRequest(start_revision=start, progress_interval=interval)
    request.selectors.add(program=PROGRAM, environment=environment)
    return stub.WatchTargets(request)


async def _next(stream: Any) -> dpb.WatchTargetsResponse:
    """The next message (the call's read(); iterating and reading may not be mixed)."""
    message = await stream.read()
    assert message is not grpc.aio.EOF, "the stream ended"  # type: ignore[attr-defined]
    return message  # type: ignore[no-any-return]


async def _changes_until(stream: Any, stable: str) -> list[dpb.WatchTargetsResponse]:
    out = []
    while True:
        message = await _next(stream)
        out.append(message)
        if message.WhichOneof("kind") == "changes" and message.changes.targets[-1].stable.version == stable:
            return out


async def test_snapshot_then_every_change_ordered_unique_atomic_reliable(server: Running) -> None:
    deploy = await _setup(server)
    await _deploy(deploy, "1.0.0")
    stream = _watch(deploy)
    first = await _next(stream)
    assert first.WhichOneof("kind") == "snapshot" and not first.snapshot.reset
    assert [t.stable.version for t in first.snapshot.targets] == ["1.0.0"]
    assert first.snapshot.targets[0].stable.digest.startswith("sha256:")
    for version in ("1.1.0", "1.2.0", "1.0.0", "1.2.0"):
        await _deploy(deploy, version)
    received = await _changes_until(stream, "1.2.0")
    received += (
        await _changes_until(stream, "1.0.0")
        if received[-1].changes.targets[-1].stable.version != "1.2.0"
        else []
    )
    changes = [m for m in received if m.WhichOneof("kind") == "changes"]
    # The log says exactly the same, revision by revision (nothing missed, nothing twice).
    async with server.app.store.read() as tx:
        log = [
            (e.revision, e.data["stable"])
            for e in await tx.events_after(first.revision)
            if e.kind == "target.updated"
            and e.data["program"] == PROGRAM
            and e.data["environment"] == "staging"
        ]
    seen = [(m.revision, t.stable.version) for m in changes for t in m.changes.targets]
    assert seen == log[: len(seen)] and [v for _, v in seen][:2] == ["1.1.0", "1.2.0"]
    revisions = [m.revision for m in received]
    assert revisions == sorted(set(revisions))  # ordered, unique; one message per revision (atomic)


async def test_resuming_from_a_revision_continues_exactly(server: Running) -> None:
    deploy = await _setup(server)
    await _deploy(deploy, "1.0.0")
    stream = _watch(deploy)
    snapshot = await _next(stream)
    for version in ("1.1.0", "1.2.0"):
        await _deploy(deploy, version)
    first_two = await _changes_until(stream, "1.2.0")
    stream.cancel()
    middle = first_two[0].revision
    await _deploy(deploy, "1.0.0")  # while nobody watches
    resumed = await _changes_until(_watch(deploy, start=middle), "1.0.0")
    assert [m.WhichOneof("kind") for m in resumed] == ["changes", "changes"]
    assert [m.changes.targets[0].stable.version for m in resumed] == ["1.2.0", "1.0.0"]
    assert resumed[0].revision == first_two[-1].revision and resumed[0].revision > middle > snapshot.revision
    ahead = _watch(deploy, start=10**9)  # a revision the store never had: a fresh snapshot, flagged
    reset = await _next(ahead)
    assert reset.WhichOneof("kind") == "snapshot" and reset.snapshot.reset
    ahead.cancel()


async def test_progress_bookmarks_when_idle(server: Running) -> None:
    deploy = await _setup(server)
    stream = _watch(deploy, progress=0.1)
    snapshot = await _next(stream)
    await server.registry.RegisterSignature(
        pb.RegisterSignatureRequest(signature="unrelated", version="1.0.0", spec=(await _spec()))
    )
    # Until the commit is handed out, the idle bookmarks say the snapshot's revision (on a loaded
    # machine the register can take longer than the 0.1 s interval): then one says the commit's.
    while (progress := await _next(stream)).revision == snapshot.revision:
        assert progress.WhichOneof("kind") == "progress"
    assert progress.WhichOneof("kind") == "progress" and progress.revision > snapshot.revision
    await _deploy(deploy, "1.1.0")
    while (message := await _next(stream)).WhichOneof("kind") != "changes":
        pass
    assert message.revision > progress.revision  # nothing at or below a bookmark follows it
    stream.cancel()


async def _spec() -> pb.SignatureSpec:
    from tests.factories import spec_proto

    return spec_proto()


def test_a_watcher_that_falls_behind_is_cut_off_without_holding_up_the_others() -> None:
    """The hub's bounded queue: gRPC's own buffers make this slow to provoke over a real stream."""
    from dspy_registry.server.domain.model import Event

    hub = watch.Hub(lambda revision, targets: f"{revision}:{len(targets)}".encode())
    hub.start(0)
    everything = (watch.Selector("*", ""),)
    slow, fast = hub.subscribe(everything), hub.subscribe(everything)
    for revision in range(1, watch.QUEUE_SIZE + 5):
        data = {"program": "p", "environment": "staging", "stable": "1.0.0", "stable_digest": "sha256:x"}
        hub.on_commit(
            [
                Event(
                    kind="target.updated",
                    resource="programs/p/environments/staging/target",
                    data=data,
                    revision=revision,
                )
            ]
        )
        fast.queue.get_nowait()  # this one keeps up
    assert slow.overflowed and slow not in hub.subscribers()  # cut off: it resumes from its last revision
    assert not fast.overflowed and fast in hub.subscribers() and hub.revision == watch.QUEUE_SIZE + 4


async def test_a_large_fan_out_is_handed_out_over_several_turns_in_revision_order() -> None:
    """More watchers than one turn's budget: the rest follow on later turns, never R+1 before R."""
    from dspy_registry.server.domain.model import Event

    hub = watch.Hub(lambda revision, targets: str(revision).encode())
    hub.start(0)
    everything = (watch.Selector("*", ""),)
    subs = [hub.subscribe(everything) for _ in range(watch.DELIVERIES_PER_TURN * 3 + 7)]
    for revision in (1, 2):
        data = {"program": "p", "environment": "staging", "stable": f"1.0.{revision}"}
        hub.on_commit(
            [
                Event(
                    kind="target.updated",
                    resource="programs/p/environments/staging/target",
                    data=data,
                    revision=revision,
                )
            ]
        )
    assert hub.revision == 2 and hub.handed_out == 0  # taken, but not yet in every queue
    assert sum(sub.queue.qsize() for sub in subs) == watch.DELIVERIES_PER_TURN
    while hub.handed_out < 2:
        await asyncio.sleep(0)  # other calls are answered between these turns
    for sub in subs:
        assert [sub.queue.get_nowait()[0], sub.queue.get_nowait()[0]] == [1, 2]


async def test_the_backlog_is_bounded_and_skips_watchers_that_left(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commits faster than the loop hands them out: past the bound every watcher resumes, memory stays put."""
    from dspy_registry.server.domain.model import Event

    monkeypatch.setattr(watch, "MAX_BACKLOG", watch.DELIVERIES_PER_TURN * 4)
    hub = watch.Hub(lambda revision, targets: str(revision).encode())
    hub.start(0)
    everything = (watch.Selector("*", ""),)
    subs = [hub.subscribe(everything) for _ in range(watch.DELIVERIES_PER_TURN * 2)]

    def commit(revision: int) -> None:
        data = {"program": "p", "environment": "staging", "stable": f"1.0.{revision}"}
        hub.on_commit(
            [
                Event(
                    kind="target.updated",
                    resource="programs/p/environments/staging/target",
                    data=data,
                    revision=revision,
                )
            ]
        )

    commit(1)
    leaving = next(s for s in subs if s.queue.empty())  # one the first turn did not reach
    hub.unsubscribe(leaving)
    await asyncio.sleep(0.01)  # later turns hand out the rest, skipping the one that left
    assert leaving.queue.empty() and all(s.queue.qsize() == 1 for s in subs if s is not leaving)
    for revision in range(2, 5):  # no turn in between: the backlog grows past its bound
        commit(revision)
    assert all(s.overflowed for s in subs if s is not leaving) and len(hub) == 0
    assert hub.handed_out == hub.revision == 4  # nothing left waiting


async def test_revoking_read_ends_the_stream(server: Running) -> None:
    deploy = await _setup(server)
    await _deploy(deploy, "1.0.0")
    admin = apb_grpc.AccessServiceStub(server.channel)
    await admin.CreatePrincipal(apb.CreatePrincipalRequest(principal_id="sidecar", principal=apb.Principal()))
    grant = await admin.GrantPermission(
        apb.GrantPermissionRequest(principal="principals/sidecar", action=apb.ACTION_READ, resource="watch*")
    )
    secret = (await admin.CreateToken(apb.CreateTokenRequest(parent="principals/sidecar"))).secret
    channel = server.channel_for(secret)
    try:
        stream = _watch(dpb_grpc.DeploymentServiceStub(channel), progress=0.1)
        assert (await _next(stream)).WhichOneof("kind") == "snapshot"
        other = _watch(dpb_grpc.DeploymentServiceStub(channel))
        other_request_denied = dpb.WatchTargetsRequest()
        other_request_denied.selectors.add(program="ranker")
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await dpb_grpc.DeploymentServiceStub(channel).WatchTargets(other_request_denied).read()
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        other.cancel()
        await admin.RevokePermission(apb.RevokePermissionRequest(name=grant.permission.name))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            while True:
                await _next(stream)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await channel.close(None)


async def test_watch_events_follow_a_deployments_life(server: Running) -> None:
    deploy = await _setup(server)
    request = dpb.WatchEventsRequest()
    request.selectors.add(program=PROGRAM)
    stream = deploy.WatchEvents(request)
    snapshot = await stream.read()
    assert snapshot.WhichOneof("kind") == "snapshot"
    canary = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_CANARY)
    canary.canary.steps.add(weight_percent=10).pause.FromMilliseconds(50)
    canary.canary.steps.add(weight_percent=50).pause.FromMilliseconds(50)
    created = await deploy.CreateDeployment(
        dpb.CreateDeploymentRequest(program=PROGRAM, version="1.1.0", environment="staging", strategy=canary)
    )
    kinds: list[int] = []
    revisions: list[int] = []
    while dpb.DEPLOYMENT_EVENT_KIND_SUCCEEDED not in kinds:
        message = await stream.read()
        if message.WhichOneof("kind") != "events":
            continue
        revisions.append(message.revision)
        for event in message.events.events:
            assert event.deployment == created.deployment.name and event.program == PROGRAM
            kinds.append(event.kind)
    stream.cancel()
    assert kinds == [
        dpb.DEPLOYMENT_EVENT_KIND_CREATED,
        dpb.DEPLOYMENT_EVENT_KIND_STEP_ADVANCED,
        dpb.DEPLOYMENT_EVENT_KIND_PROMOTED,
        dpb.DEPLOYMENT_EVENT_KIND_SUCCEEDED,
    ]
    assert revisions == sorted(set(revisions))
    only = dpb.WatchEventsRequest(
        start_revision=snapshot.revision, kinds=[dpb.DEPLOYMENT_EVENT_KIND_SUCCEEDED]
    )
    only.selectors.add(program=PROGRAM)
    replay = deploy.WatchEvents(only)
    first = await replay.read()
    assert [e.kind for e in first.events.events] == [
        dpb.DEPLOYMENT_EVENT_KIND_SUCCEEDED
    ]  # resumed from the log
    replay.cancel()


async def test_watch_events_refuses_an_unknown_kind(server: Running) -> None:
    # WatchEvents checks its kinds before it hands over its stream, not in the stream's first step:
    # the refusal is the same, and the stream serves nothing.
    deploy = await _setup(server)
    request = dpb.WatchEventsRequest()
    request.kinds.append(999)  # type: ignore[arg-type]  # a number this release has no kind for
    request.selectors.add(program=PROGRAM)
    stream = deploy.WatchEvents(request)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stream.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown event kind 999" in (err.value.details() or "")
    assert len(server.app.services.hubs["events"]) == 0  # nobody subscribed


async def test_resuming_from_a_compacted_revision_gets_a_fresh_snapshot(server: Running) -> None:
    from dspy_registry.server.maintenance import Maintenance

    deploy = await _setup(server)
    await _deploy(deploy, "1.0.0")
    stream = _watch(deploy)
    old = (await _next(stream)).revision
    stream.cancel()
    await _deploy(deploy, "1.1.0")
    await asyncio.sleep(0.05)
    await Maintenance(server.app.store, request_retention=3600, event_retention=0.01).run_once()
    resumed = _watch(deploy, start=old)
    first = await _next(resumed)
    assert first.WhichOneof("kind") == "snapshot" and first.snapshot.reset
    assert first.snapshot.compact_revision >= old and first.snapshot.targets[0].stable.version == "1.1.0"
    resumed.cancel()

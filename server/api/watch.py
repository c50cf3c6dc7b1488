"""WatchTargets: a snapshot (or the log since `start_revision`), then every change as it commits.

The guarantees, as etcd's: revisions increase (ordered), no change twice
(unique), one revision's changes in one message (atomic), no gaps
(reliable), a stream resumed from its last revision continues exactly
(resumable), and after a progress message for revision R no change at or
below R follows (bookmarkable).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from dspy_registry.v1 import deployment_pb2 as pb

from ..domain.access import ALL, Action, check_glob
from ..domain.deployments import Pinned, Target
from ..domain.names import check_name
from ..errors import InvalidArgument, ResourceExhausted, StoreUnavailable
from ..store.base import Store
from ..watch import Hub, Selector, Subscriber, target_from_event
from .convert import timestamp
from .guard import Guard, identity

DEFAULT_PROGRESS_SECONDS = 5.0
MIN_PROGRESS_SECONDS = 0.05
LOG_PAGE = 1000


def pinned_proto(p: Pinned) -> pb.TargetVersion:
    return pb.TargetVersion(version=p.version, digest=p.digest)


def target_proto(t: Target) -> pb.Target:
    out = pb.Target(
        name=t.resource_name, program=t.program, environment=t.environment, revision=t.revision, etag=t.etag
    )
    if t.stable:
        out.stable.CopyFrom(pinned_proto(t.stable))
    if t.candidate:
        out.candidate.CopyFrom(
            pb.CandidateVersion(
                version=t.candidate.version, digest=t.candidate.digest, weight_percent=t.candidate_weight
            )
        )
    if t.deployment:
        out.deployment = f"deployments/{t.deployment}"
    if t.update_time:
        out.update_time.CopyFrom(timestamp(t.update_time))
    return out


def encode_changes(revision: int, targets: Sequence[Target]) -> bytes:
    message = pb.WatchTargetsResponse(
        revision=revision, changes=pb.TargetChanges(targets=[target_proto(t) for t in targets])
    )
    return message.SerializeToString()


def _progress(revision: int) -> bytes:
    now = timestamp_pb2.Timestamp()
    now.FromDatetime(datetime.now(UTC))
    return pb.WatchTargetsResponse(revision=revision, progress=pb.WatchProgress(time=now)).SerializeToString()


def _selectors(request: pb.WatchTargetsRequest) -> tuple[Selector, ...]:
    out = []
    for i, s in enumerate(request.selectors):
        program = s.program.removeprefix("programs/") or ALL
        check_glob(program, f"selectors[{i}].program")
        environment = s.environment.removeprefix("environments/")
        if environment:
            check_name(environment, f"selectors[{i}].environment")
        out.append(Selector(program, environment))
    if len(out) > 100:
        raise InvalidArgument.one("selectors", "at most 100 selectors")
    return tuple(out)


class TargetWatch:
    def __init__(self, store: Store, hub: Hub, guard: Guard) -> None:
        self.store = store
        self.hub = hub
        self.guard = guard

    async def _authorize(self, selectors: tuple[Selector, ...]) -> tuple[Selector, ...]:
        """Read on every selected program; no selectors: everything the caller may read."""
        if selectors:
            await self.guard.authorize_resource(Action.READ, [s.program for s in selectors])
            return selectors
        visible = await self.guard.readable(identity())
        await self.guard.authorize_resource(Action.READ, [])  # nothing to check: lists filter
        return tuple(Selector(g, "") for g in (visible if visible is not None else [ALL]))

    async def stream(self, request: pb.WatchTargetsRequest) -> AsyncIterator[bytes]:
        if request.start_revision < 0:
            raise InvalidArgument.one("start_revision", "must not be negative")
        interval = DEFAULT_PROGRESS_SECONDS
        if request.HasField("progress_interval"):
            interval = max(MIN_PROGRESS_SECONDS, request.progress_interval.ToNanoseconds() / 1e9)
        asked = _selectors(request)
        selectors = await self._authorize(asked)
        sub = self.hub.subscribe(selectors)  # first: nothing that commits from now on is missed
        try:
            last = request.start_revision
            if last == 0 or last > self.hub.revision:
                revision, targets = await self._snapshot()
                chosen = [t for t in targets if sub.matches(t)]
                snapshot = pb.TargetSnapshot(targets=[target_proto(t) for t in chosen], reset=last > 0)
                yield pb.WatchTargetsResponse(revision=revision, snapshot=snapshot).SerializeToString()
                last = revision
            else:
                async for revision, message in self._since(last, sub):
                    yield message
                    last = revision
            async for message in self._live(sub, last, interval, asked):
                yield message
        finally:
            self.hub.unsubscribe(sub)

    async def _snapshot(self) -> tuple[int, list[Target]]:
        async with self.store.read() as tx:
            return await tx.targets_snapshot()

    async def _since(self, after: int, sub: Subscriber) -> AsyncIterator[tuple[int, bytes]]:
        """The log's changes after `after`, a revision per message, up to what the hub has handed out."""
        while after < self.hub.revision:
            async with self.store.read() as tx:
                events = await tx.events_after(after, limit=LOG_PAGE)
            if not events:
                break
            by_revision: dict[int, list[Target]] = {}
            for e in events:
                if e.kind == "target.updated":
                    t = target_from_event(e)
                    if sub.matches(t):
                        by_revision.setdefault(e.revision, []).append(t)
            for revision, targets in sorted(by_revision.items()):
                yield revision, encode_changes(revision, targets)
            after = events[-1].revision

    async def _live(
        self, sub: Subscriber, last: int, interval: float, asked: tuple[Selector, ...]
    ) -> AsyncIterator[bytes]:
        while True:
            try:
                revision, message = await asyncio.wait_for(sub.queue.get(), interval)
            except TimeoutError:
                if sub.queue.empty():  # everything up to the hub's revision was handed out
                    last = max(last, self.hub.revision)
                    yield _progress(last)
                continue
            if sub.overflowed:
                raise ResourceExhausted(
                    "watch_queue",
                    f"this watcher fell {sub.queue.maxsize} revisions behind; resume from revision {last}",
                )
            if sub.lost:
                raise StoreUnavailable(f"the server may have missed changes; resume from revision {last}")
            if sub.recheck:
                sub.recheck = False
                await self._authorize(asked)  # PERMISSION_DENIED ends the stream
            if revision <= last:
                continue  # already sent (from the log), or a wake-up
            last = revision
            yield message

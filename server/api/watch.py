"""WatchTargets: a snapshot (or the log since `start_revision`), then every change as it commits.

The guarantees, as etcd's: revisions increase (ordered), no change twice
(unique), one revision's changes in one message (atomic), no gaps
(reliable), a stream resumed from its last revision continues exactly
(resumable), and after a progress message for revision R no change at or
below R follows (bookmarkable).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2

from dspy_registry.v1 import deployment_pb2 as pb

from ..domain.access import ALL, Action, check_glob, principal_name
from ..domain.deployments import Target
from ..domain.model import by_revision
from ..domain.names import check_name
from ..errors import InvalidArgument, RegistryError, ResourceExhausted, ShuttingDown, StoreUnavailable
from ..usecases.watches import Watches
from ..watch import DeploymentEvent, Hub, Selector, Subscriber
from .convert.common import timestamp
from .convert.deployment import deployment_proto, target_proto
from .flow import SHUTDOWN_RETRY_SECONDS, current_stream
from .guard import Guard, identity

DEFAULT_PROGRESS_SECONDS = 5.0
MIN_PROGRESS_SECONDS = 0.05
LOG_PAGE = 1000
CATCH_UP_SECONDS = 5.0  # how long a resuming watcher waits for this replica to hear of its revision


def encode_changes(revision: int, targets: Sequence[Target]) -> bytes:
    message = pb.WatchTargetsResponse(
        revision=revision, changes=pb.TargetChanges(targets=[target_proto(t) for t in targets])
    )
    return message.SerializeToString()


def _selectors(request: Any) -> tuple[Selector, ...]:
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


class _Watch:
    """What both watches share: authorize, subscribe first, catch up (snapshot or log), then live."""

    response: Any  # the response message class
    hub: Hub

    def __init__(self, watches: Watches, hub: Hub, guard: Guard) -> None:
        self.watches = watches
        self.hub = hub
        self.guard = guard

    async def _authorize(self, selectors: tuple[Selector, ...]) -> tuple[Selector, ...]:
        """Read on every selected program; no selectors: everything the caller may read."""
        if selectors:
            await self.guard.authorize_resource(Action.READ, [s.program for s in selectors])
            return selectors
        visible = await self.guard.readable(identity())
        await self.guard.authorize_resource(Action.READ, [])  # nothing to check: the stream filters
        return tuple(Selector(g, "") for g in (visible if visible is not None else [ALL]))

    async def stream(self, request: Any, kinds: frozenset[str] = frozenset()) -> AsyncIterator[bytes]:
        if request.start_revision < 0:
            raise InvalidArgument.one("start_revision", "must not be negative")
        interval = DEFAULT_PROGRESS_SECONDS
        if request.HasField("progress_interval"):
            interval = max(MIN_PROGRESS_SECONDS, request.progress_interval.ToNanoseconds() / 1e9)
        asked = _selectors(request)
        selectors = await self._authorize(asked)
        sub = self.hub.subscribe(selectors, kinds)  # first: nothing that commits from now on is missed
        stream = current_stream.get()
        if stream is not None:
            sub.on_cut = lambda: stream.end(_ending(sub) or ShuttingDown("the watch ended"))
        try:
            compacted = await self.watches.compacted_revision()
            last = sub.last = request.start_revision
            if last > self.hub.revision and last >= compacted:
                await self._hear_of(last)
            if last == 0 or last > self.hub.revision or last < compacted:
                revision, message = await self._snapshot(sub, reset=last > 0, compacted=compacted)
                yield message
                last = sub.last = revision
            else:
                async for revision, message in self._since(last, sub):
                    yield message
                    last = sub.last = revision
            # Live: the hub's messages from the mailbox. Written here, not in a generator of its own
            # that this one re-yields, and awaiting the mailbox's future rather than a coroutine: a
            # layer costs on every message of every stream (at 10 000 streams the server's CPU per
            # delivery in frames and generators went from 7.7 to 6.2 µs, docs/performance.md).
            queue = sub.queue
            hub = self.hub
            while True:
                if queue.empty():
                    await queue.wait(interval)
                    if queue.empty():  # nothing came, and nothing up to handed_out is still to come
                        last = sub.last = max(last, hub.handed_out)
                        yield self._progress(last)
                        continue
                revision, message = queue.get_nowait()
                if sub.overflowed or sub.lost or sub.closed:
                    raise _ending(sub) or ShuttingDown("the watch ended")
                if sub.recheck:
                    sub.recheck = False
                    await self._authorize(asked)  # PERMISSION_DENIED ends the stream
                if revision <= last:
                    continue  # already sent (from the log), or a wake-up
                last = sub.last = revision
                yield message
        finally:
            self.hub.unsubscribe(sub)

    async def _hear_of(self, revision: int) -> None:
        """A revision ahead of this replica's hub: if the store has it (another replica committed it
        a moment ago), wait for the hub to hear of it, so that the watcher gets the changes after it
        and not a snapshot flagged `reset` (kept for a revision compacted away or never committed)."""
        current = await self.watches.current_revision()
        if revision <= current and not await self.hub.reached(revision, CATCH_UP_SECONDS):
            raise StoreUnavailable(
                f"this replica has not heard of revision {revision} yet; resume from it again"
            )

    async def _snapshot(self, sub: Subscriber, reset: bool, compacted: int) -> tuple[int, bytes]:
        raise NotImplementedError

    async def _since(self, after: int, sub: Subscriber) -> AsyncIterator[tuple[int, bytes]]:
        """The log's items after `after`, a revision per message, up to what the hub has handed out."""
        while after < self.hub.revision:
            events = await self.watches.events_after(after, limit=LOG_PAGE)
            if not events:
                break
            # Extracted a revision at a time, as the hub does: an event's id is its index in its revision.
            for revision, group in by_revision(events):
                items = [item for item in self.hub.extract(group) if sub.matches(item)]
                if items:
                    yield revision, self.hub.encode(revision, items)
            after = events[-1].revision

    def _progress(self, revision: int) -> bytes:
        now = timestamp_pb2.Timestamp()
        now.FromDatetime(datetime.now(UTC))
        return bytes(
            self.response(revision=revision, progress=pb.WatchProgress(time=now)).SerializeToString()
        )


def _ending(sub: Subscriber) -> RegistryError | None:
    """Why the hub let `sub` go, as its stream ends with it; None while it is kept."""
    if sub.closed:
        return ShuttingDown(
            f"the server is shutting down; resume from revision {sub.last} (another replica serves it)",
            retry_after=SHUTDOWN_RETRY_SECONDS,
        )
    if sub.overflowed:
        return ResourceExhausted(
            "watch_queue",
            f"this watcher fell {sub.queue.maxsize} revisions behind; resume from revision {sub.last}",
        )
    if sub.lost:
        return StoreUnavailable(f"the server may have missed changes; resume from revision {sub.last}")
    return None


class TargetWatch(_Watch):
    response = pb.WatchTargetsResponse

    async def _snapshot(self, sub: Subscriber, reset: bool, compacted: int) -> tuple[int, bytes]:
        revision, targets = await self.watches.targets()
        chosen = [target_proto(t) for t in targets if sub.matches(t)]
        snapshot = pb.TargetSnapshot(targets=chosen, reset=reset, compact_revision=compacted)
        return revision, pb.WatchTargetsResponse(revision=revision, snapshot=snapshot).SerializeToString()


class EventWatch(_Watch):
    response = pb.WatchEventsResponse

    async def _snapshot(self, sub: Subscriber, reset: bool, compacted: int) -> tuple[int, bytes]:
        revision, live = await self.watches.live_deployments()
        chosen = [deployment_proto(d) for d in live if any(s.matches(d) for s in sub.selectors)]
        snapshot = pb.DeploymentSnapshot(deployments=chosen, reset=reset, compact_revision=compacted)
        return revision, pb.WatchEventsResponse(revision=revision, snapshot=snapshot).SerializeToString()


def encode_events(revision: int, events: Sequence[DeploymentEvent]) -> bytes:
    out = pb.WatchEventsResponse(revision=revision)
    for e in events:
        message = out.events.events.add(
            id=e.id,
            kind=int(e.kind),  # deployments.Kind holds the proto's numbers
            revision=e.revision,
            deployment=e.deployment,
            program=e.program,
            environment=e.environment,
            version=e.version,
            state=getattr(pb, f"DEPLOYMENT_STATE_{e.state}", 0),
            step=e.step,
            weight_percent=e.weight_percent,
            actor=principal_name(e.actor),
            reason=e.reason,
            related_deployment=e.related,
        )
        if e.time is not None:
            message.time.CopyFrom(timestamp(e.time))
    return out.SerializeToString()

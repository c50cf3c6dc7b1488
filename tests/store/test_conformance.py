"""The store conformance suite: written once, run on SQLite and on Postgres.

A backend that passes it is a backend. Each test gets a fresh, migrated
database (see tests/conftest.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from dspy_registry.server.calls import Call
from dspy_registry.server.domain import versions
from dspy_registry.server.domain.access import AuditFilter
from dspy_registry.server.domain.health import Window
from dspy_registry.server.domain.model import Event, Page, ProgramVersion, SignatureVersion
from dspy_registry.server.domain.programs import DSPY_MEDIA_TYPE, PredictorSummary, ProgramDraft, digest_of
from dspy_registry.server.domain.rollups import Rollup
from dspy_registry.server.domain.sidecars import Applied, Report, report_to_json, serving_counts
from dspy_registry.server.domain.versions import ChangeType
from dspy_registry.server.errors import NotFound
from dspy_registry.server.store import migrations
from dspy_registry.server.store.backends import open_store
from dspy_registry.server.store.base import Store
from dspy_registry.server.store.migrations import MIGRATIONS
from dspy_registry.server.store.sql import to_json, to_us
from dspy_registry.server.usecases.artifacts import InMemory
from dspy_registry.server.usecases.registry import RegisteredProgram, Registry, SignatureDraft
from tests.clock import FakeClock
from tests.factories import dspy_state, spec

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _sv(version: str, revision: int = 1) -> SignatureVersion:
    return SignatureVersion(
        signature="sig",
        version=version,
        spec=spec(),
        metadata={"team": "ml"},
        previous_version="",
        compatibility=None,
        creator="alice",
        create_time=NOW,
        revision=revision,
    )


def _pv(
    version: str, digest: str, *, program: str = "prog", labels: dict[str, str] | None = None
) -> ProgramVersion:
    return ProgramVersion(
        program=program,
        version=version,
        digest=digest,
        size_bytes=3,
        media_type="application/octet-stream",
        signature="sig",
        signature_version="1.0.0",
        performance={"accuracy": 0.9},
        labels=labels or {"team": "ml"},
        metadata={"changelog": "x"},
        previous_version="",
        change_type=None,
        predictors=(PredictorSummary(name="predict", instructions="do it", demo_count=2, field_count=2),),
        yanked=False,
        yank_reason="",
        creator="alice",
        create_time=NOW,
        revision=1,
    )


async def _seed_program(
    store: Store, program: str, version_list: list[str], labels: dict[str, str] | None = None
) -> None:
    async with store.write() as tx:
        if await tx.get_signature_version("sig", "1.0.0") is None:
            await tx.insert_signature_version(_sv("1.0.0"), versions.parse("1.0.0").sort_key)
        for v in version_list:
            data = f"{program}-{v}".encode()
            await tx.put_artifact(digest_of(data), [data])
            parsed = versions.parse(v)
            await tx.insert_program_version(
                _pv(v, digest_of(data), program=program, labels=labels), parsed.sort_key, parsed.is_prerelease
            )
        await tx.append([Event(kind="test.seeded", resource=f"programs/{program}")])


# -- migrations, revisions, the event log ------------------------------------------------


async def test_migrations_are_recorded_and_reopening_applies_nothing(database_url: str, store: Store) -> None:
    async with store.read() as tx:
        rows = await tx.conn.fetch("SELECT number FROM schema_migrations ORDER BY number")
    assert [r["number"] for r in rows] == [m.number for m in MIGRATIONS]
    await store.close()
    again = open_store(database_url)
    await again.open()
    async with again.read() as tx:
        assert len(await tx.conn.fetch("SELECT number FROM schema_migrations")) == len(MIGRATIONS)
    await again.close()
    await store.open()  # the fixture closes it again


async def test_each_write_takes_the_next_revision_and_logs_its_events(store: Store) -> None:
    async with store.read() as tx:
        assert await tx.current_revision() == 0
    for i in range(3):
        async with store.write() as tx:
            revision = await tx.append(
                [Event(kind="a", resource=f"r/{i}"), Event(kind="b", resource=f"r/{i}")]
            )
            assert revision == i + 1
    async with store.read() as tx:
        assert await tx.current_revision() == 3
        events = await tx.events_after(0)
        assert [(e.revision, e.kind) for e in events] == [
            (1, "a"),
            (1, "b"),
            (2, "a"),
            (2, "b"),
            (3, "a"),
            (3, "b"),
        ]
        assert [e.revision for e in await tx.events_after(2)] == [3, 3]
        # A page the limit cuts inside a revision brings the whole revision: never half of one.
        assert await tx.events_after(0, limit=3) == events[:4]
        assert [e.revision for e in await tx.events_after(0, limit=2)] == [1, 1]


async def test_a_failed_transaction_leaves_no_trace(store: Store) -> None:
    with pytest.raises(RuntimeError):
        async with store.write() as tx:
            await tx.insert_signature_version(_sv("1.0.0"), versions.parse("1.0.0").sort_key)
            await tx.append([Event(kind="signature.registered", resource="signatures/sig/versions/1.0.0")])
            raise RuntimeError("precondition failed late")
    async with store.read() as tx:
        assert await tx.current_revision() == 0
        assert await tx.events_after(0) == []
        assert await tx.get_signature_version("sig", "1.0.0") is None
    async with store.write() as tx:
        assert await tx.append([Event(kind="x", resource="y")]) == 1


async def test_a_transaction_without_events_does_not_consume_a_revision(store: Store) -> None:
    async with store.write() as tx:
        await tx.put_request("p", "r1", "M", "fp", b"answer")
    async with store.read() as tx:
        assert await tx.current_revision() == 0
        stored = await tx.get_request("p", "r1")
    assert stored is not None and stored.response == b"answer" and stored.fingerprint == "fp"


async def test_concurrent_writes_commit_revisions_in_order_without_gaps(store: Store) -> None:
    async def one(i: int) -> int:
        async with store.write() as tx:
            await asyncio.sleep(0)  # let the others queue up behind the lock
            return await tx.append([Event(kind="e", resource=f"r/{i}")])

    revisions = await asyncio.gather(*(one(i) for i in range(40)))
    assert sorted(revisions) == list(range(1, 41))
    async with store.read() as tx:
        logged = [e.revision for e in await tx.events_after(0, limit=100)]
    assert logged == list(range(1, 41))


# -- signatures --------------------------------------------------------------------------


async def test_signature_versions_latest_predecessor_and_listing(store: Store) -> None:
    texts = ["1.0.0", "1.1.0", "2.0.0-rc.1", "1.10.0", "0.9.0"]
    async with store.write() as tx:
        for i, v in enumerate(texts):
            await tx.insert_signature_version(_sv(v, i + 1), versions.parse(v).sort_key)
    async with store.read() as tx:
        latest = await tx.latest_signature_version("sig")
        assert latest is not None and latest.version == "1.10.0"  # releases beat a pre-release
        below = await tx.signature_version_below("sig", versions.parse("1.10.0").sort_key)
        assert below is not None and below.version == "1.1.0"
        assert await tx.highest_signature_release("sig") == "1.10.0"
        got = await tx.get_signature_version("sig", "1.0.0")
        assert got is not None and got.spec == spec() and got.metadata == {"team": "ml"}
        page1, after, total = await tx.list_signature_versions("sig", Page(2))
        assert total == 5 and [s.version for s in page1] == ["2.0.0-rc.1", "1.10.0"]
        page2, after2, _ = await tx.list_signature_versions("sig", Page(2, after))
        page3, after3, _ = await tx.list_signature_versions("sig", Page(2, after2))
        assert [s.version for s in page2 + page3] == ["1.1.0", "1.0.0", "0.9.0"] and after3 is None
        summaries, _, count = await tx.list_signatures("", None, Page(10))
        assert count == 1 and summaries[0].latest_version == "1.10.0" and summaries[0].version_count == 5


# -- programs and artifacts ---------------------------------------------------------------


async def test_program_versions_order_by_semver_precedence(store: Store) -> None:
    order = [
        "2.0.0",
        "2.0.0-rc.2",
        "2.0.0-rc.1",
        "2.0.0-beta.11",
        "2.0.0-beta.2",
        "2.0.0-alpha",
        "1.10.0",
        "1.9.1",
    ]
    await _seed_program(store, "prog", list(reversed(order)))
    async with store.read() as tx:
        listed, _, total = await tx.list_program_versions("prog", Page(50))
        summary = await tx.get_program("prog")
    assert [v.version for v in listed] == order and total == len(order)
    assert summary is not None and summary.latest_version == "2.0.0" and summary.version_count == len(order)


async def test_yanking_moves_latest_and_is_kept(store: Store) -> None:
    await _seed_program(store, "prog", ["1.0.0", "1.1.0", "1.2.0-rc.1"])
    async with store.write() as tx:
        await tx.set_yanked("prog", "1.1.0", True, "bad demos", tx.next_revision)
        await tx.append([Event(kind="program_version.yanked", resource="programs/prog/versions/1.1.0")])
    async with store.read() as tx:
        latest = await tx.latest_program_version("prog")
        yanked = await tx.get_program_version("prog", "1.1.0")
        assert latest is not None and latest.version == "1.0.0"
        assert (
            yanked is not None
            and yanked.yanked
            and yanked.yank_reason == "bad demos"
            and yanked.revision == 2
        )
        assert await tx.highest_program_release("prog") == "1.1.0"  # yanked numbers are never reused
    async with store.write() as tx:
        await tx.set_yanked("prog", "1.0.0", True, "also bad", tx.next_revision)
        await tx.append([Event(kind="program_version.yanked", resource="programs/prog/versions/1.0.0")])
    async with store.read() as tx:
        latest = await tx.latest_program_version("prog")
        assert latest is not None and latest.version == "1.2.0-rc.1"  # only a pre-release is left


async def test_artifacts_are_stored_once_per_digest_in_chunks(store: Store) -> None:
    data = bytes(range(256)) * 8192  # 2 MiB: two chunks
    chunks = [data[: 1 << 20], data[1 << 20 :]]
    digest = digest_of(data)
    async with store.write() as tx:
        await tx.put_artifact(digest, chunks)
        await tx.put_artifact(digest, chunks)  # same digest: a no-op
        await tx.insert_signature_version(_sv("1.0.0"), versions.parse("1.0.0").sort_key)
        await tx.insert_program_version(_pv("1.0.0", digest), versions.parse("1.0.0").sort_key, False)
        await tx.insert_program_version(_pv("1.0.1", digest), versions.parse("1.0.1").sort_key, False)
    async with store.read() as tx:
        count = await tx.artifact_chunk_count("prog", digest)
        assert count == 2
        assert b"".join([await tx.artifact_chunk(digest, i) for i in range(2)]) == data
        assert await tx.artifact_chunk_count("other", digest) is None
        rows = await tx.conn.fetch("SELECT COUNT(*) AS n FROM artifacts")
        assert rows[0]["n"] == 1


async def test_list_programs_filters_by_prefix_and_labels_with_total(store: Store) -> None:
    for i in range(7):
        team = "ml_platform" if i % 2 == 0 else "search"
        await _seed_program(store, f"sentiment_{i}", ["1.0.0"], {"team": team, "domain": "feedback"})
    await _seed_program(store, "ranker", ["1.0.0"], {"team": "ml_platform"})
    async with store.read() as tx:
        items, after, total = await tx.list_programs("sentiment_", {"team": "ml_platform"}, None, Page(3))
        assert total == 4 and [p.program for p in items] == ["sentiment_0", "sentiment_2", "sentiment_4"]
        rest, end, _ = await tx.list_programs("sentiment_", {"team": "ml_platform"}, None, Page(3, after))
        assert [p.program for p in rest] == ["sentiment_6"] and end is None
        _, _, all_ml = await tx.list_programs("", {"team": "ml_platform"}, None, Page(50))
        assert all_ml == 5
        # "_" in a prefix is a literal, not a LIKE wildcard
        _, _, none = await tx.list_programs("sentiment0", {}, None, Page(50))
        assert none == 0
        # Only what the caller may read: globs, and nothing at all.
        seen, _, count = await tx.list_programs("", {}, ["sentiment_1", "sent*_3", "rank*"], Page(50))
        assert [p.program for p in seen] == ["ranker", "sentiment_1", "sentiment_3"] and count == 3
        _, _, zero = await tx.list_programs("", {}, [], Page(50))
        assert zero == 0
        # "_" in a glob is literal too: sentiment_* must not match "sentimentX1"


# -- the registry's transactions on each backend -------------------------------------------


def _as(principal: str) -> Call:
    """A call by `principal` that is no RPC's: nothing audits it."""
    return Call(method="", principal=principal, token="", resource="", request_id="", peer="", mutation=False)


async def _registry_with_signature(store: Store) -> Registry:
    registry = Registry(store)
    await registry.register_signature(
        _as("alice"),
        SignatureDraft(signature="sig", version="1.0.0", change_type=None, spec=spec(), metadata={}),
        None,
    )
    return registry


def _draft(version: str = "", change: int | None = None) -> ProgramDraft:
    return ProgramDraft(
        program="prog",
        version=version,
        change_type=change,
        media_type=DSPY_MEDIA_TYPE,
        signature="signatures/sig/versions/1.0.0",
        performance={"accuracy": 0.9},
    )


async def test_sixteen_concurrent_registrations_are_unique_and_gapless(store: Store) -> None:
    registry = await _registry_with_signature(store)
    await registry.register_program(_as("a"), _draft("1.0.0"), InMemory(dspy_state("base")), None)

    async def explicit(i: int) -> RegisteredProgram:
        result = await registry.register_program(
            _as("a"), _draft(f"1.0.{100 + i}"), InMemory(dspy_state(f"e{i}")), None
        )
        assert isinstance(result, RegisteredProgram)
        return result

    async def auto(i: int) -> RegisteredProgram:
        result = await registry.register_program(
            _as("a"), _draft(change=ChangeType.MINOR), InMemory(dspy_state(f"a{i}")), None
        )
        assert isinstance(result, RegisteredProgram)
        return result

    results = await asyncio.gather(*(explicit(i) for i in range(8)), *(auto(i) for i in range(8)))
    got = [r.program_version.version for r in results]
    assert len(set(got)) == 16
    minors = sorted(
        versions.parse(v).info.minor for v in got if v.endswith(".0") and not v.startswith("1.0.")
    )
    assert minors == list(range(1, 9))  # 1.1.0 … 1.8.0: no gaps, no duplicates
    async with store.read() as tx:
        revisions = [e.revision for e in await tx.events_after(0)]
    assert revisions == list(range(1, 19))  # 1 signature + 17 versions, strictly increasing


async def test_missing_signature_is_not_found_and_writes_nothing(store: Store) -> None:
    registry = Registry(store)
    with pytest.raises(NotFound):
        await registry.register_program(_as("a"), _draft("1.0.0"), InMemory(dspy_state()), None)
    async with store.read() as tx:
        assert await tx.current_revision() == 0
        assert await tx.get_program("prog") is None


async def test_a_caller_cancelled_mid_transaction_leaves_no_trace_and_blocks_nobody(store: Store) -> None:
    entered = asyncio.Event()

    async def slow_writer() -> None:
        async with store.write() as tx:
            await tx.append([Event(kind="doomed", resource="r/1")])
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(slow_writer())
    await entered.wait()
    follower = asyncio.create_task(_append_one(store, "r/2"))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.wait_for(follower, 5) == 1
    async with store.read() as tx:
        assert [(e.revision, e.kind) for e in await tx.events_after(0)] == [(1, "kept")]


async def _append_one(store: Store, resource: str) -> int:
    async with store.write() as tx:
        return await tx.append([Event(kind="kept", resource=resource)])


async def test_idempotency_records_older_than_the_retention_are_pruned(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In steps of a transaction each (here of one record), the oldest first, until none is left."""
    from dspy_registry.server import maintenance as housekeeping
    from dspy_registry.server.maintenance import Maintenance

    for i in range(3):
        async with store.write() as tx:
            await tx.put_request("p", f"old-{i}", "M", "fp", b"first answer")
    async with store.write() as tx:
        assert await tx.prune_requests(to_us(datetime.now(UTC)), 2) == 2
    async with store.read() as tx:
        assert [await tx.get_request("p", f"old-{i}") is None for i in range(3)] == [True, True, False]
    async with store.write() as tx:
        await tx.put_request("p", "old", "M", "fp", b"first answer")
    monkeypatch.setattr(housekeeping, "REQUESTS_PER_STEP", 1)
    await asyncio.sleep(0.002)
    boundary = datetime.now(UTC)  # older records go, newer stay: a clock set a retention past it
    await asyncio.sleep(0.002)
    async with store.write() as tx:
        await tx.put_request("p", "new", "M", "fp", b"second answer")
    await Maintenance(
        store, request_retention=60, clock=FakeClock(boundary + timedelta(seconds=60))
    ).run_once()
    async with store.read() as tx:
        assert await tx.get_request("p", "old") is None
        assert await tx.get_request("p", "old-2") is None
        assert await tx.get_request("p", "new") is not None
        assert await tx.current_revision() == 0  # housekeeping is not a change anyone watches


async def test_compaction_drops_old_revisions_and_says_where_the_log_starts(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In steps of a transaction each (here of two revisions), until every old one is gone."""
    from dspy_registry.server import maintenance as housekeeping
    from dspy_registry.server.maintenance import Maintenance

    for i in range(3):
        async with store.write() as tx:
            await tx.append([Event(kind="old", resource=f"r/{i}")])
    await asyncio.sleep(0.002)
    boundary = datetime.now(UTC)  # older events go, newer stay: a clock set a retention past it
    await asyncio.sleep(0.002)
    async with store.write() as tx:
        await tx.append([Event(kind="new", resource="r/9")])
        assert await tx.compact_events(to_us(boundary), 1) == 1
    monkeypatch.setattr(housekeeping, "REVISIONS_PER_STEP", 2)
    maintenance = Maintenance(
        store, request_retention=3600, event_retention=60, clock=FakeClock(boundary + timedelta(seconds=60))
    )
    await maintenance.run_once()
    async with store.read() as tx:
        assert await tx.compacted_revision() == 3
        assert [e.revision for e in await tx.events_after(0)] == [4]
        assert await tx.current_revision() == 4  # compaction is no change anyone watches


def _sidecar_report(sidecar: str, heartbeat: float, *targets: tuple[str, str, str]) -> Report:
    applied = tuple(
        Applied(
            program=p,
            environment=e,
            version=v,
            digest="sha256:" + "a" * 64,
            acked=True,
            error_code=0,
            error_message="",
            revision=3,
            apply_time=NOW,
        )
        for p, e, v in targets
    )
    return Report(
        sidecar_id=sidecar,
        principal="svc",
        targets=applied,
        heartbeat_seconds=heartbeat,
        time=NOW,
        revision=3,
    )


async def test_sidecar_presence_is_a_row_per_replica_that_heard_it_and_expires_as_promised(
    store: Store,
) -> None:
    until = NOW + timedelta(seconds=40)
    a = _sidecar_report("pod-a", 10, ("p", "staging", "1.0.0"), ("q", "staging", "2.0.0"))
    b = _sidecar_report("pod-b", 1, ("p", "staging", "1.0.0"))
    async with store.telemetry() as tx:
        await tx.put_presence([(a, until), (b, NOW)], "r1", targets_of={"pod-a", "pod-b"})
    moved = replace(_sidecar_report("pod-a", 10, ("p", "staging", "1.1.0")), time=NOW + timedelta(seconds=1))
    async with store.telemetry() as tx:
        # r2 heard pod-a later, serving p only: a row of its own beside r1's.
        await tx.put_presence([(moved, until)], "r2", targets_of={"pod-a"})
        # r1's batch: a later heartbeat, its targets as written before.
        await tx.put_presence([(replace(a, time=NOW + timedelta(seconds=2)), until)], "r1", targets_of=set())
    async with store.read() as tx:
        assert await tx.current_revision() == 0  # telemetry moves no revision
        serving_p = await tx.presence_serving("p", "staging", NOW)
        assert [
            (s.replica, s.report.sidecar_id, [a.version for a in s.report.targets]) for s in serving_p
        ] == [
            ("r1", "pod-a", ["1.0.0", "2.0.0"]),
            ("r2", "pod-a", ["1.1.0"]),
            ("r1", "pod-b", ["1.0.0"]),
        ]
        assert serving_p[0].report.time == NOW + timedelta(seconds=2)
        assert (
            serving_p[0].report.targets[0].apply_time == NOW and serving_p[0].report.heartbeat_seconds == 10
        )
        assert [s.replica for s in await tx.presence_serving("q", "staging", NOW)] == ["r1", "r2"]
    later = NOW + timedelta(seconds=5)  # past what r1 promised for pod-b
    async with store.telemetry() as tx:
        assert [p.report.sidecar_id for p in await tx.presence_of("pod-b", later)] == []
        assert await tx.forget_silent_sidecars(later) == 1
        await tx.put_leaving(replace(a, targets=(), time=later), "r2", later + timedelta(seconds=40))
    async with store.read() as tx:
        [left] = await tx.presence_of("pod-a", later)  # every other row of it gave way
        assert (left.replica, left.leaving, left.report.targets) == ("r2", True, ())
        # Only what says it left, which every target's readers get (a replica may still hold pod-a).
        assert [(p.report.sidecar_id, p.leaving) for p in await tx.presence_serving("p", "staging", NOW)] == [
            ("pod-a", True)
        ]
    async with store.telemetry() as tx:
        await tx.remove_presence("pod-a")
    async with store.read() as tx:
        assert await tx.presence_of("pod-a", NOW) == []


async def test_the_live_fleet_is_read_as_each_thing_it_says_with_how_many_sidecars_say_it(
    store: Store,
) -> None:
    """The gauge's read: each sidecar once, by its newest word over the replicas' rows, none that
    left or that no replica vouches for any more; a row per distinct content, not per sidecar."""
    until = NOW + timedelta(seconds=40)
    first = [_sidecar_report(f"pod-{i}", 10, ("p", "staging", "1.0.0")) for i in range(5)]
    later = NOW + timedelta(seconds=1)
    moved = [replace(_sidecar_report(f"pod-{i}", 10, ("p", "staging", "1.1.0")), time=later) for i in (0, 1)]
    gone = _sidecar_report("pod-9", 10, ("p", "staging", "1.0.0"))
    async with store.telemetry() as tx:
        await tx.put_presence([(r, until) for r in first], "r1", targets_of={r.sidecar_id for r in first})
        await tx.put_presence([(r, until) for r in moved], "r2", targets_of={"pod-0", "pod-1"})  # newer
        await tx.put_presence([(gone, NOW - timedelta(seconds=1))], "r1", targets_of={"pod-9"})  # expired
        await tx.put_leaving(replace(first[4], targets=(), time=later), "r2", until)
    async with store.read() as tx:
        contents = await tx.live_contents(NOW)
    assert sorted(([a.version for a in targets], n) for targets, n in contents) == [
        (["1.0.0"], 2),  # pod-2, pod-3 (pod-0 and pod-1 said 1.1.0 since, pod-4 left, pod-9 expired)
        (["1.1.0"], 2),
    ]
    assert serving_counts(contents) == {("p", "staging", "1.0.0"): 2, ("p", "staging", "1.1.0"): 2}


async def test_telemetry_transactions_take_no_revision_and_are_counted_apart(store: Store) -> None:
    before = (store.writes.revisioned, store.writes.telemetry)
    async with store.telemetry() as tx:
        await tx.put_presence(
            [(_sidecar_report("pod-a", 10, ("p", "staging", "1.0.0")), NOW)], "r1", targets_of={"pod-a"}
        )
        with pytest.raises(RuntimeError):
            await tx.append([Event(kind="new", resource="r/1")])
    async with store.write() as tx:
        await tx.append([Event(kind="new", resource="r/1")])
    with pytest.raises(ValueError):
        async with store.telemetry() as tx:
            await tx.remove_presence("pod-a")
            raise ValueError("a failed batch leaves no trace")
    assert (store.writes.revisioned, store.writes.telemetry) == (before[0] + 1, before[1] + 1)
    async with store.read() as tx:
        assert await tx.current_revision() == 1
        assert [s.report.sidecar_id for s in await tx.presence_serving("p", "staging", NOW)] == ["pod-a"]


async def test_telemetry_commits_while_another_replica_holds_the_revision_row(
    database_url: str, store: Store
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite has one writer: a telemetry transaction joins its queue like any write")
    other = open_store(database_url)  # another replica
    await other.open()
    try:
        async with other.write() as tx:
            await tx.append([Event(kind="new", resource="r/1")])  # the revision row is locked until COMMIT
            async with asyncio.timeout(60):  # a bound on a hang, not a measurement
                async with store.telemetry() as t:
                    await t.put_presence(
                        [(_sidecar_report("pod-a", 10, ("p", "staging", "1.0.0")), NOW)],
                        "r1",
                        targets_of={"pod-a"},
                    )
            async with store.read() as r:
                assert [s.report.sidecar_id for s in await r.presence_serving("p", "staging", NOW)] == [
                    "pod-a"
                ]
                assert await r.current_revision() == 0  # the other's write has not committed yet
    finally:
        await other.close()


async def test_metric_rollups_are_written_once_and_read_by_first_receipt(store: Store) -> None:
    def rollup(source: str, bucket: int, received: datetime, requests: int) -> Rollup:
        r = Rollup(
            program="p",
            environment="staging",
            version="1.0.0",
            source=source,
            bucket=bucket,
            first_receive=received,
        )
        r.add(
            Window(
                sidecar_id="pod-a",
                program="p",
                environment="staging",
                version="1.0.0",
                start_time=received,
                end_time=received + timedelta(seconds=5),
                request_count=requests,
                error_count=1,
                bounds_ms=(10.0, 100.0),
                counts=(requests - 1, 1, 0),
                sum_ms=50.0,
                feedback_correct=1,
                feedback_total=2,
            )
        )
        return r

    first = rollup("r1", 1, NOW, 10)
    async with store.telemetry() as tx:
        await tx.add_metric_rollups([first, rollup("r2", 1, NOW + timedelta(seconds=2), 20)])
    async with store.telemetry() as tx:  # r1's flush again (its commit's outcome was unknown): kept once
        await tx.add_metric_rollups([rollup("r1", 1, NOW, 99)])
    async with store.read() as tx:
        found = await tx.metric_rollups("p", "staging", ["1.0.0"], NOW)
        assert sorted((r.source, r.totals.request_count) for r in found) == [("r1", 10), ("r2", 20)]
        [mine] = [r for r in found if r.source == "r1"]
        assert mine.as_window() == first.as_window()  # the histogram, on the standard bounds, intact
        assert [
            r.source for r in await tx.metric_rollups("p", "staging", ["1.0.0"], NOW + timedelta(seconds=1))
        ] == ["r2"]
        assert await tx.metric_rollups("p", "staging", ["2.0.0"], NOW) == []
    async with store.telemetry() as tx:  # the oldest first, at most as many as asked
        assert await tx.forget_metric_windows(NOW + timedelta(seconds=3), 1) == 1
    async with store.read() as tx:
        assert [r.source for r in await tx.metric_rollups("p", "staging", ["1.0.0"], NOW)] == ["r2"]
    async with store.telemetry() as tx:
        assert await tx.forget_metric_windows(NOW + timedelta(seconds=1), 10) == 0
        assert await tx.forget_metric_windows(NOW + timedelta(seconds=3), 10) == 1


# -- the audit event of a mutation, written in its own transaction ------------------------------


async def test_a_write_for_a_mutating_call_audits_it_once_and_a_write_for_none_audits_nothing(
    store: Store,
) -> None:
    call = Call(
        method="/dspy_registry.v1.AccessService/CreatePrincipal",
        principal="alice",
        token="tokens/t1",
        resource="principals/bob",
        request_id="r-1",
        peer="ipv4:127.0.0.1:5000",
        mutation=True,
    )
    async with store.write(call) as tx:
        await tx.append([Event(kind="principal.created", resource="principals/bob")])
    async with store.write(call) as tx:  # the same call's second transaction: no second event
        await tx.append([Event(kind="principal.updated", resource="principals/bob")])
    async with store.write() as tx:  # background work: nobody's call
        await tx.append([Event(kind="principal.updated", resource="principals/bob")])
    async with store.read() as tx:
        events, _, count = await tx.list_audit(AuditFilter(), Page(10))
    assert count == 1 and call.audited
    [event] = events
    assert (event.principal, event.method, event.request_id, event.resource, event.revision) == (
        "alice",
        "/dspy_registry.v1.AccessService/CreatePrincipal",
        "r-1",
        "principals/bob",
        1,
    )


async def test_the_upgrade_to_telemetry_off_the_revision_order_keeps_sidecars_and_windows(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migrations, "MIGRATIONS", tuple(m for m in MIGRATIONS if m.number < 12))
    old = open_store(database_url)
    await old.open()
    report = _sidecar_report("pod-a", 10, ("p", "staging", "1.0.0"))
    latency = to_json({"bounds_ms": [10.0, 100.0], "counts": [4, 1, 0], "sum_ms": 60.0})
    async with old.write() as tx:  # the rows as the code before it wrote them
        await tx.conn.execute(
            "INSERT INTO sidecars (sidecar_id, principal, report, heartbeat_ms, last_report_time, revision) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            "pod-a",
            "svc",
            to_json(report_to_json(report)),
            10_000,
            to_us(NOW),
            3,
        )
        await tx.conn.execute(
            "INSERT INTO sidecar_targets (sidecar_id, program, environment) VALUES (?, ?, ?)",
            "pod-a",
            "p",
            "staging",
        )
        for start in (0, 5):  # two windows of one report: the same receive time
            await tx.conn.execute(
                "INSERT INTO metric_windows (program, environment, version, sidecar_id, start_time, end_time, "
                "receive_time, request_count, error_count, latency, feedback_correct, feedback_total) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                "p",
                "staging",
                "1.0.0",
                "pod-a",
                to_us(NOW + timedelta(seconds=start)),
                to_us(NOW + timedelta(seconds=start + 5)),
                to_us(NOW + timedelta(seconds=10)),
                5,
                1,
                latency,
                1,
                2,
            )
    await old.close()
    monkeypatch.undo()
    new = open_store(database_url)
    await new.open()
    try:
        async with new.read() as tx:
            [held] = await tx.presence_serving("p", "staging", NOW + timedelta(seconds=29))
            # Held by no running replica, live its three heartbeats.
            assert (held.replica, held.report) == ("before-upgrade", report)
            assert await tx.presence_serving("p", "staging", NOW + timedelta(seconds=31)) == []
            rollups = await tx.metric_rollups("p", "staging", ["1.0.0"], NOW)
        assert sorted((r.source, r.totals.request_count, r.totals.error_count) for r in rollups) == [
            ("before-upgrade/pod-a", 5, 1),
            ("before-upgrade/pod-a", 5, 1),
        ]
        assert {r.first_receive for r in rollups} == {NOW + timedelta(seconds=10)}
        assert rollups[0].totals.counts == [4, 1, 0]
    finally:
        await new.close()


async def test_analysis_watches_the_deployments_that_shape_their_target_in_progress_or_recently_succeeded(
    store: Store,
) -> None:
    from dspy_registry.server.domain.deployments import Deployment, Pinned, State, Target
    from dspy_registry.server.domain.environments import StrategySpec

    now = datetime.now(UTC)
    long_ago = now - timedelta(hours=1)

    def deployment(ident: str, program: str, state: State, ended: datetime | None) -> Deployment:
        return Deployment(
            id=ident,
            program=program,
            environment="development",
            version="1.0.0",
            digest="sha256:" + "a" * 64,
            strategy=StrategySpec(),
            state=state,
            creator="admin",
            reason="",
            create_time=ended or now,
            end_time=ended,
        )

    def target(program: str, shaped_by: str, written: datetime) -> Target:
        stable = Pinned("1.0.0", "sha256:" + "a" * 64)
        return Target(
            program=program,
            environment="development",
            stable=stable,
            deployment=shaped_by,
            update_time=written,
        )

    async with store.write() as tx:
        for d in (
            deployment("a-canary", "a", State.IN_PROGRESS, None),  # in progress: watched
            deployment("b-replace", "b", State.SUCCEEDED, now),  # just succeeded: watched
            deployment("c-replace", "c", State.SUCCEEDED, long_ago),  # before the window: not
            deployment("d-replace", "d", State.SUCCEEDED, now),  # another shapes its target now: not
            deployment("d-newer", "d", State.ABORTED, now),  # (ended, not succeeded: not either)
            # Shaping its target again (the canary that replaced it was aborted), since the window
            # began, but it succeeded before: not.
            deployment("e-replace", "e", State.SUCCEEDED, long_ago),
        ):
            await tx.put_deployment(d)
        for t in (
            target("a", "a-canary", long_ago),  # a canary's target is written as it starts
            target("b", "b-replace", now),
            target("c", "c-replace", long_ago),
            target("d", "d-newer", now),
            target("e", "e-replace", now),
        ):
            await tx.put_target(t)
    async with store.read() as tx:
        shaping = await tx.shaping_deployments(now - timedelta(minutes=5))
    assert [(d.id, t.program) for d, t in shaping] == [("a-canary", "a"), ("b-replace", "b")]

"""What a replica holds in memory, judged purely: a rollup merges to the figures its windows do; a
heartbeat is written at once only when it changes what is kept; each NACK is acted on once; a row
is vouched for three heartbeats and two flushes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from dspy_registry.server.domain.health import merge
from dspy_registry.server.domain.rollups import Rollup
from dspy_registry.server.domain.sidecars import (
    Applied,
    Report,
    changes_what_is_kept,
    live_until,
    new_nacks,
    newest_word,
)
from tests.domain.test_health import window

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_rollups_merge_to_the_figures_of_the_windows_in_them() -> None:
    windows = [
        window(100, 3, {250: 10}, correct=8, total=10),
        window(40, 0, {2000: 4}, sidecar="pod-1"),
        window(60, 6, {300: 30}, bounds=(100.0, 300.0, 1000.0), sidecar="pod-2"),  # other bounds
    ]
    first, second = (
        Rollup(program="p", environment="e", version="1.0.0", source="r", bucket=b, first_receive=T0)
        for b in (1, 2)
    )
    for w in windows[:2]:
        first.add(w)
    second.add(windows[2])
    raw, rolled = merge(windows), merge([first.as_window(), second.as_window()])
    assert (raw.request_count, raw.error_count, raw.feedback_correct, raw.feedback_total) == (
        rolled.request_count,
        rolled.error_count,
        rolled.feedback_correct,
        rolled.feedback_total,
    )
    assert rolled.counts == raw.counts and rolled.latency_p95_ms == raw.latency_p95_ms
    assert (first.window_count, second.window_count) == (2, 1)


def _applied(version: str = "1.0.0", acked: bool = True, error: str = "") -> Applied:
    return Applied(
        program="p",
        environment="e",
        version=version,
        digest="sha256:" + "a" * 64,
        acked=acked,
        error_code=0 if acked else 3,
        error_message=error,
        revision=4,
        apply_time=T0,
    )


def _report(*targets: Applied, at: float = 0.0, heartbeat: float = 10.0, principal: str = "svc") -> Report:
    return Report(
        sidecar_id="pod-a",
        principal=principal,
        targets=targets,
        heartbeat_seconds=heartbeat,
        time=T0 + timedelta(seconds=at),
        revision=4,
    )


def test_only_a_report_that_changes_what_is_kept_is_written_at_once() -> None:
    first = _report(_applied())
    assert changes_what_is_kept(None, first)  # a join
    assert not changes_what_is_kept(first, _report(_applied(), at=10))  # a heartbeat
    assert not changes_what_is_kept(first, replace(_report(_applied(), at=10), revision=9))
    assert changes_what_is_kept(first, _report(_applied(), at=31))  # silent three heartbeats: joins again
    assert changes_what_is_kept(first, _report(_applied("1.1.0"), at=10))  # ACKs another version
    assert changes_what_is_kept(first, _report(_applied(acked=False, error="x"), at=10))  # NACKs it
    assert changes_what_is_kept(first, _report(_applied(), at=10, heartbeat=5))
    assert changes_what_is_kept(first, _report(_applied(), at=10, principal="other"))


def test_each_nack_is_acted_on_once_and_a_row_is_vouched_for_three_heartbeats_and_two_flushes() -> None:
    nack = _applied("1.1.0", acked=False, error="bad module")
    first = _report(_applied(), nack)
    assert new_nacks(None, first) == [nack]
    assert new_nacks(first, _report(_applied(), nack, at=10)) == []
    other = replace(nack, error_message="another failure")
    assert new_nacks(first, _report(_applied(), other, at=10)) == [other]
    assert new_nacks(first, _report(_applied(), nack, at=40)) == [nack]  # after it was gone
    assert live_until(first, 5.0) == T0 + timedelta(seconds=10 * 3 + 2 * 5)


def test_the_newest_word_of_each_sidecar_counts_and_a_newer_leaving_hides_it() -> None:
    old = _report(_applied(), at=0)
    new = _report(_applied("1.1.0"), at=5)
    other = replace(_report(_applied(), at=1), sidecar_id="pod-b")
    assert newest_word([(new, False), (old, False), (other, False)]) == [new, other]  # by id, newest
    left = _report(at=6)
    assert newest_word([(old, False), (left, True), (new, False), (other, False)]) == [other]
    assert newest_word([(left, True), (_report(_applied(), at=7), False)]) == [_report(_applied(), at=7)]
    same = _report(_applied("2.0.0"), at=5)
    assert newest_word([(new, False), (same, False)]) == [same]  # a tie: the later candidate

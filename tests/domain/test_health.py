"""The analysis: histograms merged and their p95, each threshold on both sides of its edge, min_requests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dspy_registry.server.domain.environments import Thresholds
from dspy_registry.server.domain.health import (
    STANDARD_BOUNDS_MS,
    Totals,
    Verdict,
    Window,
    analyse,
    merge,
    quantile,
    validate_window,
    worst,
)
from dspy_registry.server.errors import InvalidArgument, Violations

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def window(
    requests: int = 100,
    errors: int = 0,
    latencies: dict[float, int] | None = None,
    correct: int = 0,
    total: int = 0,
    bounds: tuple[float, ...] = STANDARD_BOUNDS_MS,
    sidecar: str = "pod-0",
) -> Window:
    """`latencies`: {upper bound: count}; the rest of the requests fall in the first bucket."""
    counts = [0] * (len(bounds) + 1)
    for upper, n in (latencies or {}).items():
        counts[len(bounds) if upper == float("inf") else bounds.index(upper)] += n
    counts[0] += requests - sum(counts)
    return Window(
        sidecar_id=sidecar,
        program="p",
        environment="production",
        version="1.1.0",
        start_time=T0,
        end_time=T0 + timedelta(seconds=5),
        request_count=requests,
        error_count=errors,
        bounds_ms=bounds,
        counts=tuple(counts),
        sum_ms=0.0,
        feedback_correct=correct,
        feedback_total=total,
    )


def test_p95_interpolates_inside_its_bucket_as_prometheus_does() -> None:
    # 100 requests: 90 at <=100 ms, 10 at (100, 250]: the 95th is half-way into (100, 250].
    assert quantile((100.0, 250.0), [90, 10, 0], 0.95) == pytest.approx(175.0)
    assert quantile((100.0, 250.0), [0, 0, 0], 0.95) is None
    assert quantile((100.0, 250.0), [0, 0, 7], 0.95) == 250.0  # beyond the last bound: the last bound


def test_windows_merge_across_sidecars_including_other_bounds() -> None:
    a = window(100, 2, {2000: 10}, correct=40, total=50)
    b = window(300, 1, {2500: 30}, correct=90, total=100, sidecar="pod-1")
    coarse = window(10, 0, {3000.0: 10}, bounds=(1000.0, 3000.0))
    totals = merge([a, b, coarse])
    assert (totals.request_count, totals.error_count) == (410, 3)
    assert totals.accuracy == pytest.approx(130 / 150)
    assert sum(totals.counts) == 410
    assert totals.counts[STANDARD_BOUNDS_MS.index(3000)] == 10  # (1000, 3000] lands at our 3000 bucket
    assert totals.latency_p95_ms is not None and 2000 < totals.latency_p95_ms <= 2500


@pytest.mark.parametrize(
    ("errors", "verdict", "message"),
    [(5, Verdict.HEALTHY, ""), (6, Verdict.UNHEALTHY, "Error rate 0.06 exceeds threshold 0.05")],
)
def test_error_rate_on_both_sides_of_its_threshold(errors: int, verdict: Verdict, message: str) -> None:
    health = analyse("1.1.0", merge([window(100, errors)]), None, Thresholds())
    assert health.verdict is verdict
    assert health.violations == ([message] if message else [])


@pytest.mark.parametrize(
    ("slow", "verdict"),
    [(5, Verdict.HEALTHY), (6, Verdict.UNHEALTHY)],  # 5 of 100 above 2000 ms keeps the p95 at 2000
)
def test_latency_p95_on_both_sides_of_its_threshold(slow: int, verdict: Verdict) -> None:
    health = analyse("1.1.0", merge([window(100, 0, {2000: 90, 3000: slow})]), None, Thresholds())
    assert health.verdict is verdict, health.checks
    if verdict is Verdict.UNHEALTHY:
        assert (
            health.violations[0].startswith("P95 latency ")
            and "ms exceeds threshold 2000ms" in (health.violations[0])
        )


@pytest.mark.parametrize(
    ("correct", "verdict", "message"),
    [
        (80, Verdict.HEALTHY, ""),  # 0.9 -> 0.8: a drop of 0.1 is not above 0.1
        (76, Verdict.UNHEALTHY, "Accuracy dropped by 0.14 (threshold: 0.1)"),
    ],
)
def test_accuracy_drop_on_both_sides_of_its_threshold(correct: int, verdict: Verdict, message: str) -> None:
    health = analyse("1.1.0", merge([window(100, 0, correct=correct, total=100)]), 0.9, Thresholds())
    assert health.verdict is verdict
    assert health.violations == ([message] if message else [])


def test_accuracy_needs_both_a_baseline_and_feedback() -> None:
    no_feedback = analyse("1.1.0", merge([window(100)]), 0.9, Thresholds())
    no_baseline = analyse("1.1.0", merge([window(100, 0, correct=1, total=100)]), None, Thresholds())
    for health in (no_feedback, no_baseline):
        assert health.verdict is Verdict.HEALTHY
        assert "accuracy_drop" not in [c.metric for c in health.checks]


def test_below_min_requests_the_verdict_is_inconclusive_even_when_every_request_failed() -> None:
    thresholds = Thresholds(min_requests=100)
    assert analyse("1.1.0", merge([window(99, 99)]), None, thresholds).verdict is Verdict.INCONCLUSIVE
    assert analyse("1.1.0", merge([window(100, 99)]), None, thresholds).verdict is Verdict.UNHEALTHY
    assert analyse("1.1.0", Totals(), None, thresholds).verdict is Verdict.INCONCLUSIVE


def test_worst_verdict() -> None:
    assert worst([Verdict.HEALTHY, Verdict.INCONCLUSIVE]) is Verdict.INCONCLUSIVE
    assert worst([Verdict.HEALTHY, Verdict.UNHEALTHY, Verdict.INCONCLUSIVE]) is Verdict.UNHEALTHY
    assert worst([]) is Verdict.UNSPECIFIED


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"error_count": 101}, "w.error_count"),
        ({"feedback_correct": 2, "feedback_total": 1}, "w.feedback_correct"),
        ({"bounds_ms": (10.0, 5.0)}, "w.latency.bounds_ms"),
        ({"counts": (1, 2)}, "w.latency.counts"),
        ({"end_time": T0 - timedelta(seconds=1)}, "w.end_time"),
        ({"sum_ms": float("nan")}, "w.latency.sum_ms"),
    ],
)
def test_a_malformed_window_is_named_by_field(change: dict[str, object], field: str) -> None:
    from dataclasses import replace

    v = Violations()
    validate_window(replace(window(), **change), "w", v)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as raised:
        v.raise_if_any()
    assert field in [f.field for f in raised.value.violations]


def test_accuracy_counts_only_from_min_requests_labelled_answers() -> None:
    thresholds = Thresholds(min_requests=100)
    few = analyse("1.1.0", merge([window(100, 0, correct=1, total=99)]), 0.9, thresholds)
    assert few.verdict is Verdict.HEALTHY and "accuracy_drop" not in [c.metric for c in few.checks]
    enough = analyse("1.1.0", merge([window(100, 0, correct=1, total=100)]), 0.9, thresholds)
    assert enough.verdict is Verdict.UNHEALTHY


def test_without_a_latency_histogram_the_verdict_cannot_be_healthy() -> None:
    from dataclasses import replace

    unmeasured = replace(window(100, 0), counts=())
    assert analyse("1.1.0", merge([unmeasured]), None, Thresholds()).verdict is Verdict.INCONCLUSIVE
    failing = replace(window(100, 50), counts=())
    assert analyse("1.1.0", merge([failing]), None, Thresholds()).verdict is Verdict.UNHEALTHY

"""Impossible metrics: fractions outside [0, 1], negative latencies and costs, anything not finite."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from dspy_registry.server.domain.health import STANDARD_BOUNDS_MS, Window, validate_window
from dspy_registry.server.domain.programs import metric_range_problem, validate_performance
from dspy_registry.server.errors import Violations

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def window() -> Window:
    """A possible window: 100 requests, all in the first latency bucket, 80 of 90 labelled right."""
    return Window(
        sidecar_id="pod-1",
        program="sentiment",
        environment="production",
        version="1.0.0",
        start_time=T0,
        end_time=T0 + timedelta(seconds=10),
        request_count=100,
        error_count=0,
        bounds_ms=STANDARD_BOUNDS_MS,
        counts=(100,) + (0,) * len(STANDARD_BOUNDS_MS),
        sum_ms=300.0,
        feedback_correct=80,
        feedback_total=90,
    )


IMPOSSIBLE = [
    ("accuracy", -5.0),
    ("accuracy", 7.0),
    ("accuracy", 91.0),  # a percentage
    ("precision", 1.01),
    ("recall", -0.01),
    ("f1", 2.0),
    ("f1_score", -1.0),
    ("val_accuracy", 1.5),
    ("f1_macro", 3.0),
    ("Accuracy", 7.0),
    ("latency_ms", -1.0),
    ("latency_p95_ms", -150.0),
    ("p95_latency_ms", -0.5),
    ("latency_p95", -1.0),
    ("cost_usd", -0.001),
    ("cost_per_prediction", -1.0),
    ("anything", float("nan")),
    ("anything", float("inf")),
    ("accuracy", float("-inf")),
]
POSSIBLE = [
    ("accuracy", 0.0),
    ("accuracy", 1.0),
    ("accuracy", 0.91),
    ("f1", 0.5),
    ("latency_p95_ms", 0.0),
    ("latency_p95_ms", 150.0),
    ("cost_per_prediction", 0.001),
    ("accuracy_drop", -0.05),  # a change, not a fraction: free
    ("improvement", -3.0),  # unknown metrics are free, if finite
    ("tokens_per_answer", 1200.0),
    ("costly_words", -1.0),  # `cost` is not one of its words
]


def test_the_possible_window_is_possible() -> None:
    v = Violations()
    validate_window(window(), "w", v)
    assert not v.items


@pytest.mark.parametrize(("name", "value"), IMPOSSIBLE)
def test_impossible_metrics_are_named(name: str, value: float) -> None:
    assert metric_range_problem(name, value) is not None
    v = Violations()
    validate_performance({name: value, "accuracy_ok": 0.9}, "spec.performance", v)
    assert [i.field for i in v.items] == [f"spec.performance[{name!r}]"]


@pytest.mark.parametrize(("name", "value"), POSSIBLE)
def test_possible_metrics_pass(name: str, value: float) -> None:
    assert metric_range_problem(name, value) is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"sum_ms": -1.0}, "w.latency.sum_ms"),  # a negative latency
        ({"feedback_correct": 7, "feedback_total": 1}, "w.feedback_correct"),  # an accuracy of 7
        ({"request_count": -5}, "w"),
    ],
)
def test_a_reported_window_cannot_carry_an_impossible_metric_either(
    change: dict[str, object], field: str
) -> None:
    v = Violations()
    validate_window(replace(window(), **change), "w", v)  # type: ignore[arg-type]
    assert field in [i.field for i in v.items]

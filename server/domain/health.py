"""Live health: sidecars' metric windows merged, and judged against an environment's thresholds.

A version is judged on three figures over a monitoring window — error
rate, p95 latency and the accuracy drop against a baseline — and each
violation is written out in words ("Error rate 0.12 exceeds threshold 0.05"). Here the figures come from windows
that sidecars report (requests, errors, a latency histogram with fixed
buckets, labelled feedback), merged across sidecars. A verdict needs
`min_requests` requests; below that it is INCONCLUSIVE, never HEALTHY.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import IntEnum

from ..errors import Violations
from .environments import Thresholds

STANDARD_BOUNDS_MS: tuple[float, ...] = (
    5, 10, 25, 50, 100, 250, 500, 1000, 1500, 2000, 2500, 3000, 5000, 10000, 30000, 60000,
)  # fmt: skip
MAX_BUCKETS = 64
MAX_COUNT = 10**12  # per window: far above any real window, far below where int64 sums overflow


class Verdict(IntEnum):
    """The numbers match the proto enum HealthVerdict."""

    UNSPECIFIED = 0
    HEALTHY = 1
    UNHEALTHY = 2
    INCONCLUSIVE = 3


@dataclass(frozen=True, kw_only=True)
class Window:
    """One sidecar's measurements of one version over a short window."""

    sidecar_id: str
    program: str
    environment: str
    version: str
    start_time: datetime
    end_time: datetime
    request_count: int
    error_count: int
    bounds_ms: tuple[float, ...]
    counts: tuple[int, ...]
    sum_ms: float
    feedback_correct: int
    feedback_total: int


# How far a sidecar's clock may run ahead of the server's: a window that ends later than this is
# a broken clock or a forgery, never a measurement.
MAX_CLOCK_AHEAD = timedelta(minutes=5)


def check_window_times(windows: list[Window], now: datetime, v: Violations) -> None:
    """Refuse windows that end in the future (by more than MAX_CLOCK_AHEAD of the server's `now`)."""
    for i, w in enumerate(windows):
        if w.end_time > now + MAX_CLOCK_AHEAD:
            v.add(
                f"windows[{i}].end_time", "is in the future: more than 5 minutes ahead of the server's clock"
            )


def validate_window(w: Window, at: str, v: Violations) -> None:
    """Every impossible figure of a window, by field.

    A window carries counts, not ratios, so these checks are also the metric ranges
    (programs.metric_range_problem) for what is computed from it: accuracy, feedback_correct over
    feedback_total, stays in [0, 1]; the error rate too; latencies are finite and never negative.
    """
    if w.end_time < w.start_time:
        v.add(f"{at}.end_time", "must not be before start_time")
    if min(w.request_count, w.error_count, w.feedback_correct, w.feedback_total) < 0:
        v.add(at, "counts must not be negative")
    if max(w.request_count, w.feedback_total) > MAX_COUNT:
        v.add(at, f"counts must be at most {MAX_COUNT}")
    if w.error_count > w.request_count:
        v.add(f"{at}.error_count", "must not exceed request_count")
    if w.feedback_correct > w.feedback_total:
        v.add(f"{at}.feedback_correct", "must not exceed feedback_total")
    bounds = w.bounds_ms
    if len(bounds) > MAX_BUCKETS or any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)):
        v.add(f"{at}.latency.bounds_ms", f"must be strictly increasing, at most {MAX_BUCKETS}")
    elif any(not math.isfinite(b) or b <= 0 for b in bounds):
        v.add(f"{at}.latency.bounds_ms", "must be positive and finite")
    if w.counts and len(w.counts) != len(bounds) + 1:
        v.add(f"{at}.latency.counts", f"must have {len(bounds) + 1} entries (one per bound, then the rest)")
    elif any(c < 0 for c in w.counts) or (w.counts and sum(w.counts) != w.request_count):
        v.add(f"{at}.latency.counts", "must not be negative and must add up to request_count")
    if not math.isfinite(w.sum_ms) or w.sum_ms < 0:
        v.add(f"{at}.latency.sum_ms", "must be a non-negative number")


@dataclass(kw_only=True)
class Totals:
    """Windows of one version merged (across sidecars and time)."""

    request_count: int = 0
    error_count: int = 0
    bounds_ms: tuple[float, ...] = STANDARD_BOUNDS_MS
    counts: list[int] = field(default_factory=lambda: [0] * (len(STANDARD_BOUNDS_MS) + 1))
    sum_ms: float = 0.0
    feedback_correct: int = 0
    feedback_total: int = 0
    start_time: datetime | None = None
    end_time: datetime | None = None

    def add(self, w: Window) -> None:
        self.request_count += w.request_count
        self.error_count += w.error_count
        self.feedback_correct += w.feedback_correct
        self.feedback_total += w.feedback_total
        self.sum_ms += w.sum_ms
        self.start_time = w.start_time if self.start_time is None else min(self.start_time, w.start_time)
        self.end_time = w.end_time if self.end_time is None else max(self.end_time, w.end_time)
        if w.counts:
            self._add_histogram(w.bounds_ms, w.counts)

    def _add_histogram(self, bounds: tuple[float, ...], counts: Sequence[int]) -> None:
        if bounds == self.bounds_ms:
            for i, c in enumerate(counts):
                self.counts[i] += c
            return
        # Other bounds: each bucket's count goes to the first of ours whose bound covers its
        # upper bound, so a p95 is never under-stated (at worst it rounds up one bucket).
        for upper, c in zip((*bounds, math.inf), counts, strict=True):
            self.counts[_bucket(self.bounds_ms, upper)] += c

    @property
    def error_rate(self) -> float | None:
        return self.error_count / self.request_count if self.request_count else None

    @property
    def accuracy(self) -> float | None:
        return self.feedback_correct / self.feedback_total if self.feedback_total else None

    @property
    def latency_p95_ms(self) -> float | None:
        return quantile(self.bounds_ms, self.counts, 0.95)


def merge(windows: Iterable[Window]) -> Totals:
    totals = Totals()
    for w in windows:
        totals.add(w)
    return totals


def _bucket(bounds: Sequence[float], value: float) -> int:
    for i, bound in enumerate(bounds):
        if value <= bound:
            return i
    return len(bounds)


def quantile(bounds: Sequence[float], counts: Sequence[int], q: float) -> float | None:
    """The q-quantile from bucket counts, interpolated linearly inside its bucket (as Prometheus does).

    Values above the last bound are reported as the last bound: the histogram
    cannot say more, and the last bound (60 s by default) is past any threshold.
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, c in enumerate(counts):
        if c and seen + c >= rank:
            if i == len(bounds):
                return float(bounds[-1]) if bounds else 0.0
            lower = bounds[i - 1] if i > 0 else 0.0
            return float(lower + (bounds[i] - lower) * (rank - seen) / c)
        seen += c
    return float(bounds[-1]) if bounds else 0.0


@dataclass(frozen=True, kw_only=True)
class Check:
    metric: str  # error_rate, latency_p95_ms or accuracy_drop
    value: float | None
    threshold: float
    verdict: Verdict
    message: str


@dataclass(frozen=True, kw_only=True)
class Health:
    """One version's figures in a window, each threshold checked."""

    version: str
    totals: Totals
    baseline_accuracy: float | None
    checks: tuple[Check, ...]
    verdict: Verdict

    @property
    def violations(self) -> list[str]:
        return [c.message for c in self.checks if c.verdict is Verdict.UNHEALTHY]


def _figure(x: float) -> str:
    """A figure as a person writes it: 0.12, 2300, 0.1 (no float noise)."""
    return f"{round(x, 4):g}"


def analyse(version: str, totals: Totals, baseline_accuracy: float | None, t: Thresholds) -> Health:
    """The three checks, with min_requests: too few requests is INCONCLUSIVE, not HEALTHY.

    A violation is a violation once min_requests is reached. HEALTHY needs
    the error rate and p95 latency measured and within their thresholds.
    Accuracy is checked only with a baseline and at least min_requests
    labelled answers; without them it does not make the verdict inconclusive
    (many programs have no labels).
    """
    enough = totals.request_count >= max(1, t.min_requests)
    checks = []
    rate = totals.error_rate
    checks.append(
        _check(
            "error_rate",
            rate,
            t.error_rate,
            enough,
            f"Error rate {_figure(rate or 0)} exceeds threshold {_figure(t.error_rate)}",
        )
    )
    p95 = totals.latency_p95_ms
    checks.append(
        _check(
            "latency_p95_ms",
            p95,
            t.latency_p95_ms,
            enough,
            f"P95 latency {_figure(p95 or 0)}ms exceeds threshold {_figure(t.latency_p95_ms)}ms",
        )
    )
    # Accuracy from a handful of labels is noise: it counts from min_requests labelled answers.
    accuracy = totals.accuracy if totals.feedback_total >= max(1, t.min_requests) else None
    drop = None if accuracy is None or baseline_accuracy is None else baseline_accuracy - accuracy
    if drop is not None:
        checks.append(
            _check(
                "accuracy_drop",
                drop,
                t.accuracy_drop,
                enough,
                f"Accuracy dropped by {_figure(drop)} (threshold: {_figure(t.accuracy_drop)})",
            )
        )
    if any(c.verdict is Verdict.UNHEALTHY for c in checks):
        verdict = Verdict.UNHEALTHY
    elif not enough or p95 is None:  # latency unmeasured (no histogram): that threshold is unverified
        verdict = Verdict.INCONCLUSIVE
    else:
        verdict = Verdict.HEALTHY
    return Health(
        version=version,
        totals=totals,
        baseline_accuracy=baseline_accuracy,
        checks=tuple(checks),
        verdict=verdict,
    )


def _check(metric: str, value: float | None, threshold: float, enough: bool, violation: str) -> Check:
    if value is None or not enough:
        return Check(
            metric=metric, value=value, threshold=threshold, verdict=Verdict.INCONCLUSIVE, message=""
        )
    if value > threshold:  # at the threshold is still within it: strictly above is a violation
        return Check(
            metric=metric, value=value, threshold=threshold, verdict=Verdict.UNHEALTHY, message=violation
        )
    return Check(metric=metric, value=value, threshold=threshold, verdict=Verdict.HEALTHY, message="")


def worst(verdicts: Iterable[Verdict]) -> Verdict:
    """UNHEALTHY over INCONCLUSIVE over HEALTHY; nothing evaluated is UNSPECIFIED."""
    found = set(verdicts)
    for v in (Verdict.UNHEALTHY, Verdict.INCONCLUSIVE, Verdict.HEALTHY):
        if v in found:
            return v
    return Verdict.UNSPECIFIED

"""Comparing program versions and planning upgrades."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from .model import ProgramVersion
from .signatures import Change, Compatibility, Level

# Metrics whose names contain one of these get better as they fall.
_LOWER_IS_BETTER = ("latency", "cost", "error", "loss", "time", "duration", "tokens")
_VALUE_LIMIT = 256


class Recommendation(IntEnum):
    """The numbers match the proto enum Recommendation."""

    UPGRADE = 1
    HOLD = 2
    BREAKING = 3


@dataclass(frozen=True, kw_only=True)
class MetricDiff:
    metric: str
    base_value: float
    target_value: float
    change: float
    change_percent: float | None
    higher_is_better: bool

    @property
    def regressed(self) -> bool:
        return self.change < 0 if self.higher_is_better else self.change > 0


@dataclass(frozen=True)
class ConfigurationChange:
    path: str
    base_value: str
    target_value: str


@dataclass(frozen=True, kw_only=True)
class Comparison:
    performance: tuple[MetricDiff, ...]
    configuration: tuple[ConfigurationChange, ...]
    compatibility: Compatibility
    recommendation: Recommendation
    reasons: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class UpgradeStep:
    from_version: str
    to_version: str
    compatibility: Compatibility
    breaking_changes: tuple[str, ...]
    recommended_tests: tuple[str, ...]


def higher_is_better(metric: str) -> bool:
    lowered = metric.lower()
    return not any(word in lowered for word in _LOWER_IS_BETTER)


def performance_diff(base: dict[str, float], target: dict[str, float]) -> tuple[MetricDiff, ...]:
    """Each metric both report: the change and the change in percent, never dividing by zero."""
    diffs = []
    for metric in sorted(base.keys() & target.keys()):
        a, b = base[metric], target[metric]
        change = b - a
        percent = round(change / abs(a) * 100, 2) if a != 0 else None
        diffs.append(
            MetricDiff(
                metric=metric,
                base_value=a,
                target_value=b,
                change=change,
                change_percent=percent,
                higher_is_better=higher_is_better(metric),
            )
        )
    return tuple(diffs)


def _text(value: Any) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= _VALUE_LIMIT else text[: _VALUE_LIMIT - 1] + "…"


def configuration_diff(base: ProgramVersion, target: ProgramVersion) -> tuple[ConfigurationChange, ...]:
    out: list[ConfigurationChange] = []
    if base.signature_name != target.signature_name:
        out.append(ConfigurationChange("signature", base.signature_name, target.signature_name))
    if base.media_type != target.media_type:
        out.append(ConfigurationChange("media_type", base.media_type, target.media_type))
    before = {p.name: p for p in base.predictors}
    after = {p.name: p for p in target.predictors}
    for name in sorted(before.keys() | after.keys()):
        a, b = before.get(name), after.get(name)
        path = f"predictors.{name}"
        if a is None or b is None:
            out.append(ConfigurationChange(path, "present" if a else "", "present" if b else ""))
            continue
        if (a.instructions, a.instructions_digest) != (b.instructions, b.instructions_digest):
            out.append(
                ConfigurationChange(f"{path}.instructions", _text(a.instructions), _text(b.instructions))
            )
        if a.demo_count != b.demo_count:
            out.append(ConfigurationChange(f"{path}.demo_count", str(a.demo_count), str(b.demo_count)))
    for key in sorted(base.metadata.keys() | target.metadata.keys()):
        a_value, b_value = base.metadata.get(key), target.metadata.get(key)
        if a_value != b_value:
            out.append(ConfigurationChange(f"metadata.{key}", _text(a_value), _text(b_value)))
    return tuple(out)


def compare(base: ProgramVersion, target: ProgramVersion, compatibility: Compatibility) -> Comparison:
    perf = performance_diff(base.performance, target.performance)
    reasons: list[str] = []
    if compatibility.level is Level.BREAKING:
        recommendation = Recommendation.BREAKING
        reasons += [f"breaking: {c.path}: {c.description}" for c in compatibility.breaking]
    else:
        regressions = [d for d in perf if d.regressed]
        if target.yanked:
            reasons.append(f"{target.version} is yanked: {target.yank_reason}")
        for d in regressions:
            reasons.append(f"{d.metric} got worse: {d.base_value:g} -> {d.target_value:g}")
        recommendation = Recommendation.HOLD if reasons else Recommendation.UPGRADE
        if not reasons:
            better = [d for d in perf if d.change != 0]
            reasons += [f"{d.metric} improved: {d.base_value:g} -> {d.target_value:g}" for d in better]
            if not better:
                reasons.append("compatible, and no tracked metric got worse")
    return Comparison(
        performance=perf,
        configuration=configuration_diff(base, target),
        compatibility=compatibility,
        recommendation=recommendation,
        reasons=tuple(reasons),
    )


def _tests_for_change(change: Change) -> str | None:
    field = change.path.split(".", 1)[-1]
    text = change.description
    if change.path.startswith("inputs.") and change.level is Level.BREAKING:
        return f"run every call site with the new inputs: {field}: {text}"
    if change.path.startswith("outputs.") and change.level is Level.BREAKING:
        return f"check every consumer of output {field}: {text}"
    if change.path.startswith("outputs.") and "enum value" in text:
        return f"check that consumers of {field} handle the new value ({text})"
    if change.path in ("instructions", "description"):
        return "re-run the quality evaluation: the signature's instructions changed"
    if change.path == "signature":
        return f"treat as a new program: {text}"
    return None


def upgrade_step(a: ProgramVersion, b: ProgramVersion, compatibility: Compatibility) -> UpgradeStep:
    tests: list[str] = []
    for change in compatibility.changes:
        test = _tests_for_change(change)
        if test and test not in tests:
            tests.append(test)
    for c in configuration_diff(a, b):
        if c.path.endswith(".demo_count"):
            tests.append(f"compare few-shot behaviour: {c.path} {c.base_value} -> {c.target_value}")
        elif c.path.endswith(".instructions"):
            tests.append(f"re-run the quality evaluation: {c.path} changed")
    for d in performance_diff(a.performance, b.performance):
        if d.regressed:
            tests.append(
                f"confirm the {d.metric} regression is acceptable: {d.base_value:g} -> {d.target_value:g}"
            )
    tests.append(f"run the evaluation set on {b.version} and compare with {a.version}")
    breaking = tuple(f"{c.path}: {c.description}" for c in compatibility.breaking)
    return UpgradeStep(
        from_version=a.version,
        to_version=b.version,
        compatibility=compatibility,
        breaking_changes=breaking,
        recommended_tests=tuple(tests),
    )


def signature_switch(old: str, new: str) -> Compatibility:
    """Two different signatures: nothing can be assumed compatible."""
    return Compatibility(
        Level.BREAKING,
        (Change(Level.BREAKING, "signature", f"signature changed from {old} to {new}"),),
    )

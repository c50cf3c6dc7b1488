"""Environments and their policies: development, staging and production by default.

    development  auto_deploy, no validation, rollback enabled
    staging      validation, rollback enabled
    production   validation, approval (1 approver), rollback, monitoring,
                 and only versions that succeeded in staging

`position` orders environments along the promotion path. A TOML file
(`dspy-registry serve --config registry.toml`) may redefine them and the
deployment defaults (shaped like DSPy.rb's `DSPy.configure` block).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from enum import IntEnum
from typing import Any

from ..errors import InvalidArgument, Violations, quote
from . import versioning
from .checks import OnMissingChecks, validate_required
from .names import check_name
from .programs import METRIC_RE
from .resources import capacity_text, validate_capacity


class Strategy(IntEnum):
    """The numbers match the proto enum Strategy."""

    REPLACE = 1
    BLUE_GREEN = 2
    CANARY = 3


@dataclass(frozen=True)
class CanaryStep:
    weight_percent: int
    pause_seconds: float


@dataclass(frozen=True, kw_only=True)
class StrategySpec:
    strategy: Strategy = Strategy.REPLACE
    canary_steps: tuple[CanaryStep, ...] = (CanaryStep(10, 60.0),)  # one step at 10 %, then promotion
    step_deadline_seconds: float = 0.0  # 0: none
    auto_promote: bool = True  # blue-green: switch by itself once the green is staged
    promote_delay_seconds: float = 0.0
    min_ack_percent: int = 100
    ack_timeout_seconds: float = 300.0


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """When a deployed version is unhealthy, and so rolled back by itself: the defaults."""

    enabled: bool = True
    error_rate: float = 0.05
    latency_p95_ms: float = 2000.0
    accuracy_drop: float = 0.10
    monitoring_window_seconds: float = 300.0
    min_requests: int = 100
    analysis_interval_seconds: float = 10.0


@dataclass(frozen=True, kw_only=True)
class Validation:
    min_metrics: dict[str, float] = field(default_factory=dict)
    max_metrics: dict[str, float] = field(default_factory=dict)
    required_metadata_keys: tuple[str, ...] = ()
    require_compatible_signature: bool = False


@dataclass(frozen=True, kw_only=True)
class Policy:
    auto_deploy: bool = False
    validation_required: bool = False
    validation: Validation = field(default_factory=Validation)
    approval_required: bool = False
    required_approvals: int = 0
    rollback_enabled: bool = True
    monitoring_required: bool = False
    required_predecessors: tuple[str, ...] = ()
    default_strategy: StrategySpec = field(default_factory=StrategySpec)
    auto_rollback: Thresholds = field(default_factory=Thresholds)
    # Checks CI must report PASSED for a version before a deployment of it starts here (domain/checks.py).
    required_checks: tuple[str, ...] = ()
    on_missing_checks: OnMissingChecks = OnMissingChecks.WAIT
    # What the environment offers the versions deployed to it (domain/resources.py): none, no limit.
    capacity: dict[str, str] = field(default_factory=dict)
    # The credential scan at registration (security.py). Only development may turn it off (the TOML
    # file's `security_scan = false`; the proto policy has no such field, so an UpdateEnvironment
    # turns it back on): staging and production must never take what it would have refused.
    security_scan: bool = True


SCAN_OPTIONAL = "development"  # the one environment whose policy may turn the credential scan off


@dataclass(frozen=True, kw_only=True)
class Environment:
    name: str
    description: str
    position: int
    policy: Policy
    create_time: datetime | None = None
    update_time: datetime | None = None
    revision: int = 0

    @property
    def resource_name(self) -> str:
        return f"environments/{self.name}"

    @property
    def etag(self) -> str:
        return f"rev-{self.revision}"  # opaque to clients; quote-free for shells and JSON


def defaults() -> tuple[Environment, ...]:
    """development, staging and production, with their default policies."""
    blue_green = StrategySpec(strategy=Strategy.BLUE_GREEN)  # the default strategy but for development
    return (
        Environment(
            name="development",
            description="Auto-deploys every registered version.",
            position=0,
            policy=Policy(
                auto_deploy=True,
                rollback_enabled=True,
                default_strategy=StrategySpec(strategy=Strategy.REPLACE),
            ),
        ),
        Environment(
            name="staging",
            description="Validated before deployment.",
            position=1,
            policy=Policy(
                validation_required=True,
                validation=Validation(require_compatible_signature=True),
                rollback_enabled=True,
                default_strategy=blue_green,
            ),
        ),
        Environment(
            name="production",
            description="Validated, approved, monitored; takes only what succeeded in staging.",
            position=2,
            policy=Policy(
                validation_required=True,
                validation=Validation(min_metrics={"accuracy": 0.85}, require_compatible_signature=True),
                approval_required=True,
                required_approvals=1,
                rollback_enabled=True,
                monitoring_required=True,
                required_predecessors=("staging",),
                default_strategy=blue_green,
            ),
        ),
    )


def validate(env: Environment, known: set[str], prefix: str = "environment") -> Violations:
    """Every problem with an environment definition, each naming its field."""
    v = Violations()
    v.collect(lambda: check_name(env.name, f"{prefix}.name"))
    if len(env.description) > 1024:
        v.add(f"{prefix}.description", "must be at most 1024 characters")
    p = env.policy
    if p.approval_required and p.required_approvals < 1:
        v.add(f"{prefix}.policy.required_approvals", "approval_required needs at least 1 approval")
    if not 0 <= p.required_approvals <= 10:
        v.add(f"{prefix}.policy.required_approvals", "must be 0-10")
    for i, predecessor in enumerate(p.required_predecessors):
        if predecessor == env.name:
            v.add(f"{prefix}.policy.required_predecessors[{i}]", "an environment cannot precede itself")
        elif predecessor not in known:
            v.add(f"{prefix}.policy.required_predecessors[{i}]", f"unknown environment {quote(predecessor)}")
    for group in ("min_metrics", "max_metrics"):
        for metric, value in getattr(p.validation, group).items():
            if not METRIC_RE.fullmatch(metric) or not math.isfinite(value):
                v.add(
                    f"{prefix}.policy.validation.{group}[{quote(metric)}]",
                    "a metric name and a finite number",
                )
    for i, key in enumerate(p.validation.required_metadata_keys):
        if not key or len(key) > 128:
            v.add(f"{prefix}.policy.validation.required_metadata_keys[{i}]", "must be 1-128 characters")
    v.items += validate_strategy(p.default_strategy, f"{prefix}.policy.default_strategy").items
    v.items += validate_required(p.required_checks, f"{prefix}.policy").items
    v.items += validate_capacity(p.capacity, f"{prefix}.policy").items
    t = p.auto_rollback
    if not 0 <= t.error_rate <= 1:
        v.add(f"{prefix}.policy.auto_rollback.error_rate", "must be between 0 and 1")
    if not 0 <= t.accuracy_drop <= 1:
        v.add(f"{prefix}.policy.auto_rollback.accuracy_drop", "must be between 0 and 1")
    if t.latency_p95_ms <= 0 or not 0 < t.monitoring_window_seconds <= MAX_DURATION_SECONDS:
        v.add(
            f"{prefix}.policy.auto_rollback", "latency and window must be positive (window at most a month)"
        )
    if not 0 < t.analysis_interval_seconds <= MAX_DURATION_SECONDS:
        v.add(f"{prefix}.policy.auto_rollback.analysis_interval", "must be positive, at most a month")
    if t.min_requests < 0:
        v.add(f"{prefix}.policy.auto_rollback.min_requests", "must not be negative")
    if not p.security_scan and env.name != SCAN_OPTIONAL:
        v.add(f"{prefix}.policy.security_scan", f"only {SCAN_OPTIONAL} may turn the credential scan off")
    return v


MAX_DURATION_SECONDS = 30 * 24 * 3600.0  # a month: longer pauses are mistakes, and overflow dates
MAX_CANARY_STEPS = 100


def validate_strategy(s: StrategySpec, prefix: str) -> Violations:
    v = Violations()
    if len(s.canary_steps) > MAX_CANARY_STEPS:
        v.add(f"{prefix}.canary.steps", f"at most {MAX_CANARY_STEPS} steps")
    durations = [s.promote_delay_seconds, s.ack_timeout_seconds, s.step_deadline_seconds]
    durations += [step.pause_seconds for step in s.canary_steps]
    if any(not 0 <= x <= MAX_DURATION_SECONDS for x in durations):
        v.add(prefix, f"durations must be between 0 and {MAX_DURATION_SECONDS:.0f} seconds")
    if s.strategy is Strategy.CANARY:
        if not s.canary_steps:
            v.add(f"{prefix}.canary.steps", "a canary needs at least one step")
        last = 0
        for i, step in enumerate(s.canary_steps):
            if not last < step.weight_percent <= 100:
                v.add(f"{prefix}.canary.steps[{i}].weight_percent", "weights strictly increase, 1-100")
            last = step.weight_percent
    if not 0 <= s.min_ack_percent <= 100:
        v.add(f"{prefix}.blue_green.min_ack_percent", "must be 0-100")
    return v


# -- the TOML file -----------------------------------------------------------------------------

_STRATEGIES = {"replace": Strategy.REPLACE, "blue_green": Strategy.BLUE_GREEN, "canary": Strategy.CANARY}


def _seconds(value: Any, where: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value[:-1].replace(".", "", 1).isdigit() and value[-1] in "smh":
        return float(value[:-1]) * {"s": 1, "m": 60, "h": 3600}[value[-1]]
    raise InvalidArgument.one(where, f"{quote(value)} is not a duration (seconds, or like 90s, 10m, 1h)")


def _strategy(table: dict[str, Any], base: StrategySpec, where: str) -> StrategySpec:
    spec = base
    if "default_strategy" in table:
        name = str(table["default_strategy"])
        if name not in _STRATEGIES:
            raise InvalidArgument.one(f"{where}.default_strategy", f"one of {sorted(_STRATEGIES)}")
        spec = replace(spec, strategy=_STRATEGIES[name])
    if "canary_percent" in table:  # a shorthand: one step at that weight, then promotion
        pause = spec.canary_steps[0].pause_seconds
        spec = replace(spec, canary_steps=(CanaryStep(int(table["canary_percent"]), pause),))
    if "canary_steps" in table:
        spec = replace(
            spec,
            canary_steps=tuple(
                CanaryStep(int(s["weight_percent"]), _seconds(s.get("pause", 0), f"{where}.canary_steps"))
                for s in table["canary_steps"]
            ),
        )
    return spec


def _thresholds(table: dict[str, Any], base: Thresholds, where: str) -> Thresholds:
    out = base
    if "auto_rollback" in table:
        out = replace(out, enabled=bool(table["auto_rollback"]))
    if "monitoring_window" in table:
        out = replace(
            out, monitoring_window_seconds=_seconds(table["monitoring_window"], f"{where}.monitoring_window")
        )
    if "error_rate" in table:
        out = replace(out, error_rate=float(table["error_rate"]))
    if "latency_p95_ms" in table:
        out = replace(out, latency_p95_ms=float(table["latency_p95_ms"]))
    if "accuracy_drop" in table:
        out = replace(out, accuracy_drop=float(table["accuracy_drop"]))
    if "min_requests" in table:
        out = replace(out, min_requests=int(table["min_requests"]))
    return out


def _environment(
    name: str, t: dict[str, Any], position: int, strategy: StrategySpec, thresholds: Thresholds
) -> Environment:
    where = f"environments.{name}"
    approval = bool(t.get("approval_required", False))
    validation_required = bool(t.get("validation_required", False))
    on_missing = str(t.get("on_missing_checks", "wait"))
    if on_missing not in _ON_MISSING_CHECKS:
        raise InvalidArgument.one(f"{where}.on_missing_checks", f"one of {', '.join(_ON_MISSING_CHECKS)}")
    policy = Policy(
        auto_deploy=bool(t.get("auto_deploy", False)),
        validation_required=validation_required,
        validation=Validation(
            min_metrics={k: float(x) for k, x in t.get("min_metrics", {}).items()},
            max_metrics={k: float(x) for k, x in t.get("max_metrics", {}).items()},
            required_metadata_keys=tuple(str(k) for k in t.get("required_metadata_keys", ())),
            require_compatible_signature=bool(t.get("require_compatible_signature", validation_required)),
        ),
        approval_required=approval,
        required_approvals=int(t.get("required_approvals", 1 if approval else 0)),
        rollback_enabled=bool(t.get("rollback_enabled", True)),
        monitoring_required=bool(t.get("monitoring_required", False)),
        required_predecessors=tuple(str(p) for p in t.get("required_predecessors", ())),
        default_strategy=_strategy(t, strategy, where),
        auto_rollback=_thresholds(t, thresholds, where),
        required_checks=tuple(str(c) for c in t.get("required_checks", ())),
        on_missing_checks=_ON_MISSING_CHECKS[on_missing],
        capacity={str(k): capacity_text(x) for k, x in t.get("capacity", {}).items()},
        security_scan=bool(t.get("security_scan", True)),
    )
    return Environment(
        name=name,
        description=str(t.get("description", "")),
        position=int(t.get("position", position)),
        policy=policy,
    )


_NUMBER = (int, float)
_ON_MISSING_CHECKS = {"wait": OnMissingChecks.WAIT, "refuse": OnMissingChecks.REFUSE}
_DEPLOYMENT_KEYS: dict[str, type | tuple[type, ...]] = {
    "default_strategy": str,
    "canary_percent": int,
    "canary_steps": list,
    "auto_rollback": bool,
    "monitoring_window": (int, float, str),
    "error_rate": _NUMBER,
    "latency_p95_ms": _NUMBER,
    "accuracy_drop": _NUMBER,
    "min_requests": int,
}
_ENVIRONMENT_KEYS: dict[str, type | tuple[type, ...]] = {
    **_DEPLOYMENT_KEYS,
    "description": str,
    "position": int,
    "auto_deploy": bool,
    "validation_required": bool,
    "min_metrics": dict,
    "max_metrics": dict,
    "required_metadata_keys": list,
    "require_compatible_signature": bool,
    "approval_required": bool,
    "required_approvals": int,
    "rollback_enabled": bool,
    "monitoring_required": bool,
    "required_predecessors": list,
    "required_checks": list,
    "on_missing_checks": str,
    "capacity": dict,
    "security_scan": bool,
}


def _check_table(table: Any, allowed: dict[str, type | tuple[type, ...]], where: str) -> Violations:
    """Every unknown key and every value of the wrong type (TOML's `"false"` is not false)."""
    v = Violations()
    if not isinstance(table, dict):
        v.add(where, "must be a table")
        return v
    for key, value in table.items():
        kind = allowed.get(key)
        if kind is None:
            v.add(f"{where}.{key}", f"unknown setting; known: {', '.join(sorted(allowed))}")
        elif isinstance(value, bool) and kind is not bool:
            v.add(f"{where}.{key}", "must not be a boolean")
        elif not isinstance(value, kind):
            v.add(f"{where}.{key}", f"must be {getattr(kind, '__name__', 'a number')}")
    return v


def load_toml(text: str) -> tuple[Environment, ...]:
    """Environments from a TOML file shaped like DSPy.rb's configure block:

        [deployment]                       # defaults for every environment below
        default_strategy = "blue_green"    # replace | blue_green | canary
        canary_percent = 10
        auto_rollback = true
        monitoring_window = "10m"

        [environments.production]
        validation_required = true
        approval_required = true
        monitoring_required = true
        min_metrics = { accuracy = 0.85 }
        required_predecessors = ["staging"]
        required_checks = ["integration_tests", "load_test"]   # reported by CI (ReportVersionCheck)
        on_missing_checks = "wait"         # wait (PENDING_CHECKS) | refuse

        [environments.production.capacity] # what versions' requirements are checked against
        memory = "16GiB"
        cpu = 8

    Without an [environments] table, the three defaults take the [deployment] defaults.
    A [versioning] table is checked here and read by versioning.load_toml.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument.one("config", f"not valid TOML: {exc}") from None
    v = Violations()
    for key in data:
        if key == "versioning":  # read by versioning.load_toml; checked here so that one error names all
            v.items += versioning.check_table(data[key]).items
        elif key not in ("deployment", "environments"):
            v.add(key, "unknown section; known: deployment, environments, versioning")
    v.items += _check_table(data.get("deployment", {}), _DEPLOYMENT_KEYS, "deployment").items
    for name, table in (data.get("environments") or {}).items():
        v.items += _check_table(table, _ENVIRONMENT_KEYS, f"environments.{name}").items
    v.raise_if_any()
    try:
        deployment = data.get("deployment", {})
        strategy = _strategy(deployment, StrategySpec(strategy=Strategy.BLUE_GREEN), "deployment")
        thresholds = _thresholds(deployment, Thresholds(), "deployment")
        tables = data.get("environments")
        if tables:
            environments = tuple(
                _environment(name, table, i, strategy, thresholds)
                for i, (name, table) in enumerate(tables.items())
            )
        else:
            environments = tuple(
                replace(
                    e,
                    policy=replace(
                        e.policy,
                        default_strategy=e.policy.default_strategy if e.name == "development" else strategy,
                        auto_rollback=thresholds,
                    ),
                )
                for e in defaults()
            )
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise InvalidArgument.one("config", f"unexpected value: {exc!r}") from None
    known = {e.name for e in environments}
    v = Violations()
    for e in environments:
        v.items += validate(e, known, f"environments.{e.name}").items
    v.raise_if_any()
    return environments


# -- stored form -------------------------------------------------------------------------------


def strategy_to_json(s: StrategySpec) -> dict[str, Any]:
    # Spelt out rather than asdict(), which deep-copies field by field: every deployment's stored
    # body holds its strategy, written once per change (each auto-deploying registration).
    return {
        "strategy": s.strategy.name.lower(),
        "canary_steps": tuple(
            {"weight_percent": c.weight_percent, "pause_seconds": c.pause_seconds} for c in s.canary_steps
        ),
        "step_deadline_seconds": s.step_deadline_seconds,
        "auto_promote": s.auto_promote,
        "promote_delay_seconds": s.promote_delay_seconds,
        "min_ack_percent": s.min_ack_percent,
        "ack_timeout_seconds": s.ack_timeout_seconds,
    }


def strategy_from_json(s: dict[str, Any]) -> StrategySpec:
    return StrategySpec(
        strategy=Strategy[s["strategy"].upper()],
        canary_steps=tuple(
            CanaryStep(int(c["weight_percent"]), float(c["pause_seconds"])) for c in s["canary_steps"]
        ),
        step_deadline_seconds=float(s["step_deadline_seconds"]),
        auto_promote=bool(s["auto_promote"]),
        promote_delay_seconds=float(s["promote_delay_seconds"]),
        min_ack_percent=int(s["min_ack_percent"]),
        ack_timeout_seconds=float(s["ack_timeout_seconds"]),
    )


def policy_to_json(p: Policy) -> dict[str, Any]:
    data = asdict(p)
    data["default_strategy"] = strategy_to_json(p.default_strategy)
    data["on_missing_checks"] = p.on_missing_checks.name.lower()
    return data


def policy_from_json(d: dict[str, Any]) -> Policy:
    strategy = strategy_from_json(d["default_strategy"])
    v = d["validation"]
    return Policy(
        auto_deploy=bool(d["auto_deploy"]),
        validation_required=bool(d["validation_required"]),
        validation=Validation(
            min_metrics=dict(v["min_metrics"]),
            max_metrics=dict(v["max_metrics"]),
            required_metadata_keys=tuple(v["required_metadata_keys"]),
            require_compatible_signature=bool(v["require_compatible_signature"]),
        ),
        approval_required=bool(d["approval_required"]),
        required_approvals=int(d["required_approvals"]),
        rollback_enabled=bool(d["rollback_enabled"]),
        monitoring_required=bool(d["monitoring_required"]),
        required_predecessors=tuple(d["required_predecessors"]),
        default_strategy=strategy,
        auto_rollback=Thresholds(**d["auto_rollback"]),
        # Absent from policies stored before required checks existed.
        required_checks=tuple(d.get("required_checks", ())),
        on_missing_checks=OnMissingChecks[str(d.get("on_missing_checks", "wait")).upper()],
        capacity=dict(d.get("capacity", {})),
        security_scan=bool(d.get("security_scan", True)),  # absent from policies stored before it
    )


def same_definition(a: Environment, b: Environment) -> bool:
    return (a.description, a.position, a.policy) == (b.description, b.position, b.policy)

"""Program versions: what a registration must carry, and what DSPy program state looks like."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import FieldViolation, InvalidArgument, Violations, quote

DSPY_MEDIA_TYPE = "application/vnd.dspy.program+json"
MEDIA_TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")
LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9_.@:/-]{0,63}$")
METRIC_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,62}$")
MAX_LABELS = 32
MAX_METRICS = 64
MAX_METADATA_BYTES = 256 * 1024
UNARY_ARTIFACT_LIMIT = 4 * 1024 * 1024
DEFAULT_UPLOAD_LIMIT = 64 * 1024 * 1024


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


SUMMARY_TEXT_LIMIT = 2000


@dataclass(frozen=True, kw_only=True)
class PredictorSummary:
    """A predictor as a person reads it; long instructions are cut, their digest is whole."""

    name: str
    instructions: str
    demo_count: int
    field_count: int
    instructions_digest: str = ""

    @classmethod
    def of(cls, name: str, instructions: str, demo_count: int, field_count: int) -> PredictorSummary:
        if len(instructions) <= SUMMARY_TEXT_LIMIT:
            return cls(
                name=name, instructions=instructions, demo_count=demo_count, field_count=field_count
            )  # whole: no digest needed
        shown = instructions[: SUMMARY_TEXT_LIMIT - 1] + "…"
        digest = hashlib.sha256(instructions.encode()).hexdigest()
        return cls(
            name=name,
            instructions=shown,
            demo_count=demo_count,
            field_count=field_count,
            instructions_digest=digest,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "instructions": self.instructions,
            "demo_count": self.demo_count,
            "field_count": self.field_count,
            "instructions_digest": self.instructions_digest,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PredictorSummary:
        return cls(
            name=d["name"],
            instructions=d["instructions"],
            demo_count=d["demo_count"],
            field_count=d["field_count"],
            instructions_digest=d.get("instructions_digest", ""),
        )


@dataclass(frozen=True, kw_only=True)
class ProgramDraft:
    """A registration, validated: everything but the stored state."""

    program: str
    version: str  # explicit, or "" to auto-increment
    change_type: int | None
    media_type: str
    signature: str  # signatures/{s}/versions/{v|latest}
    performance: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


def validate_labels(labels: dict[str, str], path: str, v: Violations) -> None:
    if len(labels) > MAX_LABELS:
        v.add(path, f"at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not LABEL_KEY_RE.fullmatch(key):
            v.add(f"{path}[{quote(key)}]", "label keys must match ^[a-z][a-z0-9_-]{0,62}$")
        if not LABEL_VALUE_RE.fullmatch(value):
            v.add(f"{path}[{quote(key)}]", "label values are up to 63 of A-Za-z0-9_.@:/-")


# Metrics whose values have a known range. A fraction: accuracy, precision, recall and f1 (also as
# f1_score, with a val_/test_/eval_/train_ prefix or a _macro/_micro/_weighted suffix). Never below
# zero: a latency or a cost (any name with `latency` or `cost` as one of its words: latency_ms,
# latency_p95_ms, p95_latency_ms, cost_usd, cost_per_prediction). Other names stay free, but finite.
FRACTION_METRIC_RE = re.compile(
    r"^(?:(?:val|test|eval|train)_)?(?:accuracy|precision|recall|f1|f1_score)(?:_(?:macro|micro|weighted))?$",
    re.IGNORECASE,
)
NON_NEGATIVE_METRIC_RE = re.compile(r"(?:^|[_.])(?:latency|cost)(?:[_.]|$)", re.IGNORECASE)


def metric_range_problem(name: str, value: float) -> str | None:
    """Why `value` is impossible for the metric `name`, or None when it is possible."""
    if not math.isfinite(value):
        return "must be a finite number"
    if FRACTION_METRIC_RE.fullmatch(name) and not 0 <= value <= 1:
        return f"{name} is a fraction between 0 and 1 (0.91, not 91)"
    if NON_NEGATIVE_METRIC_RE.search(name) and value < 0:
        return f"{name} must not be negative"
    return None


def validate_performance(performance: dict[str, float], path: str, v: Violations) -> None:
    """Metric names, their count, and impossible values (metric_range_problem)."""
    if len(performance) > MAX_METRICS:
        v.add(path, f"at most {MAX_METRICS} metrics")
    for key, value in performance.items():
        if not METRIC_RE.fullmatch(key):
            v.add(f"{path}[{quote(key)}]", "metric names must match ^[A-Za-z_][A-Za-z0-9_.]{0,62}$")
        problem = metric_range_problem(key, value)
        if problem is not None:
            v.add(f"{path}[{quote(key)}]", problem)


def validate_metadata(metadata: dict[str, Any], path: str, v: Violations) -> None:
    size = len(json.dumps(metadata, separators=(",", ":")))
    if size > MAX_METADATA_BYTES:
        v.add(path, f"is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}")


def validate_media_type(media_type: str, path: str, v: Violations) -> None:
    if not MEDIA_TYPE_RE.fullmatch(media_type):
        v.add(path, f"{quote(media_type)} is not a media type such as application/octet-stream")


def summarize_dspy_state(data: bytes | str, path: str = "artifact") -> tuple[PredictorSummary, ...]:
    """Check that `data` is what `dspy.Module.save(..json)` writes; list its predictors.

    The shape: a JSON object whose entries are predictors (`{"signature":
    {"instructions", "fields"}, "demos": [...], ...}`), keyed by attribute
    path, plus an optional `metadata` object (dependency versions). A bare
    dspy.Predict saves its own state at the top level: one predictor, `self`
    (the name dspy's named_parameters gives it).
    """
    return summarize_state(parse_dspy_state(data, path), path)


def parse_dspy_state(data: bytes | str, path: str = "artifact") -> Any:
    """`data` parsed as JSON; INVALID_ARGUMENT, saying why, where it is not JSON."""
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidArgument.one(path, f"DSPy program state must be JSON: {exc}") from None
    except ValueError:  # an integer longer than Python converts (sys.get_int_max_str_digits())
        raise InvalidArgument.one(path, "DSPy program state has a number too long to read") from None


def summarize_state(state: Any, path: str = "artifact") -> tuple[PredictorSummary, ...]:
    """summarize_dspy_state of JSON already parsed (parse_dspy_state)."""
    if not isinstance(state, dict):
        raise InvalidArgument.one(path, "DSPy program state must be a JSON object")
    v = Violations()
    if "metadata" in state and not isinstance(state["metadata"], dict):
        v.add(f"{path}.metadata", "must be an object")
    predictors = []
    entries = state
    if isinstance(state.get("signature"), dict) and "demos" in state:
        entries = {"self": {k: value for k, value in state.items() if k != "metadata"}}
    for name, entry in entries.items():
        if name == "metadata":
            continue
        where = f"{path}.{name}"
        if not isinstance(entry, dict):
            v.add(where, "a predictor's state must be an object")
            continue
        signature = entry.get("signature")
        demos = entry.get("demos")
        if not isinstance(demos, list):
            v.add(f"{where}.demos", "must be a list (dspy.Predict state)")
        if not isinstance(signature, dict):
            v.add(f"{where}.signature", "must be an object (dspy.Predict state)")
            continue
        instructions = signature.get("instructions", "")
        fields = signature.get("fields", [])
        if not isinstance(instructions, str):
            v.add(f"{where}.signature.instructions", "must be a string")
        if not isinstance(fields, list):
            v.add(f"{where}.signature.fields", "must be a list")
        if v:
            continue
        predictors.append(PredictorSummary.of(name, instructions, len(demos or []), len(fields)))
    if not predictors and not v:
        v.add(path, "DSPy program state must hold at least one predictor")
    v.raise_if_any()
    return tuple(predictors)


def spec_differences(
    registered: dict[str, Any], draft: ProgramDraft, signature: str, prefix: str = "spec"
) -> list[FieldViolation]:
    """What a registration of an existing version with the same artifact states differently.

    `registered` holds the existing version's media_type, signature (resolved, as
    signatures/{s}/versions/{v}), performance, labels and metadata; `signature` is the draft's,
    resolved the same way. Empty: the same registration again, answered with the first answer.
    Maps are compared key by key and the differing keys named, never their values (a value
    may be anything a caller put in metadata).
    """
    out: list[FieldViolation] = []
    given = {
        "media_type": draft.media_type,
        "signature": signature,
        "performance": draft.performance,
        "labels": draft.labels,
        "metadata": draft.metadata,
    }
    for name, value in given.items():
        before = registered[name]
        if before == value:
            continue
        if isinstance(before, dict) and isinstance(value, dict):
            keys = sorted(
                k for k in before.keys() | value.keys() if before.get(k, _ABSENT) != value.get(k, _ABSENT)
            )
            shown = ", ".join(quote(k) for k in keys[:10]) + (
                f" and {len(keys) - 10} more" if len(keys) > 10 else ""
            )
            what = f"differs from the registered version's at {shown}"
        else:
            what = f"is {quote(value)}; the registered version's is {quote(before)}"
        out.append(FieldViolation(f"{prefix}.{name}", what))
    return out


_ABSENT = object()

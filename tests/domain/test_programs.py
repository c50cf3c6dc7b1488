"""DSPy program state, comparison and upgrade steps, pagination tokens."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from dspy_registry.server.domain import compare, pagination, programs
from dspy_registry.server.domain.model import ProgramVersion
from dspy_registry.server.domain.signatures import Change, Compatibility, Level
from dspy_registry.server.errors import InvalidArgument
from tests.factories import dspy_state


def test_dspy_state_is_summarized() -> None:
    summary = programs.summarize_dspy_state(dspy_state("Be kind.", demos=3))
    assert summary == (programs.PredictorSummary.of("predict", "Be kind.", 3, 2),)
    long = programs.summarize_dspy_state(dspy_state("x", pad=10_000))[0]
    assert len(long.instructions) == programs.SUMMARY_TEXT_LIMIT and long.instructions.endswith("…")


def test_a_bare_predict_saves_its_state_at_the_top_level() -> None:
    # What dspy.Predict(...).save("p.json") writes: the predictor's own state, not keyed by a path.
    state = json.loads(dspy_state("Be kind.", demos=2))["predict"]
    data = json.dumps({**state, "metadata": {"dependency_versions": {"dspy": "3.4.1"}}}).encode()
    assert programs.summarize_dspy_state(data) == (programs.PredictorSummary.of("self", "Be kind.", 2, 2),)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"not json", "artifact"),
        (b"[]", "artifact"),
        (b'{"metadata": {}}', "artifact"),
        (json.dumps({"predict": {"signature": {}, "demos": 3}}).encode(), "artifact.predict.demos"),
        (json.dumps({"predict": {"demos": []}}).encode(), "artifact.predict.signature"),
        # More digits than Python's int() takes: a ValueError that is no JSONDecodeError (it was INTERNAL).
        (b'{"predict": {"demos": [], "signature": {}}, "n": ' + b"9" * 5000 + b"}", "artifact"),
    ],
)
def test_what_is_not_dspy_state_is_refused(data: bytes, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        programs.summarize_dspy_state(data)
    assert err.value.violations[0].field == field


NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _pv(version: str, **kw: object) -> ProgramVersion:
    base = ProgramVersion(
        program="p",
        version=version,
        digest="sha256:" + "0" * 64,
        size_bytes=1,
        media_type=programs.DSPY_MEDIA_TYPE,
        signature="sig",
        signature_version="1.0.0",
        performance={"accuracy": 0.9, "latency_p95_ms": 100.0, "new_metric": 0.0},
        labels={},
        metadata={"changelog": "a"},
        previous_version="",
        change_type=None,
        predictors=(
            programs.PredictorSummary(name="predict", instructions="x", demo_count=2, field_count=2),
        ),
        yanked=False,
        yank_reason="",
        creator="a",
        create_time=NOW,
        revision=1,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


SAME = Compatibility(Level.IDENTICAL)


def test_performance_diff_matches_the_seed_and_never_divides_by_zero() -> None:
    a = _pv("1.0.0")
    b = _pv("1.1.0", performance={"accuracy": 0.92, "latency_p95_ms": 80.0, "new_metric": 1.0, "only_b": 1.0})
    diffs = {d.metric: d for d in compare.performance_diff(a.performance, b.performance)}
    assert set(diffs) == {"accuracy", "latency_p95_ms", "new_metric"}
    assert diffs["accuracy"].change == pytest.approx(0.02) and diffs["accuracy"].change_percent == 2.22
    assert diffs["latency_p95_ms"].change_percent == -20.0 and not diffs["latency_p95_ms"].regressed
    assert diffs["new_metric"].change_percent is None


def test_recommendation_upgrade_hold_breaking() -> None:
    a = _pv("1.0.0")
    better = _pv("1.1.0", performance={"accuracy": 0.95, "latency_p95_ms": 90.0, "new_metric": 0.0})
    worse = _pv("1.1.0", performance={"accuracy": 0.85, "latency_p95_ms": 90.0, "new_metric": 0.0})
    assert compare.compare(a, better, SAME).recommendation is compare.Recommendation.UPGRADE
    held = compare.compare(a, worse, SAME)
    assert held.recommendation is compare.Recommendation.HOLD and "accuracy got worse" in held.reasons[0]
    breaking = Compatibility(Level.BREAKING, (Change(Level.BREAKING, "inputs.text", "field 'text' removed"),))
    assert compare.compare(a, better, breaking).recommendation is compare.Recommendation.BREAKING


def test_configuration_diff_names_what_differs() -> None:
    a = _pv("1.0.0")
    b = _pv(
        "1.1.0",
        predictors=(programs.PredictorSummary.of("predict", "y", 5, 2),),
        metadata={"changelog": "b"},
        signature_version="1.1.0",
    )
    paths = [c.path for c in compare.configuration_diff(a, b)]
    assert paths == [
        "signature",
        "predictors.predict.instructions",
        "predictors.predict.demo_count",
        "metadata.changelog",
    ]


def test_upgrade_step_recommends_tests_for_its_changes() -> None:
    breaking = Compatibility(Level.BREAKING, (Change(Level.BREAKING, "inputs.text", "field 'text' removed"),))
    step = compare.upgrade_step(_pv("1.0.0"), _pv("2.0.0"), breaking)
    assert step.breaking_changes == ("inputs.text: field 'text' removed",)
    assert any("call site" in t for t in step.recommended_tests)
    assert step.recommended_tests[-1] == "run the evaluation set on 2.0.0 and compare with 1.0.0"


def test_page_tokens_are_opaque_bound_to_their_query_and_checked() -> None:
    fp = pagination.query_fingerprint("programs", "a")
    token = pagination.next_token("after-me", fp)
    assert pagination.page(0, token, fp).after == "after-me"
    assert pagination.page(0, "", fp).size == pagination.DEFAULT_PAGE_SIZE
    assert pagination.page(5000, "", fp).size == pagination.MAX_PAGE_SIZE
    with pytest.raises(InvalidArgument):
        pagination.page(-1, "", fp)
    with pytest.raises(InvalidArgument):
        pagination.page(10, token, pagination.query_fingerprint("programs", "b"))
    with pytest.raises(InvalidArgument):
        pagination.page(10, "garbage!", fp)


def test_spec_differences_name_each_field_and_key_never_the_values() -> None:
    from dspy_registry.server.domain.programs import ProgramDraft, spec_differences

    registered = {
        "media_type": "application/vnd.dspy.program+json",
        "signature": "signatures/s/versions/1.0.0",
        "performance": {"accuracy": 0.9},
        "labels": {"team": "ml"},
        "metadata": {"changelog": "first", "secret_note": "keep-out"},
    }
    draft = ProgramDraft(
        program="p",
        version="1.0.0",
        change_type=None,
        media_type="application/vnd.dspy.program+json",
        signature="signatures/s/versions/1.0.0",
        performance={"accuracy": 0.9},
        labels={"team": "ml"},
        metadata={"changelog": "first", "secret_note": "keep-out"},
    )
    assert spec_differences(registered, draft, "signatures/s/versions/1.0.0") == []
    changed = ProgramDraft(
        program="p",
        version="1.0.0",
        change_type=None,
        media_type="application/json",
        signature="signatures/s/versions/1.0.0",
        performance={"accuracy": 0.95, "f1": 0.8},
        labels={"team": "ml"},
        metadata={"changelog": "first", "secret_note": "other"},
    )
    found = {
        d.field: d.description for d in spec_differences(registered, changed, "signatures/s/versions/1.1.0")
    }
    assert set(found) == {"spec.media_type", "spec.signature", "spec.performance", "spec.metadata"}
    assert "'accuracy'" in found["spec.performance"] and "'f1'" in found["spec.performance"]
    assert "'secret_note'" in found["spec.metadata"] and "other" not in found["spec.metadata"]

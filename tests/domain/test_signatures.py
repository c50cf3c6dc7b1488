"""Compatibility rules and the semver guard."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dspy_registry.server.domain import guard, signatures, versions
from dspy_registry.server.domain.signatures import FieldType, Kind, Level, SignatureField
from dspy_registry.server.errors import FailedPrecondition
from tests.factories import spec

BASE = spec()


def _with_inputs(*fields: SignatureField) -> signatures.SignatureSpec:
    return replace(BASE, inputs=BASE.inputs + fields)


def _level(new: signatures.SignatureSpec) -> Level:
    return signatures.compare(BASE, new).level


def test_identical_specs_are_identical() -> None:
    result = signatures.compare(BASE, spec())
    assert result.level is Level.IDENTICAL and result.changes == () and result.required_change is None


def test_text_only_changes_are_a_patch() -> None:
    assert _level(replace(BASE, instructions="Be terse.")) is Level.PATCH
    assert _level(replace(BASE, description="Other words")) is Level.PATCH
    reordered = replace(BASE, outputs=tuple(reversed(BASE.outputs)))
    assert _level(reordered) is Level.PATCH


@pytest.mark.parametrize(
    ("new", "level"),
    [
        (
            _with_inputs(SignatureField(name="context", type=FieldType(Kind.STRING), required=False)),
            Level.MINOR,
        ),
        (_with_inputs(SignatureField(name="context", type=FieldType(Kind.STRING))), Level.BREAKING),
        (
            replace(
                BASE, outputs=BASE.outputs + (SignatureField(name="reason", type=FieldType(Kind.STRING)),)
            ),
            Level.MINOR,
        ),
        (spec(outputs=("positive", "negative", "neutral", "mixed")), Level.MINOR),
        (spec(outputs=("positive", "negative")), Level.BREAKING),
        (replace(BASE, inputs=()), Level.BREAKING),
        (replace(BASE, outputs=BASE.outputs[:1]), Level.BREAKING),
        (replace(BASE, inputs=(SignatureField(name="text", type=FieldType(Kind.JSON)),)), Level.BREAKING),
        (
            replace(
                BASE,
                inputs=(
                    SignatureField(name="text", type=FieldType(Kind.LIST, item_type=FieldType(Kind.STRING))),
                ),
            ),
            Level.BREAKING,
        ),
        (
            replace(BASE, inputs=(SignatureField(name="text", type=FieldType(Kind.STRING), required=False),)),
            Level.MINOR,
        ),
        (
            replace(BASE, outputs=(replace(BASE.outputs[0], required=False), BASE.outputs[1])),
            Level.BREAKING,
        ),
    ],
)
def test_change_levels(new: signatures.SignatureSpec, level: Level) -> None:
    assert _level(new) is level


def test_a_rename_is_breaking_and_named_as_a_likely_rename() -> None:
    renamed = replace(BASE, inputs=(SignatureField(name="content", type=FieldType(Kind.STRING)),))
    result = signatures.compare(BASE, renamed)
    assert result.level is Level.BREAKING
    assert any("renamed to 'content'" in c.description for c in result.changes)


def test_making_an_optional_input_required_is_breaking() -> None:
    optional = replace(
        BASE, inputs=(SignatureField(name="text", type=FieldType(Kind.STRING), required=False),)
    )
    assert signatures.compare(optional, BASE).level is Level.BREAKING


def test_changes_are_listed_largest_first() -> None:
    new = replace(spec(outputs=("positive", "negative", "mixed")), instructions="new")
    levels = [c.level for c in signatures.compare(BASE, new).changes]
    assert levels == sorted(levels, reverse=True) and levels[0] is Level.BREAKING


def test_validate_spec_names_every_bad_field() -> None:
    bad = signatures.SignatureSpec(
        inputs=(
            SignatureField(name="1bad", type=FieldType(Kind.STRING)),
            SignatureField(name="dup", type=FieldType(Kind.ENUM)),
            SignatureField(name="dup", type=FieldType(Kind.LIST)),
        ),
        outputs=(),
    )
    fields = {v.field for v in signatures.validate_spec(bad).items}
    assert fields == {
        "spec.output_fields",
        "spec.input_fields[0].name",
        "spec.input_fields[1].type.enum_values",
        "spec.input_fields[2].name",
        "spec.input_fields[2].type.item_type",
    }


def test_guard_refuses_a_minor_bump_for_a_breaking_change_and_names_it() -> None:
    breaking = signatures.compare(BASE, spec(outputs=("positive", "negative")))
    with pytest.raises(FailedPrecondition) as err:
        guard.check(
            "signatures/s",
            versions.parse("1.0.0"),
            versions.parse("1.1.0"),
            breaking,
            guard.GuardMode.ENFORCE,
        )
    assert "enum value 'neutral' removed" in err.value.message
    assert [v.subject for v in err.value.violations] == ["signatures/s:outputs.sentiment"]
    warnings = guard.check(
        "signatures/s", versions.parse("1.0.0"), versions.parse("1.1.0"), breaking, guard.GuardMode.WARN
    )
    assert len(warnings) == 1 and "major" in warnings[0]
    assert (
        guard.check("s", versions.parse("1.0.0"), versions.parse("2.0.0"), breaking, guard.GuardMode.ENFORCE)
        == []
    )
    assert (
        guard.check("s", versions.parse("1.0.0"), versions.parse("1.1.0"), breaking, guard.GuardMode.OFF)
        == []
    )

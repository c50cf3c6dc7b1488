"""The [versioning] settings: read from TOML, a bad one named, the changelog rule, the automatic bump."""

from __future__ import annotations

import pytest

from dspy_registry.server.domain import versioning
from dspy_registry.server.domain.versions import ChangeType
from dspy_registry.server.errors import InvalidArgument, Violations


def test_the_seeds_settings_and_the_defaults() -> None:
    text = '[versioning]\nstrategy = "semantic"\nauto_increment = "patch"\nrequire_changelog = true\n'
    assert versioning.load_toml(text) == versioning.Versioning("semantic", ChangeType.PATCH, True)
    assert versioning.load_toml("[deployment]\n") == versioning.Versioning()
    for name, change in (("minor", ChangeType.MINOR), ("major", ChangeType.MAJOR)):
        assert versioning.load_toml(f'[versioning]\nauto_increment = "{name}"\n').auto_increment == change


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('strategy = "calendar"', "versioning.strategy"),
        ('strategy = "semver"', "versioning.strategy"),
        ('auto_increment = "build"', "versioning.auto_increment"),
        ("auto_increment = 1", "versioning.auto_increment"),
        ('auto_increment = ["patch"]', "versioning.auto_increment"),
        ('require_changelog = "yes"', "versioning.require_changelog"),
        ("changelog = true", "versioning.changelog"),
    ],
)
def test_a_bad_setting_is_a_config_error_naming_it(line: str, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        versioning.load_toml(f"[versioning]\n{line}\n")
    assert {v.field for v in err.value.violations} == {field}


def test_a_changelog_is_required_only_when_configured() -> None:
    required = versioning.Versioning(require_changelog=True)
    for metadata in ({}, {"changelog": ""}, {"changelog": "  "}, {"changelog": ["a"]}):
        v = Violations()
        versioning.check_changelog(required, metadata, "spec.metadata", v)
        assert [i.field for i in v.items] == ["spec.metadata.changelog"], metadata
    v = Violations()
    versioning.check_changelog(required, {"changelog": "Fewer demos"}, "spec.metadata", v)
    versioning.check_changelog(versioning.Versioning(), {}, "spec.metadata", v)
    assert not v.items


def test_the_automatic_bump_is_never_smaller_than_the_change_needs() -> None:
    patch = versioning.Versioning(auto_increment=ChangeType.PATCH)
    assert versioning.automatic_bump(patch, None) == ChangeType.PATCH
    assert versioning.automatic_bump(patch, ChangeType.MAJOR) == ChangeType.MAJOR
    minor = versioning.Versioning(auto_increment=ChangeType.MINOR)
    assert versioning.automatic_bump(minor, ChangeType.PATCH) == ChangeType.MINOR
    assert versioning.automatic_bump(versioning.Versioning(), ChangeType.MINOR) is None

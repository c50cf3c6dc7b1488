"""SemVer parsing, precedence as a sort key, bumps and `latest`."""

from __future__ import annotations

import random
from functools import cmp_to_key

import pytest
import semver

from dspy_registry.server.domain import versions
from dspy_registry.server.domain.versions import ChangeType
from dspy_registry.server.errors import InvalidArgument

# The precedence example of the SemVer 2.0 spec, section 11, plus a few more.
SPEC_ORDER = [
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.1",
    "1.9.0",
    "1.10.0",
    "2.0.0-0",
    "2.0.0-1",
    "2.0.0-10",
    "2.0.0-a",
    "2.0.0-a.0",
    "2.0.0-a-b",
    "2.0.0",
    "10.0.0",
]


def test_sort_key_orders_the_spec_example() -> None:
    shuffled = SPEC_ORDER[:]
    random.Random(7).shuffle(shuffled)
    assert sorted(shuffled, key=lambda v: versions.parse(v).sort_key) == SPEC_ORDER


def test_sort_key_agrees_with_semver_on_random_versions() -> None:
    rng = random.Random(42)
    idents = ["alpha", "beta", "rc", "0", "1", "2", "11", "a-b", "x1", "999"]

    def random_version() -> str:
        core = f"{rng.randint(0, 3)}.{rng.randint(0, 12)}.{rng.randint(0, 12)}"
        if rng.random() < 0.5:
            core += "-" + ".".join(rng.choice(idents) for _ in range(rng.randint(1, 3)))
        return core

    sample = {random_version() for _ in range(600)}
    by_key = sorted(sample, key=lambda v: versions.parse(v).sort_key)

    def precedence(a: str, b: str) -> int:
        return semver.Version.parse(a).compare(b)

    by_semver = sorted(sample, key=cmp_to_key(precedence))
    assert by_key == by_semver


@pytest.mark.parametrize(
    "bad", ["", "1", "1.0", "v1.0.0", "1.0.0.0", "01.0.0", "1.0.0-", "1.0.0-01", "latest"]
)
def test_parse_refuses_what_is_not_strict_semver(bad: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        versions.parse(bad, "spec.version")
    assert err.value.violations[0].field == "spec.version"


def test_build_metadata_is_kept_but_not_ordered() -> None:
    v = versions.parse("1.2.3+build.5")
    assert v.text == "1.2.3+build.5"
    assert v.sort_key == versions.parse("1.2.3").sort_key


@pytest.mark.parametrize(
    ("current", "change", "expected"),
    [
        (None, ChangeType.PATCH, "0.0.1"),
        (None, ChangeType.MINOR, "0.1.0"),
        (None, ChangeType.MAJOR, "1.0.0"),
        ("1.2.3", ChangeType.PATCH, "1.2.4"),
        ("1.2.3", ChangeType.MINOR, "1.3.0"),
        ("1.2.3", ChangeType.MAJOR, "2.0.0"),
        ("1.2.3-rc.1", ChangeType.PATCH, "1.2.4"),
    ],
)
def test_bump_follows_the_seeds_version_manager(current: str | None, change: int, expected: str) -> None:
    assert versions.bump(versions.parse(current) if current else None, change) == expected


@pytest.mark.parametrize(
    ("old", "new", "size"),
    [
        ("1.0.0", "1.0.1", ChangeType.PATCH),
        ("1.0.0", "1.1.0", ChangeType.MINOR),
        ("1.0.0", "2.0.0", ChangeType.MAJOR),
        ("0.1.0", "0.2.0", ChangeType.MAJOR),  # below 1.0.0 a minor bump may break
        ("1.0.0", "1.0.0", None),
        ("1.1.0", "1.0.9", None),
    ],
)
def test_required_bump(old: str, new: str, size: int | None) -> None:
    assert versions.required_bump(versions.parse(old), versions.parse(new)) == size


def test_latest_prefers_the_highest_release_over_a_higher_prerelease() -> None:
    parsed = [versions.parse(v) for v in ["1.0.0", "2.0.0-rc.1", "1.5.0"]]
    latest = versions.latest(parsed)
    assert latest is not None and latest.text == "1.5.0"
    only_pre = versions.latest([versions.parse("2.0.0-rc.1"), versions.parse("2.0.0-rc.2")])
    assert only_pre is not None and only_pre.text == "2.0.0-rc.2"
    assert versions.latest([]) is None


def test_parse_names_the_field_it_is_asked_for_each_time() -> None:
    """Parses are cached by the text alone: a bad text refused once under one field is refused again
    under the next one's name, and a good one parsed for one field is the same version for another."""
    for field in ("spec.version", "version", "to_version"):
        with pytest.raises(InvalidArgument) as err:
            versions.parse("1.0", field)
        assert err.value.violations[0].field == field
    assert versions.parse("2.3.4", "spec.version") == versions.parse("2.3.4")

"""Semantic versions: parsing, precedence as a sortable key, bumps, `latest`.

Strict SemVer 2.0 (pre-release and build metadata allowed) through the
`semver` package. The store orders versions with `sort_key`, a string whose
byte order is SemVer precedence, so that "newest first" is an index scan on
both backends.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import semver

from ..errors import InvalidArgument, quote

LATEST = "latest"
_MAX_COMPONENT = 10**18  # keeps every number inside a signed 64-bit column and the key width


class ChangeType:
    """Bump sizes, ordered: PATCH < MINOR < MAJOR."""

    PATCH = 1
    MINOR = 2
    MAJOR = 3

    NAMES = {PATCH: "patch", MINOR: "minor", MAJOR: "major"}


@dataclass(frozen=True, order=False)
class Version:
    """A parsed SemVer version; `text` is exactly what the user wrote."""

    text: str
    info: semver.Version

    @property
    def is_prerelease(self) -> bool:
        return self.info.prerelease is not None

    @property
    def sort_key(self) -> str:
        return sort_key(self.info)

    def __str__(self) -> str:
        return self.text


def parse(text: str, field: str = "version") -> Version:
    """Parse a strict SemVer string or raise InvalidArgument naming `field`."""
    parsed = _parse(text)
    if isinstance(parsed, str):
        raise InvalidArgument.one(field, parsed)
    return parsed


@lru_cache(maxsize=4096)
def _parse(text: str) -> Version | str:
    """parse's work, or what is wrong with `text`: cached by the text alone, so that a registration's
    version parsed by its validation (`spec.version`) is not parsed again under another field name."""
    if not text:
        return "must be a SemVer version such as 1.2.3"
    if len(text) > 128:
        return "must be at most 128 characters"
    try:
        info = semver.Version.parse(text)
    except (ValueError, TypeError):
        return f"{quote(text)} is not a strict SemVer 2.0 version (MAJOR.MINOR.PATCH[-pre][+build])"
    if max(info.major, info.minor, info.patch) >= _MAX_COMPONENT:
        return "version numbers must be below 10^18"
    return Version(text, info)


def sort_key(info: semver.Version) -> str:
    """A string whose byte order is SemVer precedence (build metadata ignored).

    MAJOR.MINOR.PATCH are zero-padded; a release sorts after all of its
    pre-releases ("~" is above every identifier character); pre-release
    identifiers sort numeric-before-alphanumeric, numbers by value (length
    first) and text in ASCII order, each ended by "!", which is below every
    identifier character so that a shorter list sorts first.
    """
    core = _core(info)
    if info.prerelease is None:
        return core + "~"
    parts = []
    for ident in str(info.prerelease).split("."):
        if ident.isdigit():
            parts.append(f"0{len(ident):03d}{ident}!")
        else:
            parts.append(f"1{ident}!")
    return core + "-" + "".join(parts)


def _core(info: semver.Version) -> str:
    """sort_key's MAJOR.MINOR.PATCH part (made here, not through a semver.Version of the core alone:
    its checks cost more than the key, and every registration asks for two)."""
    return f"{info.major:019d}.{info.minor:019d}.{info.patch:019d}"


def core_floor(info: semver.Version) -> str:
    """Every version with a lower MAJOR.MINOR.PATCH sorts below this key, every other one above."""
    return _core(info) + "-"


def core_ceiling(info: semver.Version) -> str:
    """Every version with a higher MAJOR.MINOR.PATCH sorts above this key, every other one below."""
    return _core(info) + "~~"


def bump(current: Version | None, change: int) -> str:
    """The next version after `current` for a change size (ChangeType value).

    With no current version the first release is 0.0.1, 0.1.0 or 1.0.0.
    A pre-release is promoted by its MAJOR.MINOR.PATCH alone: those numbers
    are bumped and the pre-release dropped (1.2.0-rc.1 + patch is 1.2.1).
    """
    base = current.info if current else semver.Version(0, 0, 0)
    if change == ChangeType.MAJOR:
        return str(semver.Version(base.major + 1, 0, 0))
    if change == ChangeType.MINOR:
        return str(semver.Version(base.major, base.minor + 1, 0))
    if change == ChangeType.PATCH:
        return str(semver.Version(base.major, base.minor, base.patch + 1))
    raise ValueError(f"unknown change type {change}")


def required_bump(old: Version, new: Version) -> int | None:
    """The change size that `old -> new` amounts to, or None when new is not greater.

    Below 1.0.0 SemVer makes no compatibility promise, so the guard reads a
    0.y bump as able to carry breaking changes (cargo's rule): 0.1.0 -> 0.2.0
    counts as MAJOR.
    """
    a, b = old.info, new.info
    if b.compare(a) <= 0:
        return None
    if b.major != a.major:
        return ChangeType.MAJOR
    if b.minor != a.minor:
        return ChangeType.MAJOR if a.major == 0 else ChangeType.MINOR
    return ChangeType.PATCH


def latest(versions: Iterable[Version]) -> Version | None:
    """The highest release, else the highest pre-release, else None."""
    best_release: Version | None = None
    best_any: Version | None = None
    for v in versions:
        if best_any is None or v.info.compare(best_any.info) > 0:
            best_any = v
        if not v.is_prerelease and (best_release is None or v.info.compare(best_release.info) > 0):
            best_release = v
    return best_release or best_any


def highest_release(versions: Iterable[Version]) -> Version | None:
    """The highest non-pre-release version: the base of an auto-increment."""
    releases = [v for v in versions if not v.is_prerelease]
    return max(releases, key=lambda v: v.sort_key) if releases else None

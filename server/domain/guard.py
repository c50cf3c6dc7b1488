"""The semver guard: a version's bump must be at least as big as its changes need.

A signature version is judged by its own changes (signatures.compare). A
program version is judged by the changes of the signature it implements: the
previous program version's signature against the new one's, a switch to
another signature being breaking. A version implementing the same signature
needs no particular bump; one whose signature gained optional fields or enum
values needs at least a minor bump; one whose signature breaks the previous
version's callers (a removed output, a changed type ...) needs a major bump,
since `latest` would otherwise start answering them in another shape.
"""

from __future__ import annotations

from dataclasses import replace
from enum import Enum

from ..errors import FailedPrecondition, PreconditionViolation
from .signatures import Compatibility
from .versions import ChangeType, Version, required_bump


class GuardMode(Enum):
    ENFORCE = "enforce"  # refuse with FAILED_PRECONDITION
    WARN = "warn"  # accept and return warnings
    OFF = "off"  # accept silently


def of_signature(compatibility: Compatibility) -> Compatibility:
    """A signature's changes as a program version's: each path under `signature.`."""
    changes = tuple(
        c if c.path.startswith("signature") else replace(c, path=f"signature.{c.path}")
        for c in compatibility.changes
    )
    return replace(compatibility, changes=changes)


def bump_sufficient(previous: Version, proposed: Version, compatibility: Compatibility) -> bool:
    needed = compatibility.required_change
    if needed is None:
        return True
    actual = required_bump(previous, proposed)
    return actual is not None and actual >= needed


def check(
    subject: str,
    previous: Version | None,
    proposed: Version,
    compatibility: Compatibility,
    mode: GuardMode,
) -> list[str]:
    """Return warnings (WARN mode) or raise FailedPrecondition (ENFORCE) for a too-small bump.

    `previous` is the highest existing version of a lower MAJOR.MINOR.PATCH:
    a backport such as 1.4.1 beside 2.0.0 is judged against 1.4.0, and the
    pre-releases of one core (2.0.0-rc.1, rc.2, 2.0.0) are each judged
    against the core before them (1.x), since SemVer lets pre-releases change
    freely.
    """
    if previous is None or mode is GuardMode.OFF:
        return []
    if bump_sufficient(previous, proposed, compatibility):
        return []
    needed = ChangeType.NAMES[compatibility.required_change or ChangeType.PATCH]
    significant = [c for c in compatibility.changes if c.level == compatibility.level]
    violations = [
        PreconditionViolation(
            "SEMVER_GUARD",
            f"{subject}:{c.path}",
            f"{c.description}: needs a {needed} bump from {previous}, got {proposed}",
        )
        for c in significant
    ]
    message = (
        f"{proposed} is too small a bump from {previous}: the changes need a {needed} bump ("
        + "; ".join(f"{c.path}: {c.description}" for c in significant)
        + ")"
    )
    if mode is GuardMode.WARN:
        return [message]
    raise FailedPrecondition(message, violations)

"""The `[versioning]` settings of the TOML file: how versions are numbered and what each must carry.

    [versioning]
    strategy = "semantic"        # the only strategy: strict SemVer 2.0 (versions.py)
    auto_increment = "patch"     # patch | minor | major: the bump a registration that gives
                                 # neither a version nor a change type gets
    require_changelog = true     # a version without metadata.changelog is refused

They apply to programs and signatures alike. A signature registered without a
version already takes the bump its changes need; with `auto_increment` it
takes the larger of that and the configured bump. A program registered
without either is refused unless `auto_increment` is set, and then takes the
larger of the configured bump and what its signature's change needs (the
program semver guard's rule, guard.py), so that an automatic number never
trips the guard.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument, Violations, quote
from .versions import ChangeType

STRATEGIES = ("semantic",)
_BUMPS = {name: change for change, name in ChangeType.NAMES.items()}
_KEYS = ("strategy", "auto_increment", "require_changelog")
CHANGELOG = "changelog"


@dataclass(frozen=True)
class Versioning:
    strategy: str = "semantic"
    auto_increment: int | None = None  # a ChangeType; None: a program needs a version or a change type
    require_changelog: bool = False


def check_table(table: Any, where: str = "versioning") -> Violations:
    """Every problem with a `[versioning]` table, each naming its key."""
    v = Violations()
    if not isinstance(table, dict):
        v.add(where, "must be a table")
        return v
    for key, value in table.items():
        if key not in _KEYS:
            v.add(f"{where}.{key}", f"unknown setting; known: {', '.join(_KEYS)}")
        elif key == "strategy" and value not in STRATEGIES:
            v.add(f"{where}.strategy", f"{quote(str(value))} is not supported; the only strategy is semantic")
        elif key == "auto_increment" and (not isinstance(value, str) or value not in _BUMPS):
            v.add(f"{where}.auto_increment", f"{quote(str(value))} is not one of patch, minor, major")
        elif key == "require_changelog" and not isinstance(value, bool):
            v.add(f"{where}.require_changelog", "must be true or false")
    return v


def from_table(table: dict[str, Any]) -> Versioning:
    """The settings of a `[versioning]` table; INVALID_ARGUMENT naming each bad key."""
    check_table(table).raise_if_any()
    auto = table.get("auto_increment")
    return Versioning(
        strategy=str(table.get("strategy", "semantic")),
        auto_increment=_BUMPS[auto] if auto is not None else None,
        require_changelog=bool(table.get("require_changelog", False)),
    )


def load_toml(text: str) -> Versioning:
    """The `[versioning]` settings of a whole configuration file (the defaults without the table)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument.one("config", f"not valid TOML: {exc}") from None
    return from_table(data.get("versioning", {})) if "versioning" in data else Versioning()


def check_changelog(settings: Versioning, metadata: dict[str, Any], path: str, v: Violations) -> None:
    """With require_changelog, metadata.changelog must be a non-blank string."""
    if not settings.require_changelog:
        return
    changelog = metadata.get(CHANGELOG)
    if not isinstance(changelog, str) or not changelog.strip():
        v.add(f"{path}.{CHANGELOG}", "required (versioning.require_changelog): say what changed")


def automatic_bump(settings: Versioning, needed: int | None) -> int | None:
    """The bump of a registration that gives neither version nor change type, or None for none."""
    if settings.auto_increment is None:
        return None
    return max(settings.auto_increment, needed or ChangeType.PATCH)

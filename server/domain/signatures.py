"""Signatures: typed fields, validation, and the compatibility rules of the semver guard.

Rules (what a consumer of the old version would suffer):
    breaking  removing or renaming a field, changing a field's type, removing an
              enum value, adding a required input, making an input required,
              making an output optional
    minor     adding an optional input or an output, adding an enum value,
              making an input optional or an output required
    patch     text only: description, instructions, field descriptions, order
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from ..errors import Violations, quote
from .versions import ChangeType

FIELD_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
MAX_FIELDS = 128
MAX_ENUM_VALUES = 256
MAX_TEXT = 64 * 1024
MAX_LIST_DEPTH = 4


class Kind(IntEnum):
    """Field type kinds; the numbers match the proto enum FieldType.Kind."""

    STRING = 1
    INTEGER = 2
    FLOAT = 3
    BOOLEAN = 4
    ENUM = 5
    LIST = 6
    JSON = 7


class Level(IntEnum):
    """How big a change is; the numbers match the proto enum CompatibilityLevel."""

    IDENTICAL = 1
    PATCH = 2
    MINOR = 3
    BREAKING = 4


REQUIRED_CHANGE = {
    Level.IDENTICAL: None,
    Level.PATCH: ChangeType.PATCH,
    Level.MINOR: ChangeType.MINOR,
    Level.BREAKING: ChangeType.MAJOR,
}


@dataclass(frozen=True)
class FieldType:
    kind: Kind
    enum_values: tuple[str, ...] = ()
    item_type: FieldType | None = None

    def describe(self) -> str:
        if self.kind is Kind.ENUM:
            return "enum(" + ", ".join(self.enum_values) + ")"
        if self.kind is Kind.LIST and self.item_type is not None:
            return f"list[{self.item_type.describe()}]"
        return self.kind.name.lower()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind.name.lower()}
        if self.enum_values:
            out["enum_values"] = list(self.enum_values)
        if self.item_type is not None:
            out["item_type"] = self.item_type.to_json()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FieldType:
        item = data.get("item_type")
        return cls(
            Kind[data["kind"].upper()],
            tuple(data.get("enum_values", ())),
            cls.from_json(item) if item else None,
        )


@dataclass(frozen=True, kw_only=True)
class SignatureField:
    name: str
    type: FieldType
    description: str = ""
    required: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type.to_json(),
            "description": self.description,
            "required": self.required,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SignatureField:
        return cls(
            name=data["name"],
            type=FieldType.from_json(data["type"]),
            description=data.get("description", ""),
            required=data.get("required", True),
        )


@dataclass(frozen=True, kw_only=True)
class SignatureSpec:
    description: str = ""
    instructions: str = ""
    inputs: tuple[SignatureField, ...] = ()
    outputs: tuple[SignatureField, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "instructions": self.instructions,
            "inputs": [f.to_json() for f in self.inputs],
            "outputs": [f.to_json() for f in self.outputs],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SignatureSpec:
        return cls(
            description=data.get("description", ""),
            instructions=data.get("instructions", ""),
            inputs=tuple(SignatureField.from_json(f) for f in data.get("inputs", ())),
            outputs=tuple(SignatureField.from_json(f) for f in data.get("outputs", ())),
        )


@dataclass(frozen=True)
class Change:
    level: Level
    path: str
    description: str


@dataclass(frozen=True)
class Compatibility:
    level: Level
    changes: tuple[Change, ...] = field(default_factory=tuple)

    @property
    def required_change(self) -> int | None:
        return REQUIRED_CHANGE[self.level]

    @property
    def breaking(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.level is Level.BREAKING)


def validate_spec(spec: SignatureSpec, prefix: str = "spec") -> Violations:
    """Every problem with a spec, each naming its field path."""
    v = Violations()
    if len(spec.description) > MAX_TEXT:
        v.add(f"{prefix}.description", f"must be at most {MAX_TEXT} characters")
    if len(spec.instructions) > MAX_TEXT:
        v.add(f"{prefix}.instructions", f"must be at most {MAX_TEXT} characters")
    if not spec.outputs:
        v.add(f"{prefix}.output_fields", "at least one output field is required")
    if len(spec.inputs) + len(spec.outputs) > MAX_FIELDS:
        v.add(f"{prefix}.input_fields", f"at most {MAX_FIELDS} fields in all")
    seen: set[str] = set()
    for group, fields in (("input_fields", spec.inputs), ("output_fields", spec.outputs)):
        for i, f in enumerate(fields):
            path = f"{prefix}.{group}[{i}]"
            if not FIELD_NAME_RE.fullmatch(f.name):
                v.add(f"{path}.name", f"{quote(f.name)} must be a Python identifier of 1-63 characters")
            elif f.name in seen:
                v.add(f"{path}.name", f"{quote(f.name)} is declared twice")
            seen.add(f.name)
            if len(f.description) > MAX_TEXT:
                v.add(f"{path}.description", f"must be at most {MAX_TEXT} characters")
            _validate_type(f.type, f"{path}.type", v, depth=0)
    return v


def _validate_type(t: FieldType, path: str, v: Violations, depth: int) -> None:
    if t.kind is Kind.ENUM:
        if not t.enum_values:
            v.add(f"{path}.enum_values", "an enum needs at least one value")
        if len(set(t.enum_values)) != len(t.enum_values):
            v.add(f"{path}.enum_values", "values must be unique")
        if len(t.enum_values) > MAX_ENUM_VALUES:
            v.add(f"{path}.enum_values", f"at most {MAX_ENUM_VALUES} values")
        if any(not value or len(value) > 256 for value in t.enum_values):
            v.add(f"{path}.enum_values", "each value must be 1-256 characters")
    elif t.enum_values:
        v.add(f"{path}.enum_values", "only an enum has values")
    if t.kind is Kind.LIST:
        if t.item_type is None:
            v.add(f"{path}.item_type", "a list needs an item type")
        elif depth >= MAX_LIST_DEPTH:
            v.add(f"{path}.item_type", f"lists nest at most {MAX_LIST_DEPTH} deep")
        else:
            _validate_type(t.item_type, f"{path}.item_type", v, depth + 1)
    elif t.item_type is not None:
        v.add(f"{path}.item_type", "only a list has an item type")


def compare(old: SignatureSpec, new: SignatureSpec) -> Compatibility:
    """What changed from `old` to `new`, each change with its level; largest first."""
    changes: list[Change] = []
    if old.description != new.description:
        changes.append(Change(Level.PATCH, "description", "description changed"))
    if old.instructions != new.instructions:
        changes.append(Change(Level.PATCH, "instructions", "instructions changed"))
    changes += _compare_fields("inputs", old.inputs, new.inputs, is_input=True)
    changes += _compare_fields("outputs", old.outputs, new.outputs, is_input=False)
    changes.sort(key=lambda c: -c.level)
    level = max((c.level for c in changes), default=Level.IDENTICAL)
    return Compatibility(level, tuple(changes))


def _compare_fields(
    group: str,
    old: tuple[SignatureField, ...],
    new: tuple[SignatureField, ...],
    *,
    is_input: bool,
) -> list[Change]:
    changes: list[Change] = []
    before = {f.name: f for f in old}
    after = {f.name: f for f in new}
    removed = [f for f in old if f.name not in after]
    added = [f for f in new if f.name not in before]
    for f in removed:
        twin = next((a for a in added if a.type == f.type), None)
        what = f"renamed to {quote(twin.name)}?" if twin else "removed"
        changes.append(Change(Level.BREAKING, f"{group}.{f.name}", f"field {quote(f.name)} {what}"))
    for f in added:
        if is_input and f.required:
            changes.append(
                Change(Level.BREAKING, f"{group}.{f.name}", f"required input {quote(f.name)} added")
            )
        else:
            kind = "optional input" if is_input else "output"
            changes.append(Change(Level.MINOR, f"{group}.{f.name}", f"{kind} {quote(f.name)} added"))
    for name, a in before.items():
        b = after.get(name)
        if b is None:
            continue
        changes += _compare_field(f"{group}.{name}", a, b, is_input=is_input)
    if [f.name for f in old if f.name in after] != [f.name for f in new if f.name in before]:
        changes.append(Change(Level.PATCH, group, "fields reordered"))
    return changes


def _compare_field(path: str, a: SignatureField, b: SignatureField, *, is_input: bool) -> list[Change]:
    changes = _compare_type(path, a.type, b.type)
    if a.required != b.required:
        if is_input:
            level = Level.BREAKING if b.required else Level.MINOR
            what = "input made required" if b.required else "input made optional"
        else:
            level = Level.MINOR if b.required else Level.BREAKING
            what = "output made required" if b.required else "output made optional"
        changes.append(Change(level, path, what))
    if a.description != b.description:
        changes.append(Change(Level.PATCH, path, "description changed"))
    return changes


def _compare_type(path: str, a: FieldType, b: FieldType) -> list[Change]:
    if a.kind != b.kind:
        return [Change(Level.BREAKING, path, f"type changed from {a.describe()} to {b.describe()}")]
    if a.kind is Kind.ENUM:
        changes = []
        for value in a.enum_values:
            if value not in b.enum_values:
                changes.append(Change(Level.BREAKING, path, f"enum value {quote(value)} removed"))
        for value in b.enum_values:
            if value not in a.enum_values:
                changes.append(Change(Level.MINOR, path, f"enum value {quote(value)} added"))
        return changes
    if a.kind is Kind.LIST and a.item_type is not None and b.item_type is not None:
        if a.item_type != b.item_type and a.item_type.kind == b.item_type.kind == Kind.ENUM:
            return _compare_type(f"{path}[]", a.item_type, b.item_type)
        if a.item_type != b.item_type:
            return [Change(Level.BREAKING, path, f"type changed from {a.describe()} to {b.describe()}")]
    return []

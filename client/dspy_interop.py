"""DSPy objects to and from the registry's messages, without making dspy a dependency of the client.

    spec = signature_spec(ClassifyText)        # a dspy.Signature class -> SignatureSpec
    artifact = module_artifact(program)        # a dspy.Module -> the JSON that module.save() writes
    module = load_module(ClassifyModule, data) # the artifact -> a live module with that state loaded

dspy is never imported here: an object can only be a dspy object when dspy is
already in `sys.modules`, so `is_signature` and `is_module` look there, and
everything else works by duck typing (dspy is slow to import, and optional:
`pip install 'dspy-registry[dspy]'`).

Type mapping (annotation -> FieldType kind):
    str -> STRING, int -> INTEGER, float -> FLOAT, bool -> BOOLEAN,
    Literal["a", "b"] -> ENUM (string values only), an Enum subclass -> ENUM (its
    values when all are strings, else its member names), list[X] -> LIST of X
    (bare `list`: of JSON), dict / dict[...] / a pydantic model / Any -> JSON,
    Optional[X] (X | None) -> X with required=False. Anything else is refused
    with a TypeError naming the field.
"""

from __future__ import annotations

import enum
import sys
import tempfile
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dspy_registry.v1 import registry_pb2 as pb

Kind = pb.FieldType


def _dspy() -> Any:
    """The dspy module if the process has imported it, else None (never imports it)."""
    return sys.modules.get("dspy")


def is_signature(value: Any) -> bool:
    """Whether `value` is a dspy.Signature class."""
    dspy = _dspy()
    return dspy is not None and isinstance(value, type) and issubclass(value, dspy.Signature)


def is_module(value: Any) -> bool:
    """Whether `value` is a dspy.Module instance."""
    dspy = _dspy()
    return dspy is not None and isinstance(value, dspy.Module)


def _field_type(annotation: Any, where: str, depth: int = 0) -> tuple[pb.FieldType, bool]:
    """The FieldType of an annotation, and whether it admits None (Optional[...])."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        others = [a for a in args if a is not type(None)]
        if len(others) == 1 and len(others) < len(args):
            inner, _ = _field_type(others[0], where, depth)
            return inner, True
        raise TypeError(
            f"{where}: a union ({annotation}) has no registry type; only Optional[X] is supported"
        )
    if annotation is str:
        return pb.FieldType(kind=Kind.KIND_STRING), False
    if annotation is bool:  # before int: bool is an int subclass, but a distinct kind here
        return pb.FieldType(kind=Kind.KIND_BOOLEAN), False
    if annotation is int:
        return pb.FieldType(kind=Kind.KIND_INTEGER), False
    if annotation is float:
        return pb.FieldType(kind=Kind.KIND_FLOAT), False
    if origin is typing.Literal:
        if not all(isinstance(a, str) for a in args):
            raise TypeError(f"{where}: Literal values must be strings to be enum values, not {args!r}")
        return pb.FieldType(kind=Kind.KIND_ENUM, enum_values=list(args)), False
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        members = list(annotation)
        # dspy parses an output by value first, then by name: keep the values when they are strings.
        if all(isinstance(m.value, str) for m in members):
            values = [str(m.value) for m in members]
        else:
            values = [m.name for m in members]
        return pb.FieldType(kind=Kind.KIND_ENUM, enum_values=values), False
    if annotation is list or origin is list:
        if len(args) > 1:
            raise TypeError(f"{where}: {annotation} takes one item type")
        item = pb.FieldType(kind=Kind.KIND_JSON)
        if args:
            item, optional_item = _field_type(args[0], f"{where} (list item)", depth + 1)
            if optional_item:
                raise TypeError(f"{where}: list items cannot be Optional")
        return pb.FieldType(kind=Kind.KIND_LIST, item_type=item), False
    if annotation is dict or origin is dict or annotation is typing.Any or _is_pydantic_model(annotation):
        return pb.FieldType(kind=Kind.KIND_JSON), False
    raise TypeError(
        f"{where}: {getattr(annotation, '__name__', annotation)!s} has no registry type "
        "(supported: str, int, float, bool, Literal[...] of strings, Enum, list[...], dict, "
        "a pydantic model, Any, Optional[...])"
    )


def _is_pydantic_model(annotation: Any) -> bool:
    base = getattr(sys.modules.get("pydantic"), "BaseModel", None)
    return base is not None and isinstance(annotation, type) and issubclass(annotation, base)


def _field(name: str, info: Any, where: str) -> pb.SignatureField:
    field_type, optional = _field_type(info.annotation, f"{where} field {name!r}")
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    description = str(extra.get("desc") or "")
    if description == f"${{{name}}}":  # dspy's placeholder for a field given no description
        description = ""
    # A field with a default may be left out; so may one that admits None.
    required = not optional and info.is_required()
    return pb.SignatureField(name=name, type=field_type, description=description, required=required)


def signature_spec(signature: Any) -> pb.SignatureSpec:
    """The SignatureSpec of a dspy.Signature class: its instructions and its typed fields, in order.

    The fields' prefixes are not kept (the spec has no place for them; the saved program state has).
    """
    where = getattr(signature, "__name__", "signature")
    return pb.SignatureSpec(
        instructions=str(signature.instructions or ""),
        input_fields=[_field(n, f, where) for n, f in signature.input_fields.items()],
        output_fields=[_field(n, f, where) for n, f in signature.output_fields.items()],
    )


def module_artifact(module: Any) -> bytes:
    """The bytes `module.save("program.json")` writes: its state and the dependency versions.

    Saved through dspy itself (state only, never pickle), so the artifact is exactly what
    `module.load(path)` reads back, dependency-version check included.
    """
    with tempfile.TemporaryDirectory(prefix="dspy-registry-") as directory:
        path = Path(directory) / "program.json"
        module.save(str(path), save_program=False)
        return path.read_bytes()


def load_module(module: Callable[[], Any], data: bytes) -> Any:
    """`module()` (a dspy.Module subclass or a zero-argument factory) with the artifact's state loaded.

    dspy loads state from a .json file only: the artifact goes through a temporary file.
    """
    live = module()
    if not callable(getattr(live, "load", None)):
        raise TypeError(f"module= must make a dspy.Module, not {type(live).__name__}")
    with tempfile.TemporaryDirectory(prefix="dspy-registry-") as directory:
        path = Path(directory) / "program.json"
        path.write_bytes(data)
        live.load(str(path))
    return live

"""The flexible argument types the client's methods accept, to the protos the RPCs take.

Names are accepted short (`sentiment`) or as resource names (`programs/sentiment`); enums as
`"canary"`, `"STRATEGY_CANARY"` or the number; durations as seconds or timedeltas; signatures as
protos, dicts, bytes or dspy.Signature classes; programs as bytes, state dicts, paths or
dspy.Module instances (the dspy conversions are in dspy_interop.py, which never imports dspy).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import registry_pb2 as pb

from . import dspy_interop


def request_id() -> str:
    """A fresh idempotency key: one per logical call, reused by its retries."""
    return str(uuid.uuid4())


def full_name(collection: str, value: str) -> str:
    """`programs/x` from `x` or `programs/x`."""
    return value if value.startswith(collection + "/") else f"{collection}/{value}"


def short_name(collection: str, value: str) -> str:
    """`x` from `programs/x` or `x`."""
    return value.removeprefix(collection + "/")


def version_name(program: str, version: str) -> str:
    """programs/{p}/versions/{v} from a short or full program name."""
    return f"{full_name('programs', program)}/versions/{version}"


def signature_name(signature: str, version: str | None) -> str:
    """signatures/{s}/versions/{v} from a short name (version `latest` unless given) or a resource name."""
    if "/versions/" in signature:
        return signature
    return f"{full_name('signatures', signature)}/versions/{version or 'latest'}"


def principal_filter(principal: str) -> str:
    """principals/{p}, or empty (no filter, or the caller) for an empty principal."""
    return full_name("principals", principal) if principal else ""


def struct(value: Mapping[str, Any] | struct_pb2.Struct | None) -> struct_pb2.Struct | None:
    if value is None or isinstance(value, struct_pb2.Struct):
        return value
    out = struct_pb2.Struct()
    out.update(dict(value))
    return out


def duration(value: timedelta | float | duration_pb2.Duration | None) -> duration_pb2.Duration | None:
    if value is None or isinstance(value, duration_pb2.Duration):
        return value
    out = duration_pb2.Duration()
    out.FromTimedelta(value if isinstance(value, timedelta) else timedelta(seconds=value))
    return out


def timestamp(value: datetime | timestamp_pb2.Timestamp | None) -> timestamp_pb2.Timestamp | None:
    if value is None or isinstance(value, timestamp_pb2.Timestamp):
        return value
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def enum(wrapper: Any, prefix: str, value: str | int | None) -> int:
    """An enum number from `"canary"`, `"STRATEGY_CANARY"` or the number itself."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    text = value.upper().replace("-", "_")
    return int(wrapper.Value(text if text.startswith(prefix) else prefix + text))


def enums(wrapper: Any, prefix: str, values: Iterable[str | int] | None) -> list[int]:
    return [enum(wrapper, prefix, v) for v in values or ()]


def signature_spec(signature: Any) -> pb.SignatureSpec:
    """A SignatureSpec from a proto, its dict (proto3 JSON mapping), its serialized bytes or a dspy.Signature.

    A dspy.Signature class gives its instructions and typed fields (dspy_interop.signature_spec);
    an annotation with no registry type raises TypeError naming the field.
    """
    if dspy_interop.is_signature(signature):
        return dspy_interop.signature_spec(signature)
    if isinstance(signature, pb.SignatureSpec):
        return signature
    if isinstance(signature, Mapping):
        return json_format.ParseDict(dict(signature), pb.SignatureSpec())
    if isinstance(signature, bytes | bytearray):
        return pb.SignatureSpec.FromString(bytes(signature))
    raise TypeError(
        f"signature must be a SignatureSpec, a dict, bytes or a dspy.Signature class, not {type(signature).__name__}"
    )


def artifact_bytes(program: Any) -> bytes:
    """The artifact from bytes, a dict of program state (as dspy.Module.dump_state gives), a file path
    or a dspy.Module (the JSON its `.save("program.json")` writes).
    """
    if dspy_interop.is_module(program):
        return dspy_interop.module_artifact(program)
    if isinstance(program, bytes | bytearray | memoryview):
        return bytes(program)
    if isinstance(program, Mapping):
        return json.dumps(program).encode()
    if isinstance(program, os.PathLike):
        return Path(program).read_bytes()
    raise TypeError(
        f"program must be bytes, a dict of state, a path or a dspy.Module, not {type(program).__name__}"
    )


def strategy(
    value: str | int | dpb.DeploymentStrategy | None,
    canary_percent: int | Sequence[int] | None,
    pause: timedelta | float | None,
) -> dpb.DeploymentStrategy | None:
    if value is None and (canary_percent is not None or pause is not None):
        value = "canary"  # a weight or a pause says what is meant
    if value is None or isinstance(value, dpb.DeploymentStrategy):
        return value
    if canary_percent is None:
        canary_percent = 10
    out = dpb.DeploymentStrategy(strategy=enum(dpb.Strategy, "STRATEGY_", value))  # type: ignore[arg-type]
    if out.strategy == dpb.STRATEGY_CANARY:
        weights = [canary_percent] if isinstance(canary_percent, int) else list(canary_percent)
        for weight in weights:
            step = out.canary.steps.add(weight_percent=weight)
            paused = duration(pause)
            if paused is not None:
                step.pause.CopyFrom(paused)
    return out


def selectors(program: str, environment: str, pairs: Sequence[tuple[str, str]]) -> list[dpb.TargetSelector]:
    chosen = list(pairs) or ([(program, environment)] if program or environment else [])
    return [dpb.TargetSelector(program=p, environment=e) for p, e in chosen]

"""What every service's converters share: times, durations, Structs, request fingerprints, names."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from ...errors import InvalidArgument

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """As Timestamp.FromDatetime (a naive time is UTC), in integers: FromDatetime goes through
    calendar.timegm, a few microseconds of Python for each time of each answer."""
    since = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)) - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1000
    )


def time_field(message: Any, name: str, path: str = "") -> datetime | None:
    """A Timestamp field as a datetime (None when unset); INVALID_ARGUMENT naming `path` (else `name`)
    when out of range."""
    if not message.HasField(name):
        return None
    try:
        value: datetime = getattr(message, name).ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument.one(path or name, "is not a valid time") from None
    return value


def duration_field(message: Any, name: str, path: str = "") -> timedelta | None:
    """A Duration field as a timedelta (None when unset); INVALID_ARGUMENT naming `path` (else `name`)
    beyond what a timedelta holds (a billion days either way; a Duration reaches 290 billion years)."""
    if not message.HasField(name):
        return None
    try:
        return timedelta(microseconds=getattr(message, name).ToNanoseconds() // 1000)
    except OverflowError:
        raise InvalidArgument.one(path or name, "is not a valid duration") from None


def duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def seconds(d: duration_pb2.Duration) -> float:
    return d.ToNanoseconds() / 1e9


def struct_to_dict(value: struct_pb2.Struct, field: str) -> dict[str, Any]:
    try:
        return json_format.MessageToDict(value)
    except (ValueError, json_format.SerializeToJsonError) as exc:  # NaN and ±Infinity have no JSON form
        raise InvalidArgument.one(field, f"must be JSON-representable: {exc}") from None


def dict_to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


def fingerprint(request: Message) -> str:
    """A hash of the request without its request_id: a retry must match it exactly."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("request_id")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def short(value: str, collection: str) -> str:
    """`programs/x` or `x` -> `x`."""
    prefix = collection + "/"
    return value[len(prefix) :] if value.startswith(prefix) else value

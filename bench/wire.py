"""Just enough of the protobuf wire format for the watch benchmarks to speak raw bytes.

The fan-out clients read every message as bytes and take from it only the revision it carries,
so that what they spend per message is the same for every server they watch; etcd's requests are
written here too, since etcd publishes its protos with the server, not as a Python package (its
wire format is stable: etcd's api/etcdserverpb/rpc.proto, field numbers below).
"""

from __future__ import annotations

ETCD_WATCH_METHOD = "/etcdserverpb.Watch/Watch"
ETCD_PUT_METHOD = "/etcdserverpb.KV/Put"
ETCD_STATUS_METHOD = "/etcdserverpb.Maintenance/Status"

_VARINT = 0
_I64 = 1
_LEN = 2
_I32 = 5


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """The varint at `at` and the offset after it."""
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def field(data: bytes, number: int) -> int | bytes | None:
    """The first value of field `number` in a message's bytes: an int (varint) or bytes; None if absent."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        kind = key & 7
        if kind == _VARINT:
            value, at = _varint(data, at)
            if key >> 3 == number:
                return value
        elif kind == _LEN:
            size, at = _varint(data, at)
            if key >> 3 == number:
                return data[at : at + size]
            at += size
        elif kind == _I64:
            at += 8
        elif kind == _I32:
            at += 4
        else:
            raise ValueError(f"unsupported wire type {kind}")
    return None


def _key(number: int, kind: int) -> bytes:
    return _encode_varint(number << 3 | kind)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def bytes_field(number: int, value: bytes) -> bytes:
    return _key(number, _LEN) + _encode_varint(len(value)) + value


def varint_field(number: int, value: int) -> bytes:
    return _key(number, _VARINT) + _encode_varint(value)


def etcd_watch_create(key: bytes) -> bytes:
    """WatchRequest{create_request (1): WatchCreateRequest{key (1)}}: one key, from now on."""
    return bytes_field(1, bytes_field(1, key))


def etcd_put(key: bytes, value: bytes) -> bytes:
    """PutRequest{key (1), value (2)}."""
    return bytes_field(1, key) + bytes_field(2, value)


def etcd_revision(response: bytes) -> int:
    """The store revision in an etcd response's header (field 1; ResponseHeader.revision is 3)."""
    header = field(response, 1)
    revision = field(header, 3) if isinstance(header, bytes) else None
    return revision if isinstance(revision, int) else 0


def etcd_created(response: bytes) -> bool:
    """Whether a WatchResponse is the one confirming the watch (created, field 3)."""
    return field(response, 3) == 1


# WatchTargetsResponse: revision (1), then one of snapshot (2), changes (3), progress (4).
WATCH_SNAPSHOT = 2
WATCH_CHANGES = 3


def watch_targets_kind(response: bytes) -> tuple[int, int]:
    """A WatchTargetsResponse's revision and the field number of what it holds (its `kind`)."""
    revision = 0
    at = 0
    while at < len(response):
        key, at = _varint(response, at)
        if key == 0x08:
            revision, at = _varint(response, at)
        elif key & 7 == _LEN:
            return revision, key >> 3
        else:
            raise ValueError(f"unexpected field key {key} in a WatchTargetsResponse")
    return revision, 0

"""Hostile requests for every RPC, built from the service descriptors.

The fuzzer writes the protobuf wire format itself rather than going through
the generated classes, whose setters refuse much of what a hostile client can
send (invalid UTF-8, an int32 beyond its range, a field with another wire
type, a Struct nested past the parser's limit). A request is the RPC's seed
(fuzz_seeds.py: a valid request naming what the test set up) with hostile
fields appended: a parser merges a field that comes again (the last scalar
wins, messages merge, repeated fields grow), so one hostile value arrives
inside an otherwise valid request, where the server's validation has to look
at it. Or it is not a valid message at all.

    kind        what is sent
    value       one field, at any depth, set to a boundary or hostile value of its type
    values      two to four such fields at once
    many        a repeated field with a thousand to a hundred thousand items
    deep        a Struct, Value or ListValue nested 20 to 10 000 deep
    unknown     a field number the message does not have
    wire-type   a known field sent with a wire type it does not have
    corrupt     truncated, random, valid prefix + junk, overrunning lengths, groups, field 0
    oversize    above the server's receive limit (RESOURCE_EXHAUSTED is the answer)

Half the calls, until it is done, come from the sweep: every field of every
request set to every value of its type once (about 10 000 calls), so that a
short run and a soak alike reach each one; the others are drawn at random.
Strings, bytes and page-token cursors are in fuzz_values.py.
`documented_codes(rpc)` is what the protos promise for an RPC: the codes its
comment and its service's comment name.
"""

from __future__ import annotations

import base64
import json
import math
import random
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from string import Template

from google.protobuf import text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from dspy_registry.v1 import access_pb2, deployment_pb2, registry_pb2
from tests.reliability.fuzz_seeds import SEEDS
from tests.reliability.fuzz_values import BYTES, CURSORS, HUGE_TEXT, NOT_UTF8, TEXT

SERVICES: tuple[ServiceDescriptor, ...] = (
    registry_pb2.DESCRIPTOR.services_by_name["RegistryService"],
    deployment_pb2.DESCRIPTOR.services_by_name["DeploymentService"],
    access_pb2.DESCRIPTOR.services_by_name["AccessService"],
)
PROTOS = Path(__file__).resolve().parents[2] / "protos" / "dspy_registry" / "v1"
OVERSIZE = 5 << 20  # above what the server receives (a 4 MiB artifact and 256 KiB around it)
MAX_REQUEST = 3 << 20  # what the fuzzer stays under, oversize aside

# Wire types.
VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5


@dataclass(frozen=True)
class Rpc:
    service: ServiceDescriptor
    method: MethodDescriptor

    @property
    def path(self) -> str:
        return f"/{self.service.full_name}/{self.method.name}"

    @property
    def name(self) -> str:
        return f"{self.service.name}.{self.method.name}"

    @property
    def client_streaming(self) -> bool:
        return bool(self.method.client_streaming)

    @property
    def server_streaming(self) -> bool:
        return bool(self.method.server_streaming)

    def request_class(self) -> type[Message]:
        return GetMessageClass(self.method.input_type)

    def response_class(self) -> type[Message]:
        return GetMessageClass(self.method.output_type)


def rpcs() -> list[Rpc]:
    """Every method of the three services, unary and streaming."""
    return [Rpc(service, method) for service in SERVICES for method in service.methods]


# -- the wire format ------------------------------------------------------------------------


def varint(n: int) -> bytes:
    """A base-128 varint; negative numbers as their 64-bit two's complement, as int32 and int64 go."""
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def tag(number: int, wire: int) -> bytes:
    return varint((number << 3) | wire)


def ld(number: int, data: bytes) -> bytes:
    """A length-delimited field: strings, bytes, messages, packed repeated scalars."""
    return tag(number, LEN) + varint(len(data)) + data


def nest(numbers: tuple[int, ...], leaf: bytes) -> bytes:
    """`leaf` (an encoded field of the innermost message) wrapped in each enclosing message field."""
    for number in reversed(numbers[:-1]):
        leaf = ld(number, leaf)
    return leaf


@dataclass(frozen=True)
class Wire:
    """One value as it goes on the wire: its wire type and payload (for LEN, the content)."""

    label: str
    wire: int
    payload: bytes

    def field(self, number: int) -> bytes:
        if self.wire == LEN:
            return ld(number, self.payload)
        return tag(number, self.wire) + self.payload


# -- hostile values, by field type ----------------------------------------------------------


def _text() -> list[tuple[str, bytes]]:
    return [(label, value.encode()) for label, value in TEXT] + NOT_UTF8


def _huge() -> list[tuple[str, bytes]]:
    return [(label, value.encode()) for label, value in HUGE_TEXT] + [
        ("huge 1 MiB bytes", b"\x00" * (1 << 20))
    ]


def _double(label: str, x: float) -> Wire:
    return Wire(f"double {label}", I64, struct.pack("<d", x))


def _float(label: str, x: float) -> Wire:
    return Wire(f"float {label}", I32, struct.pack("<f", x))


def _zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


_SPECIAL = [
    ("NaN", math.nan),
    ("inf", math.inf),
    ("-inf", -math.inf),
    ("-0.0", -0.0),
    ("-1", -1.0),
    ("0", 0.0),
]
_INT32 = [0, 1, -1, 2**31 - 1, -(2**31)]
_WIDER = [2**31, 2**32, 2**63 - 1, -(2**63), 2**64 - 1]  # wider than an int32: parsers truncate
_INT64 = [0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1]

T = FieldDescriptor


@cache
def scalar_values(field_type: int, enum_max: int = 0) -> tuple[Wire, ...]:
    """Hostile values for a non-message field of `field_type` (a FieldDescriptor.TYPE_*)."""
    if field_type == T.TYPE_DOUBLE:
        return (
            *(_double(label, x) for label, x in _SPECIAL),
            _double("max", 1.7976931348623157e308),
            _double("denormal", 5e-324),
            _double("2^53+1", 2.0**53 + 1),
            Wire("double signaling NaN", I64, struct.pack("<Q", 0x7FF0000000000001)),
            Wire("double negative NaN", I64, struct.pack("<Q", 0xFFF8000000000000)),
        )
    if field_type == T.TYPE_FLOAT:
        return (*(_float(label, x) for label, x in _SPECIAL), _float("max", 3.4028234e38))
    if field_type in (T.TYPE_INT32, T.TYPE_UINT32):
        return tuple(Wire(f"int32 {n}", VARINT, varint(n)) for n in _INT32 + _WIDER)
    if field_type in (T.TYPE_INT64, T.TYPE_UINT64):
        return tuple(Wire(f"int64 {n}", VARINT, varint(n)) for n in _INT64)
    if field_type == T.TYPE_SINT32:
        return tuple(Wire(f"sint32 {n}", VARINT, varint(_zigzag(n))) for n in _INT32)
    if field_type == T.TYPE_SINT64:
        return tuple(Wire(f"sint64 {n}", VARINT, varint(_zigzag(n))) for n in _INT64[:5])
    if field_type in (T.TYPE_FIXED32, T.TYPE_SFIXED32):
        return tuple(Wire(f"fixed32 {n}", I32, struct.pack("<I", n & 0xFFFFFFFF)) for n in _INT32)
    if field_type in (T.TYPE_FIXED64, T.TYPE_SFIXED64):
        return tuple(Wire(f"fixed64 {n}", I64, struct.pack("<Q", n & (2**64 - 1))) for n in _INT64)
    if field_type == T.TYPE_BOOL:
        return tuple(Wire(f"bool {n}", VARINT, varint(n)) for n in (0, 1, 2, 2**64 - 1))
    if field_type == T.TYPE_ENUM:
        numbers = [0, -1, enum_max + 1, 2**31 - 1, -(2**31), 1000]
        return tuple(Wire(f"enum {n}", VARINT, varint(n)) for n in numbers)
    if field_type == T.TYPE_STRING:
        return tuple(Wire(f"string {label}", LEN, value) for label, value in _text())
    if field_type == T.TYPE_BYTES:
        return tuple(Wire(f"bytes {label}", LEN, value) for label, value in _text() + BYTES)
    raise ValueError(f"no values for field type {field_type}")


# -- page tokens with their cursor rewritten --------------------------------------------------


def tampered(token: str) -> tuple[Wire, ...]:
    """`token` with its cursor replaced by each of CURSORS (the query's fingerprint kept)."""
    data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    out = []
    for label, cursor in CURSORS:
        raw = json.dumps({**data, "a": cursor}).encode()
        out.append(Wire(f"page token, cursor {label}", LEN, base64.urlsafe_b64encode(raw).rstrip(b"=")))
    return tuple(out)


# -- Struct, Value and ListValue, nested ------------------------------------------------------

STRUCT, VALUE, LIST_VALUE = "google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"


def deep(type_name: str, depth: int, *, through_lists: bool) -> bytes:
    """The content of a `type_name` message nested `depth` levels deep (Struct in Value in Struct …)."""
    value = b""  # innermost: an empty Value (kind unset)
    for _ in range(depth):
        if through_lists:
            value = ld(6, ld(1, value))  # Value.list_value = ListValue{values: [value]}
        else:
            value = ld(
                5, ld(1, ld(1, b"a") + ld(2, value))
            )  # Value.struct_value = Struct{fields: {a: value}}
    if type_name == VALUE:
        return value
    if type_name == LIST_VALUE:
        return ld(1, value)
    return ld(1, ld(1, b"a") + ld(2, value))  # Struct{fields: {a: value}}


DEPTHS = (20, 40, 64, 99, 100, 101, 1000, 10_000)


# -- where a hostile value can go -------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """A field at some depth of a request: its field numbers from the top, its dotted path."""

    numbers: tuple[int, ...]
    path: str
    field: FieldDescriptor

    @property
    def repeated(self) -> bool:
        return bool(self.field.is_repeated)

    @property
    def message_type(self) -> str | None:
        return self.field.message_type.full_name if self.field.message_type is not None else None


@cache
def slots(descriptor: Descriptor, depth: int = 4) -> tuple[Slot, ...]:
    """Every field of `descriptor` and of its message fields, `depth` levels down."""
    out: list[Slot] = []

    def walk(d: Descriptor, numbers: tuple[int, ...], prefix: str, left: int) -> None:
        for f in d.fields:
            out.append(Slot((*numbers, f.number), prefix + f.name, f))
            if f.message_type is not None and left > 1:
                walk(f.message_type, (*numbers, f.number), f"{prefix}{f.name}.", left - 1)

    walk(descriptor, (), "", depth)
    return tuple(out)


def _enum_max(field: FieldDescriptor) -> int:
    return max(v.number for v in field.enum_type.values) if field.enum_type is not None else 0


@dataclass(frozen=True, kw_only=True)
class Hostile:
    """One hostile call: the RPC, what kind of hostility, where, and the request message(s)."""

    rpc: Rpc
    kind: str
    what: str
    messages: tuple[bytes, ...]  # one for a unary request; the whole stream for a client stream

    @property
    def size(self) -> int:
        return sum(len(m) for m in self.messages)

    def reproducer(self, limit: int = 96) -> str:
        """Enough to send it again by hand: the method, the kind, and the bytes (cut when long)."""
        shown = ", ".join(
            f"{len(m)} bytes {m[:limit].hex()}{'…' if len(m) > limit else ''}" for m in self.messages
        )
        return f"{self.rpc.path} [{self.kind}: {self.what}] {shown}"


# -- seeds --------------------------------------------------------------------------------------


def seed(rpc: Rpc, names: Mapping[str, str]) -> tuple[bytes, ...]:
    """The RPC's seed message(s), filled with `names` and encoded."""
    cls = rpc.request_class()
    out = []
    for template in SEEDS[rpc.name]:
        message = cls()
        text_format.Parse(Template(template).substitute(names), message)
        out.append(message.SerializeToString())
    return tuple(out)


# -- the fuzzer -------------------------------------------------------------------------------

KINDS: dict[str, float] = {
    "value": 40,
    "values": 14,
    "many": 5,
    "deep": 5,
    "unknown": 8,
    "wire-type": 8,
    "corrupt": 18,
    "oversize": 0.3,
}


class Fuzzer:
    """Makes Hostile calls for every RPC, from seeds filled with `names`, deterministically from `seed_`.

    `page_tokens` holds a real next_page_token per List RPC (by `Service.Method`) for the query of
    its seed: the fuzzer sends it with its cursor rewritten (`tampered`).
    """

    huge_share = 0.015  # of string and bytes values, how many are a 1 MiB one

    def __init__(
        self, names: Mapping[str, str], seed_: int, page_tokens: Mapping[str, str] | None = None
    ) -> None:
        self.random = random.Random(seed_)
        self.rpcs = rpcs()
        self.seeds = {rpc.path: seed(rpc, names) for rpc in self.rpcs}
        self.tampered = {name: tampered(token) for name, token in (page_tokens or {}).items()}
        self._huge = _huge()
        self._sweep = self.sweep()

    def sweep(self) -> Iterator[Hostile]:
        """Every field of every request (at any depth) set to each value of its type once, in a
        random order: about 10 000 calls."""
        cases = [
            (rpc, s, w)
            for rpc in self.rpcs
            for s in slots(rpc.method.input_type)
            for w in self._wires(rpc, s)
        ]
        self.random.shuffle(cases)
        for rpc, s, w in cases:
            first, *rest = self.seeds[rpc.path]
            yield Hostile(
                rpc=rpc,
                kind="value",
                what=f"{s.path}: {w.label}",
                messages=(first + nest(s.numbers, w.field(s.numbers[-1])), *rest),
            )

    def hostile(self, rpc: Rpc | None = None, kind: str | None = None) -> Hostile:
        """The sweep's next call half the time (while it lasts), else a random one."""
        if rpc is None and kind is None and self.random.random() < 0.5:
            swept = next(self._sweep, None)
            if swept is not None:
                return swept
        rpc = rpc or self.random.choice(self.rpcs)
        kind = kind or self.random.choices(list(KINDS), weights=list(KINDS.values()))[0]
        seeds = self.seeds[rpc.path]
        # In a client stream one message is hostile (the header most often); the others are the seeds'.
        at = 0 if len(seeds) == 1 or self.random.random() < 0.6 else self.random.randrange(len(seeds))
        kind, what, message = self._message(rpc, seeds[at], kind)
        messages = list(seeds)
        messages[at] = message
        if rpc.client_streaming and self.random.random() < 0.3:
            messages += [seeds[-1]] * self.random.randrange(1, 4)  # more chunks than the header announced
        if rpc.client_streaming and self.random.random() < 0.1:
            messages = messages[:at] + messages[at + 1 :] or [message]  # a header missing, or alone
        return Hostile(rpc=rpc, kind=kind, what=what, messages=tuple(messages))

    def _message(self, rpc: Rpc, base: bytes, kind: str) -> tuple[str, str, bytes]:
        """(kind, what, bytes): a request message from `base`, made hostile by `kind` (or by a
        value, when the message has nothing that `kind` needs)."""
        r = self.random
        fields = slots(rpc.method.input_type)
        if kind == "corrupt" or not fields and kind != "unknown":
            return "corrupt", *self._corrupt(base)
        if kind == "values":
            chosen = [self._value(rpc, self._slot(fields)) for _ in range(r.randrange(2, 5))]
            return kind, "; ".join(w for w, _ in chosen), base + b"".join(b for _, b in chosen)
        repeated = [s for s in fields if s.repeated]
        if kind == "many" and repeated:
            return kind, *self._many(rpc, r.choice(repeated), base)
        nested = [s for s in fields if s.message_type in (STRUCT, VALUE, LIST_VALUE)]
        if kind == "deep" and nested:
            s = r.choice(nested)
            depth = r.choice(DEPTHS)
            lists = r.random() < 0.5
            body = deep(s.message_type or STRUCT, depth, through_lists=lists)
            what = f"{s.path}: nested {depth} deep through {'lists' if lists else 'structs'}"
            return kind, what, base + nest(s.numbers, ld(s.numbers[-1], body))
        if kind == "unknown":
            return kind, *self._unknown(rpc.method.input_type, base)
        if kind == "wire-type":
            return kind, *self._wire_type(self._slot(fields), base)
        if kind == "oversize":
            blob = b"a" * OVERSIZE
            s = self._slot(fields)
            return kind, f"{s.path}: {len(blob)} bytes", base + nest(s.numbers, ld(s.numbers[-1], blob))
        what, extra = self._value(rpc, self._slot(fields))
        return "value", what, base + extra

    def _slot(self, fields: tuple[Slot, ...]) -> Slot:
        """A field, the top-level ones more often: each level down, half as likely."""
        return self.random.choices(fields, weights=[2.0 ** -len(s.numbers) for s in fields])[0]

    def _wires(self, rpc: Rpc, s: Slot) -> tuple[Wire, ...]:
        f = s.field
        if f.type == T.TYPE_MESSAGE:
            corrupt = self._corrupt(b"\x0a\x03abc")[1]
            return (Wire("empty message", LEN, b""), Wire("corrupt message", LEN, corrupt))
        if s.path == "page_token" and rpc.name in self.tampered:
            return scalar_values(f.type) + self.tampered[rpc.name]
        return scalar_values(f.type, _enum_max(f))

    def _value(self, rpc: Rpc, s: Slot) -> tuple[str, bytes]:
        """(what, the field encoded at its depth)."""
        if s.field.type in (T.TYPE_STRING, T.TYPE_BYTES) and self.random.random() < self.huge_share:
            label, payload = self.random.choice(self._huge)
            wire = Wire(label, LEN, payload)
        else:
            wire = self.random.choice(self._wires(rpc, s))
        return f"{s.path}: {wire.label}", nest(s.numbers, wire.field(s.numbers[-1]))

    def _many(self, rpc: Rpc, s: Slot, base: bytes) -> tuple[str, bytes]:
        r = self.random
        wire = r.choice(self._wires(rpc, s))
        one = wire.field(s.numbers[-1])
        count = min(r.choice((1_000, 1_000, 10_000, 100_000)), MAX_REQUEST // max(1, len(one)))
        packable = wire.wire != LEN and s.field.type not in (T.TYPE_MESSAGE,)
        if packable and r.random() < 0.5:
            leaf = ld(s.numbers[-1], wire.payload * count)
            return f"{s.path}: {count} × {wire.label}, packed", base + nest(s.numbers, leaf)
        return f"{s.path}: {count} × {wire.label}", base + nest(s.numbers, one * count)

    def _unknown(self, descriptor: Descriptor, base: bytes) -> tuple[str, bytes]:
        r = self.random
        taken = {f.number for f in descriptor.fields}
        number = r.choice([n for n in (15, 99, 1000, 19_000, 2**29 - 1) if n not in taken])
        wire = r.choice(
            (
                Wire("varint", VARINT, varint(2**64 - 1)),
                Wire("fixed64", I64, b"\xff" * 8),
                Wire("fixed32", I32, b"\xff" * 4),
                Wire("bytes", LEN, b"\xff" * r.choice((1, 1024, 65_536))),
                Wire("group", SGROUP, tag(1, VARINT) + b"\x01" + tag(number, EGROUP)),
            )
        )
        return f"unknown field {number}: {wire.label}", base + wire.field(number)

    def _wire_type(self, s: Slot, base: bytes) -> tuple[str, bytes]:
        number = s.numbers[-1]
        actual = LEN if s.field.type in (T.TYPE_STRING, T.TYPE_BYTES, T.TYPE_MESSAGE) else None
        choices = [
            Wire("as varint", VARINT, varint(300)),
            Wire("as fixed64", I64, b"\x01" * 8),
            Wire("as fixed32", I32, b"\x01" * 4),
            Wire("as bytes", LEN, b"\xff\x01abc"),
        ]
        wire = self.random.choice(
            [w for w in choices if w.wire != actual and not (s.repeated and w.wire == LEN)]
        )
        return f"{s.path}: {wire.label}", base + nest(s.numbers, wire.field(number))

    def _corrupt(self, base: bytes) -> tuple[str, bytes]:
        r = self.random
        choices = {
            "truncated": lambda: base[: r.randrange(len(base))] if len(base) > 1 else b"\x0a",
            "random": lambda: r.randbytes(r.choice((1, 3, 64, 4096))),
            "ff ff ff": lambda: b"\xff\xff\xff",
            "valid + junk": lambda: base + r.randbytes(r.choice((1, 7, 300))),
            "length overrun": lambda: base + tag(1, LEN) + varint(1_000_000) + b"ab",
            "length beyond 2 GiB": lambda: base + tag(1, LEN) + varint(2**40) + b"ab",
            "field 0": lambda: tag(0, VARINT) + b"\x01" + base,
            "open group": lambda: base + tag(1, SGROUP),
            "stray end group": lambda: base + tag(1, EGROUP),
            "wire type 6": lambda: base + varint((1 << 3) | 6) + b"\x01",
            "wire type 7": lambda: base + varint((2 << 3) | 7),
            "overlong varint": lambda: base + tag(1, VARINT) + b"\xff" * 10 + b"\x01",
            "unterminated varint": lambda: base + tag(1, VARINT) + b"\xff\xff",
            "field number too big": lambda: base + varint(((2**29) << 3) | VARINT) + b"\x01",
            "bit flips": lambda: bytes(b ^ (1 << r.randrange(8)) if r.random() < 0.1 else b for b in base),
        }
        label = r.choice(list(choices))
        return label, choices[label]()


# -- what the protos promise ------------------------------------------------------------------

CODE_NAMES = (
    "OK CANCELLED UNKNOWN INVALID_ARGUMENT DEADLINE_EXCEEDED NOT_FOUND ALREADY_EXISTS PERMISSION_DENIED "
    "RESOURCE_EXHAUSTED FAILED_PRECONDITION ABORTED OUT_OF_RANGE UNIMPLEMENTED INTERNAL UNAVAILABLE "
    "DATA_LOSS UNAUTHENTICATED"
).split()
_CODE_RE = re.compile(r"\b(" + "|".join(CODE_NAMES) + r")\b")


def _comment_before(lines: list[str], index: int) -> str:
    out: list[str] = []
    i = index - 1
    while i >= 0 and lines[i].strip().startswith("//"):
        out.append(lines[i].strip()[2:])
        i -= 1
    return " ".join(reversed(out))


@cache
def _proto_comments() -> dict[str, str]:
    """`Service.Method` (and `Service`) -> its doc comment, from the .proto files."""
    comments: dict[str, str] = {}
    for proto in sorted(PROTOS.glob("*.proto")):
        lines = proto.read_text().splitlines()
        service = ""
        for i, line in enumerate(lines):
            found = re.match(r"\s*service (\w+)", line)
            if found:
                service = found.group(1)
                comments[service] = _comment_before(lines, i)
            found = re.match(r"\s*rpc (\w+)\(", line)
            if found:
                comments[f"{service}.{found.group(1)}"] = _comment_before(lines, i)
    return comments


def documented_codes(rpc: Rpc) -> frozenset[str]:
    """The status codes the RPC's comment and its service's comment name."""
    comments = _proto_comments()
    text = comments.get(rpc.name, "") + " " + comments.get(rpc.service.name, "")
    return frozenset(_CODE_RE.findall(text))

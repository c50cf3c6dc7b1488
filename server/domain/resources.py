"""Resource requirements a version declares, and the capacity an environment offers.

A version declares what it needs in `metadata.deployment.requirements`, in one of two forms:

    ["memory >= 1GB", "cpu >= 2", "gpu >= 1", "max_concurrency >= 50", "python >= 3.11"]
    {"memory": "1GB", "cpu": 2, "python": ">= 3.11"}    a map: a bare quantity means `>=`

One requirement is `NAME OP QUANTITY`:

    NAME      [a-z][a-z0-9_]{0,62}
    OP        >=  >  <=  <  ==  =       what the environment's value must be, compared with QUANTITY
    QUANTITY  memory: a number and a unit, B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB,
              TiB (powers of 1024), any case, a space allowed before it; a bare number is bytes
              cpu: a non-negative number (0.5 is half a core)
              gpu, max_concurrency: a non-negative whole number
              any other name (a runtime: `ruby >= 3.0`): a number or a dotted version (3.11.2),
              compared part by part

Registration refuses a requirement that does not read so, with a field violation naming it
(`spec.metadata.deployment.requirements[1]`). An environment declares what it offers in its
policy's `capacity` (`[environments.production.capacity]` in the TOML: memory = "16GiB",
cpu = 8, gpu = 0, max_concurrency = 200, python = "3.11"), each value a QUANTITY of its name.
A deployment is refused (FAILED_PRECONDITION, a CAPACITY violation naming the requirement and
what the environment offers) when a requirement does not hold for the value of the same name;
a name the environment does not declare is not limited there, and an environment that declares
no capacity accepts anything. No I/O here.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument, PreconditionViolation, Violations, quote

NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")
_REQUIREMENT_RE = re.compile(r"\s*([a-z][a-z0-9_]{0,62})\s*(>=|<=|==|>|<|=)\s*(\S(?:.*\S)?)\s*")
_OP_PREFIX_RE = re.compile(r"\s*(>=|<=|==|>|<|=)\s*(\S(?:.*\S)?)\s*")
_NUMBER = r"(?:\d+(?:\.\d+)?|\.\d+)"
_MEMORY_RE = re.compile(rf"({_NUMBER})\s*([kmgt]i?b|b)?", re.IGNORECASE)
_VERSION_RE = re.compile(r"\d{1,9}(?:\.\d{1,9}){0,3}")
_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "=": operator.eq,
}
WHOLE = frozenset({"gpu", "max_concurrency"})
MAX_REQUIREMENTS = 32
MAX_TEXT = 128
RULE = (
    "must read NAME OP QUANTITY, e.g. 'memory >= 1GB', 'cpu >= 2', 'gpu >= 1', 'max_concurrency >= 50' "
    "(OP one of >= > <= < == =)"
)


@dataclass(frozen=True, kw_only=True)
class Requirement:
    name: str
    op: str
    quantity: tuple[float, ...]  # memory in bytes, a number, or a version's parts
    text: str  # as declared, for messages

    def holds_for(self, offered: tuple[float, ...]) -> bool:
        """Whether an environment offering `offered` of this resource meets the requirement."""
        width = max(len(offered), len(self.quantity))
        pad: Callable[[tuple[float, ...]], tuple[float, ...]] = lambda q: q + (0.0,) * (width - len(q))  # noqa: E731
        return _OPS[self.op](pad(offered), pad(self.quantity))


def quantity(name: str, text: str) -> tuple[float, ...]:
    """A QUANTITY of resource `name`, as comparable parts; ValueError says what is wrong."""
    text = text.strip()
    if name == "memory":
        found = _MEMORY_RE.fullmatch(text)
        if not found:
            raise ValueError(f"{quote(text)} is not an amount of memory (like 512MiB, 1GB, 2 GiB)")
        return (float(found[1]) * _UNITS[(found[2] or "b").lower()],)
    if name == "cpu" or name in WHOLE:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or not re.fullmatch(_NUMBER, text):
            raise ValueError(f"{quote(text)} is not a non-negative number")
        if name in WHOLE and value != int(value):
            raise ValueError(f"{quote(text)} is not a whole number")
        return (value,)
    if not _VERSION_RE.fullmatch(text):
        raise ValueError(f"{quote(text)} is not a number or a dotted version (like 3.11)")
    return tuple(float(part) for part in text.split("."))


def _text(value: Any) -> str | None:
    """A quantity as declared: a string, or a JSON number (never a boolean)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value == int(value) else repr(value)
    return value if isinstance(value, str) else None


def _parse_one(text: str, where: str, v: Violations) -> Requirement | None:
    if len(text) > MAX_TEXT:
        v.add(where, f"must be at most {MAX_TEXT} characters")
        return None
    found = _REQUIREMENT_RE.fullmatch(text)
    if not found:
        v.add(where, f"{quote(text)} {RULE}")
        return None
    name, op, amount = found[1], found[2], found[3]
    try:
        return Requirement(name=name, op=op, quantity=quantity(name, amount), text=f"{name} {op} {amount}")
    except ValueError as bad:
        v.add(where, f"{name}: {bad}")
        return None


def parse_requirements(metadata: Mapping[str, Any], path: str = "metadata") -> list[Requirement]:
    """The requirements `metadata.deployment.requirements` declares (none when absent).

    Raises InvalidArgument naming each requirement that does not read as the grammar says.
    """
    deployment = metadata.get("deployment")
    if deployment is None:
        return []
    where = f"{path}.deployment"
    if not isinstance(deployment, Mapping):
        raise InvalidArgument.one(where, "must be an object")
    declared = deployment.get("requirements")
    where += ".requirements"
    if declared is None:
        return []
    v = Violations()
    out: list[Requirement] = []
    entries: list[tuple[str, Any, str | None]]
    if isinstance(declared, list):
        entries = [(f"{where}[{i}]", item, None) for i, item in enumerate(declared)]
    elif isinstance(declared, Mapping):
        entries = [(f"{where}[{quote(k)}]", item, str(k)) for k, item in declared.items()]
    else:
        raise InvalidArgument.one(where, f"must be a list of strings or a map; {RULE}")
    if len(entries) > MAX_REQUIREMENTS:
        raise InvalidArgument.one(where, f"at most {MAX_REQUIREMENTS} requirements")
    for at, item, name in entries:
        text = _text(item)
        if text is None:
            v.add(at, f"must be a string{' or a number' if name is not None else ''}; {RULE}")
            continue
        if name is not None:  # the map form: NAME -> QUANTITY, or NAME -> "OP QUANTITY"
            if not NAME_RE.fullmatch(name):
                v.add(at, f"{quote(name)} is not a resource name ([a-z][a-z0-9_]{{0,62}})")
                continue
            with_op = _OP_PREFIX_RE.fullmatch(text)
            text = f"{name} {with_op[1]} {with_op[2]}" if with_op else f"{name} >= {text}"
        found = _parse_one(text, at, v)
        if found is not None:
            out.append(found)
    v.raise_if_any()
    return out


def validate_requirements(metadata: Mapping[str, Any], path: str, v: Violations) -> None:
    """Registration's check: every declared requirement reads as the grammar says."""
    v.collect(lambda: parse_requirements(metadata, path))


def validate_capacity(capacity: Mapping[str, str], prefix: str) -> Violations:
    """An environment's `capacity`: resource names, each with a quantity of its kind."""
    v = Violations()
    for name, value in capacity.items():
        where = f"{prefix}.capacity[{quote(name)}]"
        if not NAME_RE.fullmatch(name):
            v.add(where, f"{quote(name)} is not a resource name ([a-z][a-z0-9_]{{0,62}})")
            continue
        try:
            quantity(name, value)
        except ValueError as bad:
            v.add(where, str(bad))
    return v


def capacity_text(value: Any) -> str:
    """A capacity value from the TOML file (a string or a number) as stored."""
    text = _text(value)
    if text is None:
        raise ValueError(f"{quote(value)} is neither a string nor a number")
    return text


def violations(
    metadata: Mapping[str, Any], capacity: Mapping[str, str], subject: str, environment: str
) -> list[PreconditionViolation]:
    """What of the version's requirements `environment`'s capacity does not meet (nothing to
    check when it declares none)."""
    if not capacity:
        return []
    try:
        required = parse_requirements(metadata)
    except InvalidArgument as bad:  # a version registered before requirements were read
        return [PreconditionViolation("CAPACITY", subject, f"unreadable requirements: {bad.message}")]
    out = []
    for r in required:
        offered = capacity.get(r.name)
        if offered is None:
            continue
        try:
            fits = r.holds_for(quantity(r.name, offered))
        except ValueError:
            fits = False
        if not fits:
            out.append(
                PreconditionViolation(
                    "CAPACITY", subject, f"requires {r.text}; {environment} offers {r.name} = {offered}"
                )
            )
    return out

"""Names and resource names: what is valid, and how `programs/x/versions/1.0.0` splits."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidArgument, quote
from . import versions

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
NAME_RULE = "must match ^[a-z][a-z0-9_-]{0,62}$ (lower case, digits, _ and -; 1-63 chars)"


PREFIX_RE = re.compile(r"[a-z0-9_-]{0,63}")


def check_prefix(value: str, field: str = "name_prefix") -> str:
    """A name prefix: the start of a valid name (or empty)."""
    if not PREFIX_RE.fullmatch(value):
        raise InvalidArgument.one(
            field, f"{quote(value)} can never start a name: names use a-z, 0-9, _ and -"
        )
    return value


# Idempotency keys: visible ASCII, as in HTTP's Idempotency-Key header.
REQUEST_ID_RE = re.compile(r"[\x21-\x7e]{1,128}")


def check_request_id(value: str) -> str:
    if not REQUEST_ID_RE.fullmatch(value):
        raise InvalidArgument.one("request_id", "must be 1-128 visible ASCII characters (no spaces)")
    return value


# Control characters but newline and tab (C0, DEL, C1), and the bidirectional embeddings, overrides
# and isolates: text shown in tables, logs and the audit must read as it is stored (U+202E would
# reverse what follows it on screen).
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def check_text(value: str, field: str, limit: int) -> str:
    """Free text: bounded, with no control characters but newline and tab, and no bidi overrides."""
    if len(value) > limit:
        raise InvalidArgument.one(field, f"must be at most {limit} characters")
    found = _UNPRINTABLE.search(value)
    if found:
        raise InvalidArgument.one(
            field, f"must not contain control or bidirectional formatting characters (U+{ord(found[0]):04X})"
        )
    return value


def check_name(value: str, field: str) -> str:
    """Return `value` if it is a valid short name, else raise InvalidArgument."""
    if not NAME_RE.fullmatch(value):
        raise InvalidArgument.one(field, f"{quote(value)} {NAME_RULE}")
    return value


@dataclass(frozen=True)
class VersionRef:
    """A reference to `{collection}/{name}/versions/{version}`; version may be `latest`."""

    collection: str
    name: str
    version: str

    @property
    def is_latest(self) -> bool:
        return self.version == versions.LATEST

    @property
    def parent(self) -> str:
        return f"{self.collection}/{self.name}"

    def __str__(self) -> str:
        return f"{self.collection}/{self.name}/versions/{self.version}"


def parse_parent(value: str, collection: str, field: str) -> str:
    """`programs/x` -> `x`; raise InvalidArgument for anything else."""
    parts = value.split("/")
    if len(parts) != 2 or parts[0] != collection:
        raise InvalidArgument.one(field, f"{quote(value)} must look like {collection}/{{name}}")
    return check_name(parts[1], field)


def parse_version_ref(
    value: str, collection: str, field: str, *, bare_means_latest: bool = False
) -> VersionRef:
    """Parse `{collection}/{name}/versions/{version|latest}`.

    With `bare_means_latest`, `{collection}/{name}` is read as its latest version.
    """
    parts = value.split("/")
    if bare_means_latest and len(parts) == 2 and parts[0] == collection:
        return VersionRef(collection, check_name(parts[1], field), versions.LATEST)
    if len(parts) != 4 or parts[0] != collection or parts[2] != "versions":
        raise InvalidArgument.one(
            field, f"{quote(value)} must look like {collection}/{{name}}/versions/{{version|latest}}"
        )
    name = check_name(parts[1], field)
    if parts[3] != versions.LATEST:
        versions.parse(parts[3], field)
    return VersionRef(collection, name, parts[3])


def signature_version_name(signature: str, version: str) -> str:
    return f"signatures/{signature}/versions/{version}"


def program_version_name(program: str, version: str) -> str:
    return f"programs/{program}/versions/{version}"

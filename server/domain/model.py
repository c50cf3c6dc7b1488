"""The records the registry keeps, as frozen values. The store reads and writes these."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby
from typing import Any

from .programs import PredictorSummary
from .signatures import Level, SignatureSpec


@dataclass(frozen=True, kw_only=True)
class SignatureVersion:
    signature: str
    version: str
    spec: SignatureSpec
    metadata: dict[str, Any]
    previous_version: str
    compatibility: Level | None
    creator: str
    create_time: datetime
    revision: int

    @property
    def name(self) -> str:
        return f"signatures/{self.signature}/versions/{self.version}"


@dataclass(frozen=True, kw_only=True)
class SignatureSummary:
    signature: str
    latest_version: str
    version_count: int
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True, kw_only=True)
class Implementation:
    """A program version's number and the signature version it implements: all that the semver
    guard reads of the versions either side of a new one (a ProgramVersion has them too)."""

    version: str
    signature: str  # signature name
    signature_version: str


@dataclass(frozen=True, kw_only=True)
class ProgramVersion:
    program: str
    version: str
    digest: str
    size_bytes: int
    media_type: str
    signature: str  # signature name
    signature_version: str
    performance: dict[str, float]
    labels: dict[str, str]
    metadata: dict[str, Any]
    previous_version: str
    change_type: int | None
    predictors: tuple[PredictorSummary, ...]
    yanked: bool
    yank_reason: str
    creator: str
    create_time: datetime
    revision: int

    @property
    def name(self) -> str:
        return f"programs/{self.program}/versions/{self.version}"

    @property
    def signature_name(self) -> str:
        return f"signatures/{self.signature}/versions/{self.signature_version}"

    @property
    def etag(self) -> str:
        # The revision of the last change identifies the state exactly.
        return f"rev-{self.revision}"  # opaque to clients; quote-free for shells and JSON


@dataclass(frozen=True, kw_only=True)
class ProgramSummary:
    program: str
    latest_version: str
    version_count: int
    labels: dict[str, str]
    signature: str
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True, kw_only=True)
class Event:
    """One entry of the event log; `revision` is set by the store when it commits.

    `events.py` says what each kind's `data` holds; writers build entries with `events.new_event`.
    """

    kind: str  # an events.EventKind value; read back, maybe one a newer release wrote
    resource: str  # the resource name it is about
    data: dict[str, Any] = field(default_factory=dict)  # the kind's payload, as JSON
    revision: int = 0
    create_time: datetime | None = None


def by_revision(events: Iterable[Event]) -> list[tuple[int, list[Event]]]:
    """Events read from the log, in log order, as one group per revision (one commit each).

    Whoever hands events on does so a commit at a time: a watcher or listener never sees half of one.
    """
    return [(revision, list(group)) for revision, group in groupby(events, key=lambda e: e.revision)]


@dataclass(frozen=True)
class Page:
    """A page request after validation: size and the opaque position to resume at."""

    size: int
    after: str | None = None

"""Sidecars: what each serving process reports it runs, and when it counts as gone.

A sidecar reports, for each target it serves, the version and digest it has
applied — ACK — or failed to apply — NACK, with the error, while it keeps
serving the old one (Envoy's DiscoveryRequest.error_detail). It reports again
at least every heartbeat interval; one silent for three intervals is no
longer live.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from ..errors import Violations, quote
from . import versions
from .names import check_name
from .programs import DIGEST_RE

MISSED_HEARTBEATS = 3
DEFAULT_HEARTBEAT_SECONDS = 10.0
MIN_HEARTBEAT_SECONDS = 0.05
MAX_HEARTBEAT_SECONDS = 3600.0
MAX_TARGETS = 1000
# A Kubernetes pod name fits (DNS-1123 subdomain), as do host names and uuids.
SIDECAR_ID_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,251}[a-z0-9])?$")


@dataclass(frozen=True, kw_only=True)
class Applied:
    program: str
    environment: str
    version: str
    digest: str
    acked: bool | None  # None: the report did not say (rejected)
    error_code: int  # google.rpc.Code when NACKed
    error_message: str
    revision: int
    apply_time: datetime | None


@dataclass(frozen=True, kw_only=True)
class Report:
    sidecar_id: str
    principal: str
    targets: tuple[Applied, ...]
    heartbeat_seconds: float
    time: datetime
    revision: int  # the store revision the sidecar has seen

    def live_at(self, now: datetime) -> bool:
        return now - self.time <= timedelta(seconds=self.heartbeat_seconds * MISSED_HEARTBEATS)


def new_results(before: Report | None, after: Report) -> list[Applied]:
    """The ACKs and NACKs `after` reports that the sidecar's previous report, `before`, did not: a
    version newly applied or newly failed. A heartbeat that repeats its last report has none."""
    seen = (
        {(a.program, a.environment, a.version, a.digest, a.acked) for a in before.targets}
        if before
        else set()
    )
    return [a for a in after.targets if (a.program, a.environment, a.version, a.digest, a.acked) not in seen]


def _serving(r: Report) -> frozenset[tuple[object, ...]]:
    return frozenset(
        (a.program, a.environment, a.version, a.digest, a.acked, a.error_code, a.error_message)
        for a in r.targets
    )


def changes_what_is_kept(before: Report | None, after: Report) -> bool:
    """Whether `after` must be written at once rather than with the next batch: the sidecar joins
    (no report before, or one no longer live), reports as another principal or at another interval,
    or ACKs or NACKs another set of versions. Deployment decisions (a blue-green switch, a NACK)
    read what is written; a heartbeat that says the same again only proves the sidecar is alive."""
    if before is None or not before.live_at(after.time):
        return True
    return (
        before.principal != after.principal
        or before.heartbeat_seconds != after.heartbeat_seconds
        or _serving(before) != _serving(after)
    )


def new_nacks(before: Report | None, after: Report) -> list[Applied]:
    """The NACKs in `after` that `before` did not already make (each is acted on once)."""
    old = _serving(before) if before is not None and before.live_at(after.time) else frozenset()
    return [
        a
        for a in after.targets
        if not a.acked
        and (a.program, a.environment, a.version, a.digest, a.acked, a.error_code, a.error_message) not in old
    ]


def newest_word(candidates: Iterable[tuple[Report, bool]]) -> list[Report]:
    """Each sidecar's newest report among (report, leaving) pairs, by id, unless that newest says it
    left. Several replicas may have heard a sidecar (a client that spreads its calls): the latest
    report is what it runs now; of two at the same time, the later in `candidates` wins."""
    newest: dict[str, tuple[Report, bool]] = {}
    for r, leaving in candidates:
        held = newest.get(r.sidecar_id)
        if held is None or held[0].time <= r.time:
            newest[r.sidecar_id] = (r, leaving)
    return [r for _, (r, leaving) in sorted(newest.items()) if not leaving]


def serving_counts(contents: Iterable[tuple[tuple[Applied, ...], int]]) -> dict[tuple[str, str, str], int]:
    """How many sidecars serve each (program, environment, version), from what they report — each
    content (a report's targets) with how many sidecars report it: the versions each has ACKed. A
    fleet has converged when one version of a target is left."""
    counts: dict[tuple[str, str, str], int] = {}
    for targets, sidecars in contents:
        for a in targets:
            if a.acked:
                key = (a.program, a.environment, a.version)
                counts[key] = counts.get(key, 0) + sidecars
    return counts


def live_until(r: Report, flush_seconds: float) -> datetime:
    """Until when a replica that holds `r` vouches for it in the store: three heartbeats after the
    report, plus two flush intervals, since the replica writes the next report's time only with
    its next batch (and a batch may be one interval late)."""
    return r.time + timedelta(seconds=r.heartbeat_seconds * MISSED_HEARTBEATS + 2 * flush_seconds)


def report_to_json(r: Report) -> dict[str, Any]:
    return content_to_json(r.targets, r.revision)


def content_to_json(targets: tuple[Applied, ...], revision: int) -> dict[str, Any]:
    """What a report says — its entries and the revision it has seen — as kept in the store."""
    return {
        "targets": [
            {
                "program": a.program,
                "environment": a.environment,
                "version": a.version,
                "digest": a.digest,
                "acked": a.acked,
                "error_code": a.error_code,
                "error_message": a.error_message,
                "revision": a.revision,
                "apply_time": a.apply_time.isoformat() if a.apply_time else None,
            }
            for a in targets
        ],
        "revision": revision,
    }


def content_from_json(d: dict[str, Any]) -> tuple[tuple[Applied, ...], int]:
    """`content_to_json`'s inverse: (entries, revision)."""
    targets = tuple(
        Applied(
            program=a["program"],
            environment=a["environment"],
            version=a["version"],
            digest=a["digest"],
            acked=a["acked"],
            error_code=a["error_code"],
            error_message=a["error_message"],
            revision=a["revision"],
            apply_time=datetime.fromisoformat(a["apply_time"]) if a["apply_time"] else None,
        )
        for a in d["targets"]
    )
    return targets, int(d["revision"])


def heartbeat_for(requested: float) -> float:
    """The interval a sidecar is held to: the one it asks for, or the default for 0."""
    return requested if requested else DEFAULT_HEARTBEAT_SECONDS


def validate(r: Report, v: Violations) -> None:
    """Add to `v` everything wrong with report `r`, naming the request's fields."""
    if not SIDECAR_ID_RE.fullmatch(r.sidecar_id):
        v.add(
            "sidecar_id", f"{quote(r.sidecar_id)} must be 1-253 lower-case letters, digits, '.', '_' or '-'"
        )
    if not MIN_HEARTBEAT_SECONDS <= r.heartbeat_seconds <= MAX_HEARTBEAT_SECONDS:
        v.add(
            "heartbeat_interval",
            f"must be between {MIN_HEARTBEAT_SECONDS}s and {MAX_HEARTBEAT_SECONDS:.0f}s, or 0 for the default",
        )
    if r.revision < 0:
        v.add("revision", "must not be negative")
    if len(r.targets) > MAX_TARGETS:
        v.add("targets", f"at most {MAX_TARGETS} entries")
        return
    seen: set[tuple[str, str, str]] = set()
    for i, a in enumerate(r.targets):
        path = f"targets[{i}]"
        v.collect(partial(check_name, a.program, f"{path}.program"))
        v.collect(partial(check_name, a.environment, f"{path}.environment"))
        v.collect(partial(versions.parse, a.version, f"{path}.version"))
        if not DIGEST_RE.fullmatch(a.digest):
            v.add(f"{path}.digest", "must be sha256: and 64 lower-case hex digits")
        if a.acked is None:
            v.add(f"{path}.result", "say ACK (serving it) or NACK (failed to apply it)")
        elif a.acked and a.error_code:
            v.add(f"{path}.error_detail", "an ACK carries no error")
        elif not a.acked and not a.error_code:
            v.add(f"{path}.error_detail", "a NACK says what failed: set a non-zero code")
        if a.revision < 0:
            v.add(f"{path}.revision", "must not be negative")
        key = (a.program, a.environment, a.version)
        if key in seen:
            v.add(path, f"{a.program} {a.version} in {a.environment} is reported twice")
        seen.add(key)

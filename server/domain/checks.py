"""Required checks: what CI reports about a program version, and the gate they make for deployments.

As code hosts gate a merge on status checks, an environment's policy may list
checks (`required_checks = ["integration_tests", "load_test"]`) that must have
PASSED for a version before a deployment of it starts there. CI reports each
check's state with ReportVersionCheck (the `check` action); the last report of
a check is its state. For a deployment to that environment:

    a required check FAILED           refused at creation (FAILED_PRECONDITION); a deployment
                                      already waiting for it (approval or checks) FAILS, the
                                      check's summary as the reason
    one not reported, or RUNNING      on_missing_checks = "wait": once approved, the deployment
                                      waits in PENDING_CHECKS and starts when the last one
                                      passes; "refuse": refused at creation
    every one PASSED                  nothing to wait for

No I/O here: the store keeps the reports, the use cases apply these rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from urllib.parse import urlsplit

from ..errors import PreconditionViolation, Violations, quote
from .names import NAME_RE, NAME_RULE, check_text


class CheckState(IntEnum):
    """The numbers match the proto enum CheckState."""

    PASSED = 1
    FAILED = 2
    RUNNING = 3


class OnMissingChecks(IntEnum):
    """What a deployment does while a required check has not passed; matches the proto enum MissingChecks."""

    WAIT = 1
    REFUSE = 2


MAX_REQUIRED_CHECKS = 20
MAX_SUMMARY = 1024
MAX_DETAILS_URL = 2048


@dataclass(frozen=True, kw_only=True)
class VersionCheck:
    """The last report of one check of one program version."""

    program: str
    version: str
    check: str
    state: CheckState
    details_url: str
    summary: str
    reporter: str  # the principal that reported it last
    create_time: datetime  # its first report
    update_time: datetime  # its last report
    revision: int = 0

    @property
    def resource_name(self) -> str:
        return f"programs/{self.program}/versions/{self.version}/checks/{self.check}"

    def describe(self) -> str:
        """`load_test FAILED: p95 2.4 s (https://ci/…)`: for a timeline entry or a refusal."""
        text = f"{self.check} {self.state.name}"
        if self.summary:
            text += f": {self.summary}"
        if self.details_url:
            text += f" ({self.details_url})"
        return text


def validate_report(check: str, state: int, details_url: str, summary: str) -> Violations:
    """Every problem with a check report, each naming its request field."""
    v = Violations()
    if not NAME_RE.fullmatch(check):
        v.add("check", f"{quote(check)} {NAME_RULE}")
    if state not in CheckState.__members__.values():
        v.add("state", "one of CHECK_STATE_PASSED, CHECK_STATE_FAILED, CHECK_STATE_RUNNING")
    if details_url:
        v.collect(lambda: check_details_url(details_url))
    v.collect(lambda: check_text(summary, "summary", MAX_SUMMARY))
    return v


def check_details_url(url: str) -> None:
    """Where a person reads the run: an absolute http(s) URL. It is shown, never fetched."""
    v = Violations()
    if len(url) > MAX_DETAILS_URL:
        v.add("details_url", f"must be at most {MAX_DETAILS_URL} characters")
    elif any(c.isspace() or not c.isprintable() for c in url):
        v.add("details_url", "must not contain spaces or control characters")
    else:
        try:
            parts = urlsplit(url)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            v.add("details_url", f"{quote(url)} is not an absolute http or https URL")
    v.raise_if_any()


def validate_required(names: Sequence[str], prefix: str) -> Violations:
    """An environment's `required_checks`: names, no repeats, at most MAX_REQUIRED_CHECKS."""
    v = Violations()
    if len(names) > MAX_REQUIRED_CHECKS:
        v.add(f"{prefix}.required_checks", f"at most {MAX_REQUIRED_CHECKS} checks")
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not NAME_RE.fullmatch(name):
            v.add(f"{prefix}.required_checks[{i}]", f"{quote(name)} {NAME_RULE}")
        elif name in seen:
            v.add(f"{prefix}.required_checks[{i}]", f"{quote(name)} is listed twice")
        seen.add(name)
    return v


def passed(checks: Iterable[VersionCheck]) -> frozenset[str]:
    """The names of the checks whose last report is PASSED."""
    return frozenset(c.check for c in checks if c.state is CheckState.PASSED)


def waiting_for(required: Sequence[str], checks: Mapping[str, VersionCheck]) -> tuple[str, ...]:
    """The required checks that have not passed (not reported, RUNNING or FAILED), in policy order."""
    return tuple(
        name for name in required if name not in checks or checks[name].state is not CheckState.PASSED
    )


def violations(
    required: Sequence[str],
    on_missing: OnMissingChecks,
    checks: Mapping[str, VersionCheck],
    subject: str,
) -> list[PreconditionViolation]:
    """What stops a deployment from being created: a required check FAILED, or (policy `refuse`)
    one that has not passed yet. Empty when it may be created (it may still wait)."""
    out: list[PreconditionViolation] = []
    for name in required:
        found = checks.get(name)
        if found is not None and found.state is CheckState.FAILED:
            out.append(PreconditionViolation("REQUIRED_CHECK", subject, f"required check {found.describe()}"))
        elif on_missing is OnMissingChecks.REFUSE and (found is None or found.state is not CheckState.PASSED):
            state = "not reported" if found is None else found.state.name
            out.append(
                PreconditionViolation(
                    "REQUIRED_CHECK", subject, f"required check {name} has not passed ({state})"
                )
            )
    return out


def describe_waiting(waiting: Sequence[str], required: Sequence[str]) -> str:
    """`waiting for load_test; passed: integration_tests`: the timeline's words."""
    done = [name for name in required if name not in waiting]
    text = f"waiting for {', '.join(waiting)}"
    return text + (f"; passed: {', '.join(done)}" if done else "")

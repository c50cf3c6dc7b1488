"""The reliability suite: faults, crashes, hostile input and overload, against real processes.

It runs in two sizes. Inside `make test` (SOAK_MINUTES unset) each test gets
a short budget, so the whole folder stays within about three minutes. `make
soak` sets SOAK_MINUTES (15 by default) and each test takes its share of it
(`budget()`), doing the same checks for longer.

Each test adds what it did to a row of the summary table (`tally`): how
many operations, kills, acknowledged writes checked, lost, duplicated, watch
events checked, bad inputs tried, the status codes seen, server memory
before and after. The table is printed at the end of the run and written to
build/reliability/summary.json (docs/reliability.md quotes the soak's).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

SOAK_MINUTES = float(os.environ.get("SOAK_MINUTES") or 0)
ROOT = Path(__file__).resolve().parents[2]
SUMMARY = ROOT / "build" / "reliability" / "summary.json"


def soaking() -> bool:
    """True under `make soak`."""
    return SOAK_MINUTES > 0


def budget(short: float, share: float) -> float:
    """Seconds this test may spend: `short` inside `make test`; `share` of SOAK_MINUTES under soak."""
    return short if not soaking() else max(short, share * SOAK_MINUTES * 60)


@dataclass
class Tally:
    """What one test did, for its row of the summary table."""

    operations: int = 0
    kills: int = 0
    writes_checked: int = 0
    lost: int = 0
    duplicates: int = 0
    watch_events_checked: int = 0
    bad_inputs: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    memory_before_mib: float | None = None
    memory_after_mib: float | None = None


_TALLIES: dict[str, Tally] = {}


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    """This test's row, named after the test (and its backend)."""
    name = request.node.name.removeprefix("test_")
    row = _TALLIES.setdefault(name, Tally())
    yield row


def _row(name: str, t: Tally) -> str:
    memory = (
        f"{t.memory_before_mib:.0f} → {t.memory_after_mib:.0f} MiB"
        if t.memory_before_mib is not None and t.memory_after_mib is not None
        else ""
    )
    codes = ", ".join(f"{code} {n}" for code, n in sorted(t.codes.items(), key=lambda kv: -kv[1]))
    cells = [
        name,
        t.operations,
        t.kills,
        t.writes_checked,
        t.lost,
        t.duplicates,
        t.watch_events_checked,
        t.bad_inputs,
        codes,
        memory,
    ]
    return "| " + " | ".join(str(c) for c in cells) + " |"


HEADER = (
    "| test | operations | kills | acknowledged writes checked | lost | duplicates "
    "| watch events checked | bad inputs | codes seen | server memory |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def rows() -> dict[str, dict[str, object]]:
    """The table's rows as JSON values: what summary.json holds, and what an xdist worker hands back."""
    return {name: {**asdict(t), "codes": dict(t.codes)} for name, t in _TALLIES.items()}


def add_rows(more: dict[str, dict[str, Any]]) -> None:
    """Rows another process counted (an xdist worker's, `rows()`), into this process's table."""
    for name, row in more.items():
        t = _TALLIES.setdefault(name, Tally())
        for key in ("operations", "kills", "writes_checked", "lost", "duplicates"):
            setattr(t, key, getattr(t, key) + row[key])
        t.watch_events_checked += row["watch_events_checked"]
        t.bad_inputs += row["bad_inputs"]
        t.codes.update(row["codes"])
        t.memory_before_mib = row["memory_before_mib"] or t.memory_before_mib
        t.memory_after_mib = row["memory_after_mib"] or t.memory_after_mib


def write_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The table at the end of the run, and build/reliability/summary.json. Called by tests/conftest.py,
    which the process that reports always loads: under xdist that is the controller, which never loads
    this file (it collects nothing) and holds the rows its workers handed back."""
    if not _TALLIES:
        return
    minutes = f"SOAK_MINUTES={SOAK_MINUTES:g}" if soaking() else "the short run inside make test"
    terminalreporter.write_sep("=", f"reliability summary ({minutes})")
    terminalreporter.write_line(HEADER)
    for name, t in _TALLIES.items():
        terminalreporter.write_line(_row(name, t))
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    SUMMARY.write_text(json.dumps({"soak_minutes": SOAK_MINUTES, "rows": rows()}, indent=2) + "\n")


def rss_mib(pid: int) -> float:
    """A process's resident memory in MiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise LookupError(f"no VmRSS for process {pid}")

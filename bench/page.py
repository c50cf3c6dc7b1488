"""docs/benchmarks.md as sections, each rewritten only by a run that measured it.

`make bench-peers` measures two sections: the watch fan-out (etcd, bench/peers.py) and MLflow's
model registry (bench/mlflow_peer.py); `python -m bench.peers --only NAME` runs one of them. Each
section sits between the markers `<!-- bench-peers: NAME -->` and `<!-- /bench-peers: NAME -->`
and says its own machine, load and run time, so a run of one section replaces that section's
text and keeps the other's as the last run that measured it left it. The page is the title, then
the sections in SECTIONS' order; text outside the markers is not kept (the page is generated).

The README's performance figures come from the same runs: each section also rewrites its own
summary block in README.md (`write_block`, markers `<!-- bench-peers: readme-NAME -->`), and
there only the text between the markers changes.
"""

from __future__ import annotations

import re
from pathlib import Path

TITLE = "# Benchmarks against the peers"
SECTIONS = ("fanout", "mlflow")


def _begin(name: str) -> str:
    return f"<!-- bench-peers: {name} -->"


def _end(name: str) -> str:
    return f"<!-- /bench-peers: {name} -->"


def sections(text: str) -> dict[str, str]:
    """The sections a page holds, by name: the text between each one's markers."""
    found = re.findall(r"<!-- bench-peers: ([a-z]+) -->\n(.*?)<!-- /bench-peers: \1 -->", text, flags=re.S)
    return {name: body for name, body in found}


def write(path: Path, name: str, lines: list[str]) -> None:
    """Replace (or add) section `name` of the page at `path` with `lines`; keep the others."""
    if name not in SECTIONS:
        raise ValueError(f"unknown section {name!r}")
    kept = sections(path.read_text(encoding="utf-8")) if path.exists() else {}
    body = "\n".join(lines).strip("\n") + "\n"
    kept[name] = body
    parts = [TITLE, ""]
    for section in SECTIONS:
        if section in kept:
            parts += [_begin(section), kept[section].rstrip("\n"), _end(section), ""]
    path.write_text("\n".join(parts), encoding="utf-8")


def write_block(path: Path, name: str, lines: list[str]) -> None:
    """Replace the text between block `name`'s markers in the file at `path`, keeping the rest of it.
    A file without the markers is an error: the block's place in a hand-written page is chosen by
    hand, never guessed."""
    text = path.read_text(encoding="utf-8")
    begin, end = _begin(name), _end(name)
    start, stop = text.find(begin + "\n"), text.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"{path} has no {begin} ... {end} block")
    body = "\n".join(lines).strip("\n") + "\n"
    path.write_text(text[: start + len(begin) + 1] + body + text[stop:], encoding="utf-8")

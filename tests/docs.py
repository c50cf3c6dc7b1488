"""The documentation the tests hold to its word: README.md and every page under docs/.

A block a test runs is found by its marker wherever it lives, so a section can move between pages
without its test losing it.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def reading_order() -> list[Path]:
    """The README, then the pages in the order its map (## Documentation) links them."""
    readme = PAGES[0]
    documentation = readme.read_text().split("\n## Documentation\n", 1)[1]
    linked = re.findall(r"\]\((docs/[a-z-]+\.md)\)", documentation)
    return [readme, *dict.fromkeys(ROOT / link for link in linked)]


def tested_in_reading_order() -> list[str]:
    """The names of the tested ```sh blocks, as a reader meets them."""
    return [
        name
        for page in reading_order()
        for name in re.findall(r"<!-- tested: ([a-z-]+) -->", page.read_text())
    ]


def text() -> str:
    """Every page, one after the other."""
    return "\n".join(page.read_text() for page in PAGES)


def block(marker: str, language: str) -> str:
    """The one ```language block right after the line `marker`, on whichever page holds it."""
    found = re.findall(re.escape(marker) + rf"\n```{language}\n(.*?)```", text(), flags=re.S)
    assert len(found) == 1, f"{len(found)} {language} blocks after {marker!r} in README.md and docs/"
    return str(found[0])


def sh_block(name: str) -> str:
    """The ```sh block after `<!-- tested: name -->`."""
    return block(f"<!-- tested: {name} -->", "sh")

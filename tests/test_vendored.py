"""The dashboard's vendored JavaScript is what package-lock.json pins: same version, and each file
byte for byte the one `npm ci` unpacked (npm checks the tarball against the lock's integrity hash)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "server" / "dashboard" / "static" / "vendor"
RECORD = json.loads((VENDOR / "VENDORED.json").read_text())["packages"]
LOCK = json.loads((ROOT / "package-lock.json").read_text())


@pytest.mark.parametrize("name", sorted(RECORD))
def test_each_vendored_package_is_pinned_by_the_lock_with_its_licence(name: str) -> None:
    record = RECORD[name]
    locked = LOCK["packages"][f"node_modules/{name}"]
    assert locked["version"] == record["version"]
    assert locked["license"] == record["license"]
    assert locked["integrity"].startswith("sha512-")
    assert LOCK["packages"][""]["devDependencies"][name] == record["version"]  # exact, never a range


@pytest.mark.parametrize("name", sorted(RECORD))
def test_each_vendored_file_is_the_one_npm_unpacked(name: str) -> None:
    unpacked = ROOT / "node_modules" / name
    if not unpacked.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{unpacked} is missing: `make setup` runs npm ci")
        pytest.skip("node_modules is not installed (make setup)")
    assert json.loads((unpacked / "package.json").read_text())["version"] == RECORD[name]["version"]
    for copied, original in RECORD[name]["files"].items():
        assert (VENDOR / copied).read_bytes() == (unpacked / original).read_bytes(), copied


def test_nothing_unrecorded_is_vendored() -> None:
    recorded = {file for record in RECORD.values() for file in record["files"]}
    assert {p.name for p in VENDOR.iterdir()} - {"VENDORED.json"} == recorded

"""Every test item has a node id of its own: pytest-xdist, which `make test` runs the tests with,
schedules by node id and runs one item of those that share one."""

from __future__ import annotations

import subprocess
import sys

from tests.docs import ROOT

SCHEMATHESIS_TESTS = ["tests/e2e/test_http_schema.py", "tests/reliability/test_fuzz_rest.py"]


def test_each_api_operation_schemathesis_tests_is_an_item_with_an_id_of_its_own() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            *SCHEMATHESIS_TESTS,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ids = [line for line in done.stdout.splitlines() if "::" in line]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    # Six operations in the OpenAPI document, each tested by both files.
    assert len([i for i in ids if "[GET /" in i or "[POST /" in i]) == 12, ids

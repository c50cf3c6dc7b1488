"""Generate the Python stubs in client/v1 from protos/dspy_registry/v1.

`make proto` runs this; tests/api/test_stubs_fresh.py runs `generate()` into a
temporary folder and fails when the committed stubs differ.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PACKAGE = Path("dspy_registry") / "v1"
STUBS = ROOT / "client" / "v1"


def generate(out: Path) -> list[Path]:
    """Write the generated modules for every proto into `out`; return their paths."""
    from grpc_tools import protoc

    well_known = str(resources.files("grpc_tools") / "_proto")
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / PACKAGE).glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTOS}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *sources,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed: " + " ".join(args))
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for path in sorted((Path(tmp) / PACKAGE).iterdir()):
            shutil.copyfile(path, out / path.name)
            written.append(out / path.name)
        return written


def main() -> int:
    for stale in STUBS.glob("*_pb2*.py*"):
        stale.unlink()
    for path in generate(STUBS):
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A small disk of the test's own: a tmpfs mounted for one test and always unmounted after it.

Mounting needs root (or CAP_SYS_ADMIN); where it is not permitted the test
is skipped, saying so.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_disk(where: Path, size: str, owner: tuple[int, int] | None = None) -> Iterator[Path]:
    """A tmpfs of `size` (`8m`) mounted at `where`; `owner` (uid, gid) owns it, alone, if given."""
    where.mkdir(parents=True, exist_ok=True)
    options = (
        f"size={size},mode=0755" if owner is None else f"size={size},mode=0700,uid={owner[0]},gid={owner[1]}"
    )
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield where
    finally:
        # Lazily: a process the test started may still hold a file open there.
        subprocess.run(["umount", "-l", str(where)], check=True)


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def fill(disk: Path, leave: int, name: str = "filler") -> Path:
    """Take the disk's free space with a file, but for `leave` bytes; the file, to delete for room."""
    filler = disk / name
    with open(filler, "ab", buffering=0) as out:
        want = free_bytes(disk) - leave
        block = b"\0" * (1 << 20)
        while want > 0:
            try:
                out.write(block[: min(want, len(block))])
            except OSError:  # full already
                break
            want = free_bytes(disk) - leave
    return filler

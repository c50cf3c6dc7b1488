"""Serialized answers to hot reads, dropped the moment a commit touches their program.

GetProgramVersion is what every sidecar and `load_program` call asks, and a
version changes only when it is yanked or a newer one moves `latest`. The
cache keeps the encoded response, so a hit costs neither a database round
trip nor a protobuf encode. Correctness comes from the store's commit
notifications: every committed event about `programs/{p}/…` drops every
entry of program p. A per-program generation number stops a read that raced
a commit from caching what that commit made stale.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from ..domain.model import Event

DEFAULT_CAPACITY = 10_000  # entries
DEFAULT_MAX_BYTES = 32 << 20  # of encoded answers in all: a version's metadata may be large


def _program_of(resource: str) -> str | None:
    parts = resource.split("/", 2)
    return parts[1] if len(parts) >= 2 and parts[0] == "programs" else None


class ResponseCache:
    def __init__(self, capacity: int = DEFAULT_CAPACITY, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.size = 0  # bytes of the answers held
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._keys: dict[str, set[str]] = {}  # program -> its cached keys
        self._generations: dict[str, int] = {}
        self._epoch = 0  # bumped by clear(): in-flight reads of every program become stale

    def get(self, key: str) -> bytes | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def generation(self, program: str) -> tuple[int, int]:
        """Read this before the store; hand it to put() after."""
        return self._epoch, self._generations.get(program, 0)

    def put(self, program: str, key: str, value: bytes, generation: tuple[int, int]) -> None:
        if generation != self.generation(program):
            return  # a commit landed while we read: what we hold may be stale
        if len(value) > self.max_bytes // 64:
            return  # a huge answer would push out hundreds of ordinary ones
        previous = self._entries.pop(key, None)
        if previous is not None:
            self.size -= len(previous)
        self._entries[key] = value
        self.size += len(value)
        self._keys.setdefault(program, set()).add(key)
        while len(self._entries) > self.capacity or self.size > self.max_bytes:
            old, dropped = self._entries.popitem(last=False)
            self.size -= len(dropped)
            owner = _program_of(old)
            if owner is not None and owner in self._keys:
                self._keys[owner].discard(old)

    def invalidate(self, program: str) -> None:
        self._generations[program] = self._generations.get(program, 0) + 1
        for key in self._keys.pop(program, ()):
            dropped = self._entries.pop(key, None)
            if dropped is not None:
                self.size -= len(dropped)

    def on_commit(self, events: Sequence[Event]) -> None:
        for program in {_program_of(e.resource) for e in events}:
            if program is not None:
                self.invalidate(program)

    def clear(self) -> None:
        """Forget everything: the store may have missed commits (a lost LISTEN connection)."""
        self._epoch += 1
        self._entries.clear()
        self._keys.clear()
        self.size = 0

    def __len__(self) -> int:
        return len(self._entries)

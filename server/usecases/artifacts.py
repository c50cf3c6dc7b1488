"""An artifact on its way into the store: in memory (RegisterProgram) or spooled (UploadProgram).

UploadProgram's chunks go to a temporary file as they arrive, hashed and
counted on the way, so that an upload costs the server a chunk's worth of
memory rather than its size. The file has no name (O_TMPFILE where the
system has it, else unlinked at once): a refused or failed upload, even a
crash, leaves nothing behind. The registration reads it back one store
chunk at a time, inside its transaction, so the store never holds a partial
artifact either. At most `max_concurrent` uploads run at once; one more is
refused RESOURCE_EXHAUSTED with a retry hint before it sends a byte.

The size the header declares is held to as the bytes arrive: one byte more
is refused at once, fewer are refused at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import IO, Protocol

from ..domain import programs
from ..errors import InvalidArgument, ResourceExhausted
from ..store.artifact_records import ARTIFACT_CHUNK

DEFAULT_MAX_CONCURRENT_UPLOADS = 4
# When a refused upload should try again: an upload slot frees when another upload ends, which for
# the largest artifacts takes seconds.
UPLOADS_RETRY_SECONDS = 5.0
# Below this an artifact is hashed and parsed on the loop; above it, in a thread.
INLINE_ARTIFACT_BYTES = 256 * 1024


class Artifact(Protocol):
    """The bytes of a program version, however they arrived."""

    @property
    def size_bytes(self) -> int: ...

    async def sha256(self) -> str:
        """`sha256:{hex}` of the bytes."""
        ...

    def read(self) -> bytes:
        """All the bytes at once (to read DSPy program state); may block: call it off the loop."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The bytes in store chunks (ARTIFACT_CHUNK each, the last one shorter)."""
        ...


class InMemory:
    """An artifact that came whole, in one request (at most the unary limit)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    @property
    def size_bytes(self) -> int:
        return len(self._data)

    async def sha256(self) -> str:
        if len(self._data) > INLINE_ARTIFACT_BYTES:
            return await asyncio.to_thread(programs.digest_of, self._data)
        return programs.digest_of(self._data)

    def read(self) -> bytes:
        return self._data

    async def chunks(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self._data), ARTIFACT_CHUNK):
            yield self._data[start : start + ARTIFACT_CHUNK]


class Spool:
    """An upload's bytes in a nameless temporary file, hashed as they are written."""

    def __init__(self, uploads: Uploads, declared: int) -> None:
        self._uploads = uploads
        self.declared = declared  # the header's size_bytes; 0 when it gave none
        self._received = 0
        self._hash = hashlib.sha256()
        try:
            self._file: IO[bytes] = tempfile.TemporaryFile(prefix="dspy-registry-upload-")
        except OSError as exc:
            raise _no_room(exc) from None
        self._closed = False

    @property
    def size_bytes(self) -> int:
        return self._received

    async def write(self, chunk: bytes) -> None:
        """Append a chunk; refused at once past the declared size or the upload limit."""
        received = self._received + len(chunk)
        if self.declared and received > self.declared:
            raise InvalidArgument.one(
                "header.size_bytes",
                f"the header declared {self.declared} bytes; the stream carried more ({received} so far)",
            )
        if received > self._uploads.size_limit:
            raise ResourceExhausted(
                "upload_bytes", f"artifact exceeds the upload limit of {self._uploads.size_limit} bytes"
            )
        self._received = received
        # Hashing and writing a megabyte takes about a millisecond: off the loop.
        try:
            await asyncio.to_thread(self._append, chunk)
        except OSError as exc:  # a full disk: the upload fails, the file goes with it
            raise _no_room(exc) from None

    def _append(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self._file.write(chunk)

    def finish(self) -> None:
        """The stream ended: refused if it carried fewer bytes than the header declared."""
        if self.declared and self._received != self.declared:
            raise InvalidArgument.one(
                "header.size_bytes",
                f"the header declared {self.declared} bytes; the stream carried {self._received}",
            )
        self._file.flush()

    async def sha256(self) -> str:
        return f"sha256:{self._hash.hexdigest()}"

    def read(self) -> bytes:
        return os.pread(self._file.fileno(), self._received, 0)

    async def chunks(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        for offset in range(0, self._received, ARTIFACT_CHUNK):
            size = min(ARTIFACT_CHUNK, self._received - offset)
            yield await loop.run_in_executor(
                self._uploads.reader, os.pread, self._file.fileno(), size, offset
            )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._file.close()
            self._uploads.active -= 1

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _no_room(exc: OSError) -> ResourceExhausted:
    return ResourceExhausted(
        "upload_spool",
        f"the server has no room for the upload in its temporary directory ({exc.strerror}); retry later",
        retry_after=UPLOADS_RETRY_SECONDS,
    )


class Uploads:
    """The uploads in progress, at most `max_concurrent` at once."""

    def __init__(
        self,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT_UPLOADS,
        size_limit: int = programs.DEFAULT_UPLOAD_LIMIT,
    ) -> None:
        self.max_concurrent = max_concurrent
        self.size_limit = size_limit
        self.active = 0
        # Where artifacts are read back and parsed, one at a time, in one thread: json.loads holds
        # about three times an artifact's size while it runs, and the allocator keeps what a thread
        # freed for that thread. Four 24 MiB DSPy uploads parsed in four threads peaked at 195 MiB
        # above the start; one after the other in this one, at about one parse's worth.
        self.reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="artifacts")

    def open(self, declared: int) -> Spool:
        """A spool for one upload of `declared` bytes (0: not said); RESOURCE_EXHAUSTED when all are taken."""
        if self.active >= self.max_concurrent:
            raise ResourceExhausted(
                "concurrent_uploads",
                f"{self.active} uploads are in progress, the server's limit (--max-concurrent-uploads); "
                "retry later",
                retry_after=UPLOADS_RETRY_SECONDS,
            )
        self.active += 1
        try:
            return Spool(self, declared)
        except BaseException:
            self.active -= 1
            raise

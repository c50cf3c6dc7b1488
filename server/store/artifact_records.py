"""Every query of artifacts: stored once per digest, in chunks of ARTIFACT_CHUNK bytes.

Written once for both backends, like the other *_records modules, which records.Records mixes in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from .sql import Connection, now_us

ARTIFACT_CHUNK = 1024 * 1024


class ArtifactQueries:
    conn: Connection

    async def put_artifact(self, digest: str, chunks: Sequence[bytes]) -> None:
        """Store an artifact once per digest; a second put of the same digest is a no-op."""
        await self.conn.execute(
            "INSERT INTO artifacts (digest, size_bytes, chunk_count, create_time) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (digest) DO NOTHING",
            digest,
            sum(len(c) for c in chunks),
            len(chunks),
            now_us(),
        )
        await self.conn.executemany(
            "INSERT INTO artifact_chunks (digest, seq, data) VALUES (?, ?, ?) "
            "ON CONFLICT (digest, seq) DO NOTHING",
            [(digest, i, chunk) for i, chunk in enumerate(chunks)],
        )

    async def put_artifact_from(self, digest: str, size_bytes: int, chunks: AsyncIterator[bytes]) -> None:
        """put_artifact, the chunks (ARTIFACT_CHUNK each) read one at a time: an upload's never all in memory."""
        if await self.conn.fetchrow("SELECT 1 FROM artifacts WHERE digest = ?", digest) is not None:
            return  # stored once per digest: the bytes need not even be read
        await self.conn.execute(
            "INSERT INTO artifacts (digest, size_bytes, chunk_count, create_time) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (digest) DO NOTHING",
            digest,
            size_bytes,
            -(-size_bytes // ARTIFACT_CHUNK),
            now_us(),
        )
        seq = 0
        async for chunk in chunks:
            await self.conn.execute(
                "INSERT INTO artifact_chunks (digest, seq, data) VALUES (?, ?, ?) "
                "ON CONFLICT (digest, seq) DO NOTHING",
                digest,
                seq,
                chunk,
            )
            seq += 1

    async def artifact_chunk_count(self, program: str, digest: str) -> int | None:
        """The chunk count of `digest` if some version of `program` uses it, else None."""
        row = await self.conn.fetchrow(
            "SELECT a.chunk_count FROM artifacts a WHERE a.digest = ? AND EXISTS "
            "(SELECT 1 FROM program_versions v WHERE v.digest = a.digest AND v.program = ?)",
            digest,
            program,
        )
        return int(row["chunk_count"]) if row else None

    async def artifact_chunk(self, digest: str, seq: int) -> bytes:
        row = await self.conn.fetchrow(
            "SELECT data FROM artifact_chunks WHERE digest = ? AND seq = ?", digest, seq
        )
        assert row is not None, f"artifact {digest} lost chunk {seq}"
        return bytes(row["data"])

"""Every query of the idempotency records: a mutation's first answer, kept for its retries.

A mutation carrying a request_id stores its response under (principal, request_id) in the
transaction that made it; a retry with the same id is answered from here, for a window
(`prune_requests` forgets the older ones).
"""

from __future__ import annotations

from dataclasses import dataclass

from .sql import Connection, forget_oldest, now_us


@dataclass(frozen=True)
class StoredRequest:
    method: str
    fingerprint: str
    response: bytes


class RequestQueries:
    conn: Connection

    async def get_request(self, principal: str, request_id: str) -> StoredRequest | None:
        row = await self.conn.fetchrow(
            "SELECT method, fingerprint, response FROM requests WHERE principal = ? AND request_id = ?",
            principal,
            request_id,
        )
        if row is None:
            return None
        return StoredRequest(row["method"], row["fingerprint"], bytes(row["response"]))

    async def put_request(
        self, principal: str, request_id: str, method: str, fingerprint: str, response: bytes
    ) -> None:
        await self.conn.execute(
            "INSERT INTO requests (principal, request_id, method, fingerprint, response, create_time) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            principal,
            request_id,
            method,
            fingerprint,
            response,
            now_us(),
        )

    async def prune_requests(self, before_us: int, most: int) -> int:
        """Forget idempotency records older than `before_us`, the `most` oldest of them: retries are
        answered for a window. Returns how many it forgot."""
        return await forget_oldest(
            self.conn, "requests", ("principal", "request_id"), "create_time", before_us, most
        )

"""Every query of signatures and their versions.

Written once for both backends, like the other *_records modules, which records.Records mixes in.
"""

from __future__ import annotations

import json

from ..domain.model import Page, SignatureSummary, SignatureVersion
from ..domain.signatures import Level, SignatureSpec
from .sql import Connection, Row, like_prefix, to_datetime, to_us, visible_condition
from .sql import to_json as _json
from .version_order import decode_version_cursor, neighbour, version_cursor

_SIGNATURE_VERSION_COLUMNS = (
    "signature, version, spec, metadata, previous_version, compatibility, creator, create_time, revision"
)


def _signature_version(row: Row) -> SignatureVersion:
    compat = row["compatibility"]
    return SignatureVersion(
        signature=row["signature"],
        version=row["version"],
        spec=SignatureSpec.from_json(json.loads(row["spec"])),
        metadata=json.loads(row["metadata"]),
        previous_version=row["previous_version"],
        compatibility=Level(compat) if compat is not None else None,
        creator=row["creator"],
        create_time=to_datetime(row["create_time"]),
        revision=row["revision"],
    )


def _signature(row: Row) -> SignatureSummary:
    return SignatureSummary(
        signature=row["name"],
        latest_version=row["latest_version"],
        version_count=row["version_count"],
        create_time=to_datetime(row["create_time"]),
        update_time=to_datetime(row["update_time"]),
    )


class SignatureQueries:
    conn: Connection

    async def get_signature_version(self, signature: str, version: str) -> SignatureVersion | None:
        row = await self.conn.fetchrow(
            f"SELECT {_SIGNATURE_VERSION_COLUMNS} FROM signature_versions "
            "WHERE signature = ? AND version = ?",
            signature,
            version,
        )
        return _signature_version(row) if row else None

    async def latest_signature_version(self, signature: str) -> SignatureVersion | None:
        row = await self.conn.fetchrow(
            f"SELECT {_SIGNATURE_VERSION_COLUMNS} FROM signature_versions WHERE signature = ? "
            "AND version = (SELECT latest_version FROM signatures WHERE name = ?)",
            signature,
            signature,
        )
        return _signature_version(row) if row else None

    async def resolve_signature_version(self, signature: str, version: str) -> str | None:
        """The exact version `version` names (`latest` resolved), if it exists."""
        if version == "latest":
            row = await self.conn.fetchrow("SELECT latest_version FROM signatures WHERE name = ?", signature)
            return str(row["latest_version"]) if row else None
        row = await self.conn.fetchrow(
            "SELECT version FROM signature_versions WHERE signature = ? AND version = ?", signature, version
        )
        return str(row["version"]) if row else None

    async def signature_version_below(self, signature: str, sort_key: str) -> SignatureVersion | None:
        """The highest version with lower precedence: what the semver guard compares with."""
        row = await neighbour(
            self.conn,
            "signature_versions",
            _SIGNATURE_VERSION_COLUMNS,
            "signature",
            signature,
            sort_key,
            below=True,
        )
        return _signature_version(row) if row else None

    async def signature_version_above(self, signature: str, sort_key: str) -> SignatureVersion | None:
        """The lowest version with higher precedence: what a backport must stay compatible with."""
        row = await neighbour(
            self.conn,
            "signature_versions",
            _SIGNATURE_VERSION_COLUMNS,
            "signature",
            signature,
            sort_key,
            below=False,
        )
        return _signature_version(row) if row else None

    async def highest_signature_release(self, signature: str) -> str | None:
        row = await self.conn.fetchrow(
            "SELECT version FROM signature_versions WHERE signature = ? AND sort_key LIKE '%~' "
            "ORDER BY sort_key DESC, version DESC LIMIT 1",
            signature,
        )
        return str(row["version"]) if row else None

    async def insert_signature_version(self, sv: SignatureVersion, sort_key: str) -> None:
        ts = to_us(sv.create_time)
        await self.conn.execute(
            "INSERT INTO signatures (name, latest_version, version_count, create_time, update_time) "
            "VALUES (?, '', 0, ?, ?) ON CONFLICT (name) DO NOTHING",
            sv.signature,
            ts,
            ts,
        )
        await self.conn.execute(
            "INSERT INTO signature_versions (signature, version, sort_key, spec, metadata, "
            "previous_version, compatibility, creator, create_time, revision) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            sv.signature,
            sv.version,
            sort_key,
            _json(sv.spec.to_json()),
            _json(sv.metadata),
            sv.previous_version,
            int(sv.compatibility) if sv.compatibility is not None else None,
            sv.creator,
            ts,
            sv.revision,
        )
        # Latest: the highest release, else the highest pre-release (sort keys of
        # releases end in "~", which sorts above every pre-release of that core).
        await self.conn.execute(
            "UPDATE signatures SET update_time = ?, version_count = version_count + 1, "
            "latest_version = COALESCE("
            " (SELECT version FROM signature_versions WHERE signature = ? AND sort_key LIKE '%~' "
            "  ORDER BY sort_key DESC, version DESC LIMIT 1),"
            " (SELECT version FROM signature_versions WHERE signature = ? "
            "  ORDER BY sort_key DESC, version DESC LIMIT 1)) "
            "WHERE name = ?",
            ts,
            sv.signature,
            sv.signature,
            sv.signature,
        )

    async def list_signatures(
        self, prefix: str, visible: list[str] | None, page: Page
    ) -> tuple[list[SignatureSummary], str | None, int]:
        """Signatures by name; only those matching a `visible` glob (None: all)."""
        allowed, allowed_args = visible_condition("name", visible)
        condition = f"name LIKE ? ESCAPE '\\' AND {allowed}"
        args = [like_prefix(prefix), *allowed_args]
        rows = await self.conn.fetch(
            "SELECT name, latest_version, version_count, create_time, update_time FROM signatures "
            f"WHERE {condition} AND name > ? ORDER BY name LIMIT ?",
            *args,
            page.after or "",
            page.size + 1,
        )
        total = await self.conn.fetchrow(f"SELECT COUNT(*) AS n FROM signatures WHERE {condition}", *args)
        after = rows[page.size - 1]["name"] if len(rows) > page.size else None
        return [_signature(r) for r in rows[: page.size]], after, int(total["n"]) if total else 0

    async def list_signature_versions(
        self, signature: str, page: Page
    ) -> tuple[list[SignatureVersion], str | None, int]:
        key, version = decode_version_cursor(page.after)
        rows = await self.conn.fetch(
            f"SELECT {_SIGNATURE_VERSION_COLUMNS}, sort_key FROM signature_versions "
            "WHERE signature = ? AND (sort_key < ? OR (sort_key = ? AND version < ?)) "
            "ORDER BY sort_key DESC, version DESC LIMIT ?",
            signature,
            key,
            key,
            version,
            page.size + 1,
        )
        total = await self.conn.fetchrow("SELECT version_count FROM signatures WHERE name = ?", signature)
        count = int(total["version_count"]) if total else 0
        return (
            [_signature_version(r) for r in rows[: page.size]],
            version_cursor(rows, page.size),
            count,
        )

"""Numbered schema migrations, written once for both backends.

`{blob}` and `{c}` are filled per dialect: bytes columns, and the byte-order
collation that names and SemVer sort keys need on Postgres (its default
collation ignores punctuation, so `a-b` and `ab` would order differently from
SQLite). Timestamps are microseconds since the Unix epoch (UTC) in BIGINT
columns on both backends. Each migration runs in its own transaction and is
recorded in `schema_migrations`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    number: int
    name: str
    statements: tuple[str, ...]


@dataclass(frozen=True)
class Dialect:
    name: str
    blob: str
    c: str


SQLITE = Dialect("sqlite", blob="BLOB", c="")
POSTGRES = Dialect("postgres", blob="BYTEA", c=' COLLATE "C"')

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "revisions, event log, idempotency, registry",
        (
            # One row: the store-wide revision. Every write transaction locks it
            # first, so revisions commit in the order they are taken.
            """CREATE TABLE revisions (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                revision BIGINT NOT NULL,
                compacted BIGINT NOT NULL
            )""",
            "INSERT INTO revisions (id, revision, compacted) VALUES (1, 0, 0)",
            """CREATE TABLE events (
                revision BIGINT NOT NULL,
                seq INTEGER NOT NULL,
                kind TEXT NOT NULL,
                resource TEXT{c} NOT NULL,
                data TEXT NOT NULL,
                create_time BIGINT NOT NULL,
                PRIMARY KEY (revision, seq)
            )""",
            """CREATE TABLE requests (
                principal TEXT{c} NOT NULL,
                request_id TEXT{c} NOT NULL,
                method TEXT NOT NULL,
                fingerprint TEXT NOT NULL,
                response {blob} NOT NULL,
                create_time BIGINT NOT NULL,
                PRIMARY KEY (principal, request_id)
            )""",
            """CREATE TABLE signatures (
                name TEXT{c} PRIMARY KEY,
                latest_version TEXT NOT NULL,
                version_count INTEGER NOT NULL,
                create_time BIGINT NOT NULL,
                update_time BIGINT NOT NULL
            )""",
            """CREATE TABLE signature_versions (
                signature TEXT{c} NOT NULL REFERENCES signatures (name),
                version TEXT{c} NOT NULL,
                sort_key TEXT{c} NOT NULL,
                spec TEXT NOT NULL,
                metadata TEXT NOT NULL,
                previous_version TEXT NOT NULL,
                compatibility INTEGER,
                creator TEXT NOT NULL,
                create_time BIGINT NOT NULL,
                revision BIGINT NOT NULL,
                PRIMARY KEY (signature, version)
            )""",
            "CREATE INDEX signature_versions_order ON signature_versions (signature, sort_key, version)",
            """CREATE TABLE artifacts (
                digest TEXT{c} PRIMARY KEY,
                size_bytes BIGINT NOT NULL,
                chunk_count INTEGER NOT NULL,
                create_time BIGINT NOT NULL
            )""",
            """CREATE TABLE artifact_chunks (
                digest TEXT{c} NOT NULL REFERENCES artifacts (digest),
                seq INTEGER NOT NULL,
                data {blob} NOT NULL,
                PRIMARY KEY (digest, seq)
            )""",
            """CREATE TABLE programs (
                name TEXT{c} PRIMARY KEY,
                latest_version TEXT NOT NULL,
                version_count INTEGER NOT NULL,
                labels TEXT NOT NULL,
                signature TEXT NOT NULL,
                create_time BIGINT NOT NULL,
                update_time BIGINT NOT NULL
            )""",
            """CREATE TABLE program_labels (
                program TEXT{c} NOT NULL REFERENCES programs (name),
                key TEXT{c} NOT NULL,
                value TEXT{c} NOT NULL,
                PRIMARY KEY (program, key)
            )""",
            "CREATE INDEX program_labels_by_value ON program_labels (key, value, program)",
            """CREATE TABLE program_versions (
                program TEXT{c} NOT NULL REFERENCES programs (name),
                version TEXT{c} NOT NULL,
                sort_key TEXT{c} NOT NULL,
                prerelease BOOLEAN NOT NULL,
                digest TEXT{c} NOT NULL REFERENCES artifacts (digest),
                size_bytes BIGINT NOT NULL,
                media_type TEXT NOT NULL,
                signature TEXT{c} NOT NULL,
                signature_version TEXT{c} NOT NULL,
                performance TEXT NOT NULL,
                labels TEXT NOT NULL,
                metadata TEXT NOT NULL,
                previous_version TEXT NOT NULL,
                change_type INTEGER,
                predictors TEXT NOT NULL,
                yanked BOOLEAN NOT NULL,
                yank_reason TEXT NOT NULL,
                creator TEXT NOT NULL,
                create_time BIGINT NOT NULL,
                revision BIGINT NOT NULL,
                PRIMARY KEY (program, version),
                FOREIGN KEY (signature, signature_version)
                    REFERENCES signature_versions (signature, version)
            )""",
            "CREATE INDEX program_versions_order ON program_versions (program, sort_key, version)",
            "CREATE INDEX program_versions_digest ON program_versions (digest, program)",
        ),
    ),
    Migration(
        2,
        "idempotency records expire: index them by age",
        ("CREATE INDEX requests_by_age ON requests (create_time)",),
    ),
)


def render(statement: str, dialect: Dialect) -> str:
    return statement.replace("{blob}", dialect.blob).replace("{c}", dialect.c)


CREATE_LEDGER = """CREATE TABLE IF NOT EXISTS schema_migrations (
    number INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_time BIGINT NOT NULL
)"""

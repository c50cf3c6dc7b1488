"""Numbered schema migrations, written once for both backends.

`{blob}`, `{c}` and `{autoid}` are filled per dialect: bytes columns, an
auto-incrementing key, and the byte-order collation that names and SemVer
sort keys need on Postgres (its default
collation ignores punctuation, so `a-b` and `ab` would order differently from
SQLite). Timestamps are microseconds since the Unix epoch (UTC) in BIGINT
columns on both backends. Each migration is recorded in `schema_migrations`
in the transaction that applies it; `migrate` is the one loop both backends run.

A database whose ledger lists a migration this release does not know was
migrated by a later release: `pending` refuses it, naming both schema
versions, rather than let a rolled-back server write to tables it does not
understand. `dspy-registry migrate` (server/migrate.py) applies them ahead of
a rolling upgrade, or with `--check` only says whether any are pending.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass

from ..errors import FailedPrecondition
from .sql import Connection, now_us


@dataclass(frozen=True)
class Migration:
    number: int
    name: str
    statements: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Dialect:
    name: str
    blob: str
    c: str
    autoid: str


SQLITE = Dialect(name="sqlite", blob="BLOB", c="", autoid="INTEGER PRIMARY KEY AUTOINCREMENT")
POSTGRES = Dialect(
    name="postgres", blob="BYTEA", c=' COLLATE "C"', autoid="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
)

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
    Migration(
        3,
        "access control: principals, tokens, grants, audit events",
        (
            """CREATE TABLE principals (
                name TEXT{c} PRIMARY KEY,
                type INTEGER NOT NULL,
                display_name TEXT NOT NULL,
                team TEXT{c} NOT NULL,
                email TEXT NOT NULL,
                certificate_subjects TEXT NOT NULL,
                disabled BOOLEAN NOT NULL,
                disable_reason TEXT NOT NULL,
                creator TEXT NOT NULL,
                create_time BIGINT NOT NULL,
                update_time BIGINT NOT NULL,
                revision BIGINT NOT NULL
            )""",
            # A client certificate subject names at most one principal.
            """CREATE TABLE principal_subjects (
                subject TEXT{c} PRIMARY KEY,
                principal TEXT{c} NOT NULL REFERENCES principals (name)
            )""",
            """CREATE TABLE tokens (
                id TEXT{c} PRIMARY KEY,
                principal TEXT{c} NOT NULL REFERENCES principals (name),
                secret_hash TEXT NOT NULL,
                description TEXT NOT NULL,
                expire_time BIGINT,
                revoked BOOLEAN NOT NULL,
                revoke_time BIGINT,
                creator TEXT NOT NULL,
                create_time BIGINT NOT NULL,
                revision BIGINT NOT NULL
            )""",
            "CREATE INDEX tokens_by_principal ON tokens (principal, id)",
            """CREATE TABLE grants (
                id TEXT{c} PRIMARY KEY,
                principal TEXT{c} NOT NULL REFERENCES principals (name),
                action INTEGER NOT NULL,
                resource TEXT{c} NOT NULL,
                creator TEXT NOT NULL,
                create_time BIGINT NOT NULL,
                revision BIGINT NOT NULL,
                UNIQUE (principal, action, resource)
            )""",
            """CREATE TABLE audit_events (
                id {autoid},
                time BIGINT NOT NULL,
                principal TEXT{c} NOT NULL,
                token TEXT NOT NULL,
                method TEXT NOT NULL,
                resource TEXT{c} NOT NULL,
                request_id TEXT NOT NULL,
                outcome INTEGER NOT NULL,
                code INTEGER NOT NULL,
                message TEXT NOT NULL,
                revision BIGINT NOT NULL,
                peer TEXT NOT NULL
            )""",
            "CREATE INDEX audit_events_by_time ON audit_events (time, id)",
            "CREATE INDEX audit_events_by_principal ON audit_events (principal, id)",
        ),
    ),
    Migration(
        4,
        "tokens remember when they were last used (to the minute)",
        ("ALTER TABLE tokens ADD COLUMN last_use_time BIGINT",),
    ),
    Migration(
        5,
        "environments and their policies",
        (
            """CREATE TABLE environments (
                name TEXT{c} PRIMARY KEY,
                description TEXT NOT NULL,
                position INTEGER NOT NULL,
                policy TEXT NOT NULL,
                create_time BIGINT NOT NULL,
                update_time BIGINT NOT NULL,
                revision BIGINT NOT NULL
            )""",
        ),
    ),
    Migration(
        6,
        "targets and deployments",
        (
            """CREATE TABLE targets (
                program TEXT{c} NOT NULL,
                environment TEXT{c} NOT NULL,
                stable_version TEXT,
                stable_digest TEXT,
                candidate_version TEXT,
                candidate_digest TEXT,
                candidate_weight INTEGER NOT NULL,
                deployment TEXT NOT NULL,
                revision BIGINT NOT NULL,
                update_time BIGINT NOT NULL,
                PRIMARY KEY (program, environment)
            )""",
            # The whole deployment is `body` (JSON); the columns are what queries filter on.
            """CREATE TABLE deployments (
                id TEXT{c} PRIMARY KEY,
                program TEXT{c} NOT NULL,
                environment TEXT{c} NOT NULL,
                version TEXT{c} NOT NULL,
                state INTEGER NOT NULL,
                next_step_time BIGINT,
                create_time BIGINT NOT NULL,
                body TEXT NOT NULL,
                revision BIGINT NOT NULL
            )""",
            "CREATE INDEX deployments_by_target ON deployments (program, environment, create_time)",
            "CREATE INDEX deployments_due ON deployments (state, next_step_time)",
            "CREATE INDEX deployments_by_version ON deployments (program, version, state, environment)",
            "CREATE INDEX deployments_by_time ON deployments (create_time, id)",
        ),
    ),
    Migration(
        7,
        "sidecars and what each runs",
        (
            # Telemetry, not revisioned state: reports overwrite, and expire by time.
            """CREATE TABLE sidecars (
                sidecar_id TEXT{c} PRIMARY KEY,
                principal TEXT NOT NULL,
                report TEXT NOT NULL,
                heartbeat_ms BIGINT NOT NULL,
                last_report_time BIGINT NOT NULL,
                revision BIGINT NOT NULL
            )""",
            """CREATE TABLE sidecar_targets (
                sidecar_id TEXT{c} NOT NULL REFERENCES sidecars (sidecar_id) ON DELETE CASCADE,
                program TEXT{c} NOT NULL,
                environment TEXT{c} NOT NULL,
                PRIMARY KEY (program, environment, sidecar_id)
            )""",
        ),
    ),
    Migration(
        8,
        "sidecars' metric windows",
        (
            # Telemetry like sidecar reports: no revision, no event; kept for a bounded time.
            # The key makes a retried report count once.
            """CREATE TABLE metric_windows (
                program TEXT{c} NOT NULL,
                environment TEXT{c} NOT NULL,
                version TEXT{c} NOT NULL,
                sidecar_id TEXT{c} NOT NULL,
                start_time BIGINT NOT NULL,
                end_time BIGINT NOT NULL,
                receive_time BIGINT NOT NULL,
                request_count BIGINT NOT NULL,
                error_count BIGINT NOT NULL,
                latency TEXT NOT NULL,
                feedback_correct BIGINT NOT NULL,
                feedback_total BIGINT NOT NULL,
                PRIMARY KEY (program, environment, version, sidecar_id, start_time)
            )""",
            "CREATE INDEX metric_windows_by_receipt ON metric_windows (receive_time)",
            "CREATE INDEX metric_windows_by_sidecar ON metric_windows (sidecar_id, start_time)",
        ),
    ),
    Migration(
        9,
        "webhooks and their delivery outbox",
        (
            # event_kinds: JSON list of DeploymentEventKind numbers; selectors: JSON [[program, environment]].
            # The secret is kept as given: signing needs it (it is never returned).
            """CREATE TABLE webhooks (
                name TEXT{c} PRIMARY KEY,
                url TEXT NOT NULL,
                event_kinds TEXT NOT NULL,
                selectors TEXT NOT NULL,
                secret TEXT NOT NULL,
                description TEXT NOT NULL,
                creator TEXT NOT NULL,
                create_time BIGINT NOT NULL,
                revision BIGINT NOT NULL
            )""",
            # The outbox: one row per event and matching webhook, written in the event's own
            # transaction. (revision, seq) is the event's place in the log, so its id; the body
            # is rendered then, so that a delivery outlives the log's compaction. While an attempt
            # is in flight, next_attempt_time is its lease: past it, the row is due again.
            """CREATE TABLE webhook_deliveries (
                id TEXT{c} PRIMARY KEY,
                webhook TEXT{c} NOT NULL REFERENCES webhooks (name),
                revision BIGINT NOT NULL,
                seq INTEGER NOT NULL,
                event_kind INTEGER NOT NULL,
                body TEXT NOT NULL,
                state INTEGER NOT NULL,
                attempts INTEGER NOT NULL,
                last_response_code INTEGER NOT NULL,
                last_error TEXT NOT NULL,
                create_time BIGINT NOT NULL,
                last_attempt_time BIGINT,
                next_attempt_time BIGINT,
                complete_time BIGINT
            )""",
            "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_time)",
            "CREATE INDEX webhook_deliveries_by_event ON webhook_deliveries (webhook, revision, seq)",
            "CREATE INDEX webhook_deliveries_by_completion ON webhook_deliveries (complete_time)",
        ),
    ),
    Migration(
        10,
        "deployments' end time as a column",
        (
            # Analysis watches succeeded deployments only within their monitoring window: this lets
            # the query say so instead of reading every target's last deployment each pass.
            "ALTER TABLE deployments ADD COLUMN end_time BIGINT",
            # Rows from before: their creation time bounds their end from below, which at worst ends
            # an old deployment's monitoring early once, at the upgrade.
            "UPDATE deployments SET end_time = create_time WHERE state NOT IN (1, 2)",
            "CREATE INDEX deployments_ended ON deployments (state, end_time)",
        ),
    ),
    Migration(
        11,
        "version checks: what CI reported of each program version",
        (
            # One row per version and check: the last report is the check's state. Revisioned state
            # (a report can start or fail a deployment), written with its event.
            """CREATE TABLE version_checks (
                program TEXT{c} NOT NULL,
                version TEXT{c} NOT NULL,
                name TEXT{c} NOT NULL,
                state INTEGER NOT NULL,
                details_url TEXT NOT NULL,
                summary TEXT NOT NULL,
                reporter TEXT NOT NULL,
                create_time BIGINT NOT NULL,
                update_time BIGINT NOT NULL,
                revision BIGINT NOT NULL,
                PRIMARY KEY (program, version, name)
            )""",
        ),
    ),
    Migration(
        12,
        "telemetry off the revision order: sidecar presence and metric rollups by replica",
        (
            # Written in transactions of their own that neither take the revision row nor append an
            # event (Store.telemetry): by a replica a sidecar reports to, when what it runs changes,
            # and in one batch per replica per flush interval otherwise. One row per sidecar and
            # replica (round-robin clients report to each); readers take each sidecar's newest.
            # live_until is the writing replica's promise: its last report's time, three heartbeats
            # and two flush intervals. `leaving` marks a sidecar that said it is going: newer than
            # any other replica's row of it, it outlives them.
            """CREATE TABLE sidecar_presence (
                sidecar_id TEXT{c} NOT NULL,
                replica TEXT{c} NOT NULL,
                principal TEXT NOT NULL,
                report TEXT NOT NULL,
                heartbeat_ms BIGINT NOT NULL,
                last_report_time BIGINT NOT NULL,
                live_until BIGINT NOT NULL,
                leaving INTEGER NOT NULL,
                PRIMARY KEY (sidecar_id, replica)
            )""",
            "CREATE INDEX sidecar_presence_by_expiry ON sidecar_presence (live_until)",
            """CREATE TABLE sidecar_presence_targets (
                sidecar_id TEXT{c} NOT NULL,
                replica TEXT{c} NOT NULL,
                program TEXT{c} NOT NULL,
                environment TEXT{c} NOT NULL,
                PRIMARY KEY (program, environment, sidecar_id, replica),
                FOREIGN KEY (sidecar_id, replica) REFERENCES sidecar_presence (sidecar_id, replica)
                    ON DELETE CASCADE
            )""",
            "CREATE INDEX sidecar_presence_targets_by_sidecar ON sidecar_presence_targets (sidecar_id, replica)",
            # Sidecars reported before the upgrade stay live for their three heartbeats, held by no
            # running replica; they report again within one heartbeat, to whichever replica they reach.
            "INSERT INTO sidecar_presence (sidecar_id, replica, principal, report, heartbeat_ms, "
            "last_report_time, live_until, leaving) SELECT sidecar_id, 'before-upgrade', principal, report, "
            "heartbeat_ms, last_report_time, last_report_time + heartbeat_ms * 3000, 0 FROM sidecars",
            "INSERT INTO sidecar_presence_targets (sidecar_id, replica, program, environment) "
            "SELECT sidecar_id, 'before-upgrade', program, environment FROM sidecar_targets",
            "DROP TABLE sidecar_targets",
            "DROP TABLE sidecars",
            # One row per replica, target version and bucket (the windows one replica received in
            # one second, up to one flush): writes grow with replicas x targets, not with pods.
            # `source` and `bucket` name a rollup, so that a replica's reads count a rollup once
            # whether they find it in its memory, in the store, or (during its flush) in both.
            """CREATE TABLE metric_rollups (
                program TEXT{c} NOT NULL,
                environment TEXT{c} NOT NULL,
                version TEXT{c} NOT NULL,
                source TEXT{c} NOT NULL,
                bucket BIGINT NOT NULL,
                first_receive_time BIGINT NOT NULL,
                start_time BIGINT NOT NULL,
                end_time BIGINT NOT NULL,
                window_count BIGINT NOT NULL,
                request_count BIGINT NOT NULL,
                error_count BIGINT NOT NULL,
                latency TEXT NOT NULL,
                feedback_correct BIGINT NOT NULL,
                feedback_total BIGINT NOT NULL,
                PRIMARY KEY (program, environment, version, source, bucket)
            )""",
            "CREATE INDEX metric_rollups_by_receipt ON metric_rollups (first_receive_time)",
            # The windows stored before the upgrade, one rollup each (their key is unique per sidecar).
            "INSERT INTO metric_rollups (program, environment, version, source, bucket, first_receive_time, "
            "start_time, end_time, window_count, request_count, error_count, latency, feedback_correct, "
            "feedback_total) SELECT program, environment, version, 'before-upgrade/' || sidecar_id, "
            "start_time, receive_time, start_time, end_time, 1, request_count, error_count, latency, "
            "feedback_correct, feedback_total FROM metric_windows",
            "DROP TABLE metric_windows",
        ),
    ),
    Migration(
        13,
        "webhooks sign with several secrets at once (rotation)",
        (
            # A webhook's active secrets, oldest first by (create_time, id). Kept as given, as before.
            """CREATE TABLE webhook_secrets (
                webhook TEXT{c} NOT NULL REFERENCES webhooks (name),
                id TEXT{c} NOT NULL,
                secret TEXT NOT NULL,
                create_time BIGINT NOT NULL,
                PRIMARY KEY (webhook, id)
            )""",
            # Each webhook's one secret so far becomes its first. webhooks.secret stays, empty: SQLite
            # drops a column only since 3.35.
            """INSERT INTO webhook_secrets (webhook, id, secret, create_time)
                SELECT name, 'initial', secret, create_time FROM webhooks""",
            "UPDATE webhooks SET secret = ''",
        ),
    ),
    Migration(
        14,
        "deployments by state",
        (
            # A target's pending or in-progress deployment, looked up by every CreateDeployment and
            # every auto-deploying registration: found by three seeks, not by walking the target's
            # whole history (deployments_by_target), which grew with each registration.
            "CREATE INDEX deployments_by_state ON deployments (state, program, environment, create_time)",
        ),
    ),
)


def render(statement: str, dialect: Dialect) -> str:
    return (
        statement.replace("{blob}", dialect.blob)
        .replace("{c}", dialect.c)
        .replace("{autoid}", dialect.autoid)
    )


CREATE_LEDGER = """CREATE TABLE IF NOT EXISTS schema_migrations (
    number INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_time BIGINT NOT NULL
)"""


APPLIED = "SELECT number FROM schema_migrations"


def latest() -> int:
    """The schema version this release knows: its last migration's number."""
    return MIGRATIONS[-1].number


def pending(applied: set[int]) -> tuple[Migration, ...]:
    """The migrations a database with `applied` in its ledger still needs, in order.

    FailedPrecondition when the ledger lists a migration this release does not know.
    """
    unknown = sorted(applied - {m.number for m in MIGRATIONS})
    if unknown:
        raise FailedPrecondition(
            f"the database's schema is at version {max(unknown)}, newer than this release knows "
            f"(version {latest()}): a later release migrated it; run that release or a newer one"
        )
    return tuple(m for m in MIGRATIONS if m.number not in applied)


async def migrate(
    conn: Connection,
    dialect: Dialect,
    transaction: Callable[[], AbstractAsyncContextManager[object]] = nullcontext,
) -> None:
    """Apply, in order, the migrations that `conn`'s ledger does not list yet.

    Each runs inside `transaction()` together with its ledger row, so that a
    migration is either applied and recorded or neither. A backend that already
    holds one transaction around the whole loop passes nothing.
    """
    await conn.execute(CREATE_LEDGER)
    for migration in pending({int(r["number"]) for r in await conn.fetch(APPLIED)}):
        async with transaction():
            for statement in migration.statements:
                await conn.execute(render(statement, dialect))
            await conn.execute(
                "INSERT INTO schema_migrations (number, name, applied_time) VALUES (?, ?, ?)",
                migration.number,
                migration.name,
                now_us(),
            )

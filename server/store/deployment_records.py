"""Every query of what deploys: environments, targets, deployments, and the sidecars that serve them."""

from __future__ import annotations

import functools
import json
from datetime import datetime

from ..domain import deployments as dep
from ..domain.deployments import Deployment, Pinned, State, Target
from ..domain.environments import Environment, Policy, policy_from_json, policy_to_json
from ..domain.model import Page
from ..errors import InvalidArgument
from .sql import Connection, Row, to_datetime, to_json, to_us, visible_condition

# Pending approval, pending checks, in progress: a target has at most one such deployment.
_ACTIVE = tuple(int(s) for s in sorted(dep.ACTIVE))

# A target's pending or in-progress deployments (at most one). No ORDER BY: with one, SQLite walks
# deployments_by_target (already in that order) through the target's whole history, which every
# auto-deploying registration lengthens; without, deployments_by_state finds the rows by three seeks.
ACTIVE_DEPLOYMENT_SQL = (
    "SELECT body, create_time FROM deployments WHERE program = ? AND environment = ? AND state IN (?, ?, ?)"
)

_ENVIRONMENT_COLUMNS = "name, description, position, policy, create_time, update_time, revision"

# What analysis may watch (shaping_deployments), with the target each shapes: those in progress, then
# those that succeeded since a time. These are found from the targets they shape, each written as its
# deployment ended (so changed since then too), not from the deployments by state and end time: those
# were every auto-deploy of the monitoring window, each read whole to be joined, and the analysis loop
# asks every second (at a few hundred registrations a second, a reader busy a quarter of each second).
# CROSS JOIN: SQLite keeps that order.
_SHAPING = (
    "SELECT d.id, d.body, t.program, t.environment, t.stable_version, t.stable_digest, t.candidate_version, "
    "t.candidate_digest, t.candidate_weight, t.deployment, t.revision, t.update_time FROM "
)
_SHAPES = "t.deployment = d.id AND t.program = d.program AND t.environment = d.environment"
SHAPING_DEPLOYMENTS_SQL = (
    f"{_SHAPING} deployments d JOIN targets t ON {_SHAPES} WHERE d.state = ? UNION ALL "
    f"{_SHAPING} targets t CROSS JOIN deployments d WHERE {_SHAPES} "
    "AND t.update_time >= ? AND d.state = ? AND d.end_time >= ? ORDER BY id"
)


@functools.lru_cache(maxsize=64)
def _policy(text: str) -> Policy:
    """A policy's stored JSON, parsed once per distinct text: every registration that auto-deploys
    reads every environment, and parsing their policies again was a tenth of its time. A Policy is
    frozen and nothing changes its maps, so the one parsed is shared by every reader."""
    return policy_from_json(json.loads(text))


def _environment(row: Row) -> Environment:
    return _environment_of(
        (
            row["name"],
            row["description"],
            row["position"],
            row["policy"],
            row["create_time"],
            row["update_time"],
            row["revision"],
        )
    )


@functools.lru_cache(maxsize=64)
def _environment_of(values: tuple[str, str, int, str, int, int, int]) -> Environment:
    """An environment's row (its _ENVIRONMENT_COLUMNS), built once per distinct row: each
    auto-deploying registration reads every environment, and they change seldom. An Environment is
    frozen, its policy shared already (see _policy)."""
    name, description, position, policy, create_time, update_time, revision = values
    return Environment(
        name=name,
        description=description,
        position=position,
        policy=_policy(policy),
        create_time=to_datetime(create_time),
        update_time=to_datetime(update_time),
        revision=revision,
    )


class EnvironmentQueries:
    conn: Connection

    async def environment_names(self) -> set[str]:
        return {str(r["name"]) for r in await self.conn.fetch("SELECT name FROM environments")}

    async def get_environment(self, name: str) -> Environment | None:
        row = await self.conn.fetchrow(
            f"SELECT {_ENVIRONMENT_COLUMNS} FROM environments WHERE name = ?", name
        )
        return _environment(row) if row else None

    async def put_environment(self, env: Environment) -> None:
        """Insert or replace an environment's definition (times and revision as given)."""
        assert env.create_time is not None and env.update_time is not None
        await self.conn.execute(
            f"INSERT INTO environments ({_ENVIRONMENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET description = excluded.description, "
            "position = excluded.position, policy = excluded.policy, "
            "update_time = excluded.update_time, revision = excluded.revision",
            env.name,
            env.description,
            env.position,
            to_json(policy_to_json(env.policy)),
            to_us(env.create_time),
            to_us(env.update_time),
            env.revision,
        )

    async def environments(self) -> list[Environment]:
        rows = await self.conn.fetch(
            f"SELECT {_ENVIRONMENT_COLUMNS} FROM environments ORDER BY position, name"
        )
        return [_environment(r) for r in rows]

    async def list_environments(self, page: Page) -> tuple[list[Environment], str | None, int]:
        """Environments along the promotion path (position, then name)."""
        rows = await self.conn.fetch(
            f"SELECT {_ENVIRONMENT_COLUMNS} FROM environments ORDER BY position, name"
        )
        start = 0
        if page.after is not None:
            names = [r["name"] for r in rows]
            start = names.index(page.after) + 1 if page.after in names else len(rows)
        chunk = rows[start : start + page.size + 1]
        after = str(chunk[page.size - 1]["name"]) if len(chunk) > page.size else None
        return [_environment(r) for r in chunk[: page.size]], after, len(rows)


def _target(row: Row) -> Target:
    stable = Pinned(row["stable_version"], row["stable_digest"]) if row["stable_version"] else None
    candidate = (
        Pinned(row["candidate_version"], row["candidate_digest"]) if row["candidate_version"] else None
    )
    return Target(
        program=row["program"],
        environment=row["environment"],
        stable=stable,
        candidate=candidate,
        candidate_weight=row["candidate_weight"],
        deployment=row["deployment"],
        revision=row["revision"],
        update_time=to_datetime(row["update_time"]),
    )


def _deployment(row: Row) -> Deployment:
    return dep.from_json(json.loads(row["body"]))


class TargetQueries:
    conn: Connection

    async def get_target(self, program: str, environment: str) -> Target | None:
        row = await self.conn.fetchrow(
            "SELECT program, environment, stable_version, stable_digest, candidate_version, candidate_digest, "
            "candidate_weight, deployment, revision, update_time FROM targets WHERE program = ? AND environment = ?",
            program,
            environment,
        )
        return _target(row) if row else None

    async def targets_of(self, program: str) -> list[Target]:
        """Every target of one program (one per environment it was ever deployed to)."""
        rows = await self.conn.fetch(
            "SELECT program, environment, stable_version, stable_digest, candidate_version, candidate_digest, "
            "candidate_weight, deployment, revision, update_time FROM targets WHERE program = ?",
            program,
        )
        return [_target(r) for r in rows]

    async def put_target(self, t: Target) -> None:
        assert t.update_time is not None
        await self.conn.execute(
            "INSERT INTO targets (program, environment, stable_version, stable_digest, candidate_version, "
            "candidate_digest, candidate_weight, deployment, revision, update_time) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (program, environment) DO UPDATE SET "
            "stable_version = excluded.stable_version, stable_digest = excluded.stable_digest, "
            "candidate_version = excluded.candidate_version, candidate_digest = excluded.candidate_digest, "
            "candidate_weight = excluded.candidate_weight, deployment = excluded.deployment, "
            "revision = excluded.revision, update_time = excluded.update_time",
            t.program,
            t.environment,
            t.stable.version if t.stable else None,
            t.stable.digest if t.stable else None,
            t.candidate.version if t.candidate else None,
            t.candidate.digest if t.candidate else None,
            t.candidate_weight,
            t.deployment,
            t.revision,
            to_us(t.update_time),
        )

    async def targets_snapshot(self) -> tuple[int, list[Target]]:
        """Every target, and the revision they are the state of: one statement, one snapshot."""
        rows = await self.conn.fetch(
            "SELECT r.revision AS at_revision, t.program, t.environment, t.stable_version, t.stable_digest, "
            "t.candidate_version, t.candidate_digest, t.candidate_weight, t.deployment, t.revision, t.update_time "
            "FROM revisions r LEFT JOIN targets t ON 1 = 1 WHERE r.id = 1 ORDER BY t.program, t.environment"
        )
        revision = int(rows[0]["at_revision"]) if rows else 0
        return revision, [_target(r) for r in rows if r["program"] is not None]

    async def programs_in(self, environment: str) -> set[str]:
        rows = await self.conn.fetch(
            "SELECT program FROM targets WHERE environment = ? AND stable_version IS NOT NULL", environment
        )
        return {str(r["program"]) for r in rows}


class DeploymentQueries:
    conn: Connection

    async def live_deployments_snapshot(self) -> tuple[int, list[Deployment]]:
        """Deployments pending or in progress, and the revision they are the state of (one statement)."""
        rows = await self.conn.fetch(
            "SELECT r.revision AS at_revision, d.body FROM revisions r LEFT JOIN deployments d "
            "ON d.state IN (?, ?, ?) WHERE r.id = 1 ORDER BY d.create_time",
            *_ACTIVE,
        )
        revision = int(rows[0]["at_revision"]) if rows else 0
        return revision, [_deployment(r) for r in rows if r["body"] is not None]

    async def get_deployment(self, deployment_id: str) -> Deployment | None:
        row = await self.conn.fetchrow("SELECT body FROM deployments WHERE id = ?", deployment_id)
        return _deployment(row) if row else None

    async def put_deployment(self, d: Deployment) -> None:
        await self.conn.execute(
            "INSERT INTO deployments (id, program, environment, version, state, next_step_time, create_time, "
            "end_time, body, revision) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "state = excluded.state, next_step_time = excluded.next_step_time, end_time = excluded.end_time, "
            "body = excluded.body, revision = excluded.revision",
            d.id,
            d.program,
            d.environment,
            d.version,
            int(d.state),
            to_us(d.next_step_time) if d.next_step_time else None,
            to_us(d.create_time),
            to_us(d.end_time) if d.end_time else None,
            to_json(dep.to_json(d)),
            d.revision,
        )

    async def active_deployment(self, program: str, environment: str) -> Deployment | None:
        rows = await self.conn.fetch(ACTIVE_DEPLOYMENT_SQL, program, environment, *_ACTIVE)
        newest = max(rows, key=lambda r: int(r["create_time"]), default=None)
        return _deployment(newest) if newest else None

    async def active_deployments_of(self, program: str) -> list[Deployment]:
        """The deployments of one program pending or in progress, in any environment, oldest first."""
        rows = await self.conn.fetch(
            "SELECT body FROM deployments WHERE program = ? AND state IN (?, ?, ?) ORDER BY create_time",
            program,
            *_ACTIVE,
        )
        return [_deployment(r) for r in rows]

    async def waiting_deployments(self, program: str, version: str) -> list[Deployment]:
        """Deployments of program@version created but not started (approval, checks), oldest first."""
        rows = await self.conn.fetch(
            "SELECT body FROM deployments WHERE program = ? AND version = ? AND state IN (?, ?) "
            "ORDER BY create_time",
            program,
            version,
            int(State.PENDING_APPROVAL),
            int(State.PENDING_CHECKS),
        )
        return [_deployment(r) for r in rows]

    async def latest_deployment(self, program: str, environment: str) -> Deployment | None:
        row = await self.conn.fetchrow(
            "SELECT body FROM deployments WHERE program = ? AND environment = ? ORDER BY create_time DESC, id DESC "
            "LIMIT 1",
            program,
            environment,
        )
        return _deployment(row) if row else None

    async def succeeded_environments(self, program: str, version: str) -> set[str]:
        """Where program@version was deployed to success (rolled back later or not, but a
        rollback that ended it before it succeeded does not count)."""
        rows = await self.conn.fetch(
            "SELECT environment, state, body FROM deployments WHERE program = ? AND version = ? AND state IN (?, ?)",
            program,
            version,
            int(State.SUCCEEDED),
            int(State.ROLLED_BACK),
        )
        out = set()
        for r in rows:
            if r["state"] == int(State.SUCCEEDED) or any(
                t.kind is dep.Kind.SUCCEEDED for t in _deployment(r).timeline
            ):
                out.add(str(r["environment"]))
        return out

    async def shaping_deployments(self, ended_since: datetime) -> list[tuple[Deployment, Target]]:
        """What analysis may watch, with its target: deployments that shape their target now and are in
        progress, or succeeded at or after `ended_since` (not every target's last deployment ever)."""
        since = to_us(ended_since)
        rows = await self.conn.fetch(
            SHAPING_DEPLOYMENTS_SQL, int(State.IN_PROGRESS), since, int(State.SUCCEEDED), since
        )
        return [(_deployment(r), _target(r)) for r in rows]

    async def due_deployments(self, now: datetime, limit: int = 100) -> list[str]:
        """Deployments in progress whose next step is due: the controller's work list."""
        rows = await self.conn.fetch(
            "SELECT id FROM deployments WHERE state = ? AND next_step_time IS NOT NULL AND next_step_time <= ? "
            "ORDER BY next_step_time LIMIT ?",
            int(State.IN_PROGRESS),
            to_us(now),
            limit,
        )
        return [str(r["id"]) for r in rows]

    async def next_step_time(self) -> datetime | None:
        """When the controller has its next step to take, if any deployment waits for one."""
        row = await self.conn.fetchrow(
            "SELECT MIN(next_step_time) AS t FROM deployments WHERE state = ? AND next_step_time IS NOT NULL",
            int(State.IN_PROGRESS),
        )
        return to_datetime(row["t"]) if row and row["t"] is not None else None

    async def deployment_counts(self) -> dict[tuple[str, State], int]:
        """How many deployments each environment has in each state (the telemetry gauge's numbers)."""
        rows = await self.conn.fetch(
            "SELECT environment, state, COUNT(*) AS n FROM deployments GROUP BY environment, state"
        )
        return {(str(r["environment"]), State(r["state"])): int(r["n"]) for r in rows}

    async def paused_counts(self) -> dict[str, int]:
        """How many deployments in progress each environment has paused, waiting for a person (the
        telemetry gauge's numbers). Whether one is paused is in its body: the few in progress are read."""
        rows = await self.conn.fetch(
            "SELECT environment, body FROM deployments WHERE state = ?", int(State.IN_PROGRESS)
        )
        counts: dict[str, int] = {}
        for r in rows:
            if _deployment(r).paused:
                counts[str(r["environment"])] = counts.get(str(r["environment"]), 0) + 1
        return counts

    async def list_deployments(
        self,
        program: str,
        environment: str,
        states: tuple[State, ...],
        start: datetime | None,
        end: datetime | None,
        visible: list[str] | None,
        page: Page,
    ) -> tuple[list[Deployment], str | None, int]:
        """Newest first."""
        allowed, allowed_args = visible_condition("program", visible)
        where: list[str] = [allowed]
        args: list[object] = list(allowed_args)
        if program:
            where.append("program = ?")
            args.append(program)
        if environment:
            where.append("environment = ?")
            args.append(environment)
        if states:
            where.append(f"state IN ({', '.join('?' for _ in states)})")
            args += [int(s) for s in states]
        if start is not None:
            where.append("create_time >= ?")
            args.append(to_us(start))
        if end is not None:
            where.append("create_time < ?")
            args.append(to_us(end))
        condition = " AND ".join(where)
        cursor_time, cursor_id = _cursor(page.after)
        rows = await self.conn.fetch(
            f"SELECT body, create_time, id FROM deployments WHERE {condition} "
            "AND (create_time < ? OR (create_time = ? AND id < ?)) ORDER BY create_time DESC, id DESC LIMIT ?",
            *args,
            cursor_time,
            cursor_time,
            cursor_id,
            page.size + 1,
        )
        total = await self.conn.fetchrow(f"SELECT COUNT(*) AS n FROM deployments WHERE {condition}", *args)
        after = None
        if len(rows) > page.size:
            last = rows[page.size - 1]
            after = f"{last['create_time']}:{last['id']}"
        return [_deployment(r) for r in rows[: page.size]], after, int(total["n"]) if total else 0


def _cursor(after: str | None) -> tuple[int, str]:
    if after is None:
        return 2**62, ""
    when, _, ident = after.partition(":")
    # A rewritten token can carry any time: beyond 18 digits it overflows a 64-bit integer.
    if not (when.isascii() and when.isdigit() and len(when) <= 18) or not (
        ident.isascii() and ident.isalnum()
    ):
        raise InvalidArgument.one("page_token", "is not a token this server issued")
    return int(when), ident

"""Every query of deployments: environments (targets and deployments follow)."""

from __future__ import annotations

import json

from ..domain.environments import Environment, policy_from_json, policy_to_json
from ..domain.model import Page
from .sql import Connection, Row, to_datetime, to_json, to_us

_ENVIRONMENT_COLUMNS = "name, description, position, policy, create_time, update_time, revision"


def _environment(row: Row) -> Environment:
    return Environment(
        name=row["name"],
        description=row["description"],
        position=row["position"],
        policy=policy_from_json(json.loads(row["policy"])),
        create_time=to_datetime(row["create_time"]),
        update_time=to_datetime(row["update_time"]),
        revision=row["revision"],
    )


class DeploymentQueries:
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

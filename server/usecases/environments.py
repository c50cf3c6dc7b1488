"""Environment use cases: seed them, list, read, and update them under an etag."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from ..calls import Call
from ..domain import environments as envs
from ..domain.clock import SYSTEM_CLOCK, Clock
from ..domain.environments import Environment
from ..domain.events import EnvironmentChanged, EventKind, new_event
from ..errors import Aborted, NotFound
from ..store.base import Store
from .common import Idempotency, PageOf, Replay, page_of, record, replayed

log = logging.getLogger("dspy_registry.environments")


class Environments:
    def __init__(self, store: Store, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.store = store
        self.clock = clock

    async def seed(self, configured: tuple[Environment, ...] | None) -> None:
        """At start: the configured environments (created or brought up to date), else the defaults
        on an empty store. Environments defined only through the API are left as they are."""
        async with self.store.write() as tx:
            existing = await tx.environment_names()
            wanted = configured if configured is not None else (() if existing else envs.defaults())
            events = []
            for env in wanted:
                current = await tx.get_environment(env.name)
                if current is not None and envs.same_definition(current, env):
                    continue
                now = self.clock.now()
                created = current.create_time if current is not None else now
                await tx.put_environment(
                    replace(env, create_time=created, update_time=now, revision=tx.next_revision)
                )
                kind = EventKind.ENVIRONMENT_CREATED if current is None else EventKind.ENVIRONMENT_UPDATED
                payload = EnvironmentChanged(environment=env.name, source="config")
                events.append(new_event(kind, env.resource_name, payload))
            if events:
                await tx.append(events)
                log.info(
                    "environments from %s",
                    "the config file" if configured else "the defaults",
                    extra={"environments": [e.resource.split("/")[1] for e in events]},
                )

    async def list(self, page_size: int, page_token: str) -> PageOf[Environment]:
        return await page_of(
            self.store, lambda tx, page: tx.list_environments(page), page_size, page_token, "environments"
        )

    async def get(self, name: str) -> Environment:
        async with self.store.read() as tx:
            found = await tx.get_environment(name)
        if found is None:
            raise NotFound(f"environments/{name}")
        return found

    async def update(
        self,
        call: Call,
        name: str,
        change: Callable[[Environment | None], Environment],
        etag: str,
        allow_missing: bool,
        idem: Idempotency[Environment] | None,
    ) -> Environment | Replay:
        """Apply `change` (a pure merge of the request into the current definition) under the etag."""
        async with self.store.write(call) as tx:
            if (replay := await replayed(tx, idem)) is not None:
                return replay
            current = await tx.get_environment(name)
            if current is None and not allow_missing:
                raise NotFound(
                    f"environments/{name}", f"environments/{name} not found (set allow_missing to create it)"
                )
            if current is not None and etag and etag != current.etag:
                raise Aborted(f"environments/{name} changed: etag is {current.etag}, request had {etag}")
            wanted = change(current)
            known = await tx.environment_names() | {wanted.name}
            envs.validate(wanted, known).raise_if_any()
            now = self.clock.now()
            updated = replace(
                wanted,
                name=name,
                create_time=current.create_time if current is not None else now,
                update_time=now,
                revision=tx.next_revision,
            )
            await tx.put_environment(updated)
            kind = EventKind.ENVIRONMENT_CREATED if current is None else EventKind.ENVIRONMENT_UPDATED
            payload = EnvironmentChanged(environment=name, source="api")
            await tx.append([new_event(kind, updated.resource_name, payload)])
            return await record(tx, idem, updated)

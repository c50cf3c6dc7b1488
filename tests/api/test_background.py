"""The background loops: a poke during a pass is never lost; a store fault is one line, not a traceback."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from dspy_registry.server import app as app_module
from dspy_registry.server import controller as controller_module
from dspy_registry.server.background import Loop
from dspy_registry.server.controller import Controller
from dspy_registry.server.domain.model import Event
from dspy_registry.server.errors import StoreUnavailable
from dspy_registry.server.store.base import Store
from dspy_registry.server.usecases.deployments import Deployments
from tests.api.conftest import start
from tests.eventually import until


async def test_a_deployment_committed_during_a_pass_is_stepped_without_waiting_out_the_idle_delay(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(controller_module, "IDLE_SECONDS", 60.0)  # nothing due: a pass a minute
    passes: list[float] = []

    class Observed(Controller):
        async def run_once(self) -> int:
            passes.append(time.monotonic())
            if len(passes) == 1:  # a deployment commits while this pass runs
                created = {
                    "state": "IN_PROGRESS"
                }  # a canary's first step is due later: it wakes the controller
                self.on_commit(
                    [Event(kind="deployment.created", resource="deployments/d1", data=created, revision=1)]
                )
            return await super().run_once()

    controller = Observed(Deployments(store))
    controller.start()
    try:
        # The commit's wake-up must survive the pass it arrived in: the next pass starts at once,
        # not after the idle minute (it was cleared after the pass, and lost).
        await until(lambda: len(passes) >= 2, "a second pass right after the first", seconds=10)
    finally:
        await controller.stop()


async def test_a_store_fault_is_one_line_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    runs = 0

    async def failing() -> float:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise StoreUnavailable("postgres unreachable: connection refused")
        if runs == 2:
            raise RuntimeError("a bug")
        return 60.0

    loop = Loop("probe", failing, idle=0.01, log=logging.getLogger("test.background"))
    loop.start()
    try:
        await until(lambda: runs >= 3, "the loop to outlive its failures")
    finally:
        await loop.stop()
    lines = [(r.getMessage(), r.exc_info is not None) for r in caplog.records if r.name == "test.background"]
    assert lines == [
        ("probe pass failed; retrying: postgres unreachable: connection refused", False),
        ("probe pass failed; retrying", True),
    ]


async def test_a_poke_in_the_same_turn_as_stop_does_not_keep_the_loop_alive() -> None:
    """A commit pokes the controller as the server stops: the stop must still end the loop (with
    asyncio.wait_for as the sleep, Python 3.11 swallowed the cancellation and the loop ran on, so a
    test teardown, and the CI run after it, hung)."""
    passes = 0

    async def quick() -> float:
        nonlocal passes
        passes += 1
        return 60.0

    loop = Loop("probe", quick, idle=60.0, log=logging.getLogger("test.background"))
    loop.start()
    await until(lambda: passes == 1, "the first pass")
    await asyncio.sleep(0.01)  # the loop is in its sleep now
    loop.poke()
    async with asyncio.timeout(5):
        await loop.stop()
    assert passes == 1


async def test_a_stop_stuck_past_its_grace_logs_every_task_once(
    database_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that does not stop says where it is stuck (a test run once hung a minute in a
    teardown with nothing to show for it)."""
    monkeypatch.setattr(app_module, "SLOW_STOP_SECONDS", 0.2)
    running = await start(database_url)
    stuck = asyncio.Event()
    stop_notifier = running.app.notifier.stop

    async def notifier_stop() -> None:  # a loop that takes its time to end
        await asyncio.wait_for(stuck.wait(), 0.6)

    monkeypatch.setattr(running.app.notifier, "stop", notifier_stop)
    await running.channel.close(None)
    with caplog.at_level(logging.WARNING, logger="dspy_registry.server"):
        with pytest.raises(TimeoutError):
            await running.app.stop(grace=0)
    await stop_notifier()
    await running.app.store.close()
    reports = [r.getMessage() for r in caplog.records if "stopping has taken over" in r.getMessage()]
    assert len(reports) == 1, reports
    assert "notifier_stop" in reports[0] and "_stop" in reports[0], reports[0]

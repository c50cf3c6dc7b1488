"""The deployment state machine: every (state, action) pair, and the strategies' steps."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from dspy_registry.server.domain import deployments as dep
from dspy_registry.server.domain.deployments import Deployment, Pinned, State, Target
from dspy_registry.server.domain.environments import CanaryStep, Strategy, StrategySpec
from dspy_registry.server.domain.sidecars import Applied, Report
from dspy_registry.server.errors import FailedPrecondition

NOW = datetime(2026, 1, 1, tzinfo=UTC)
OLD = Pinned("1.0.0", "sha256:" + "a" * 64)
CANARY = StrategySpec(strategy=Strategy.CANARY, canary_steps=(CanaryStep(10, 60), CanaryStep(50, 60)))


def _deployment(state: State, strategy: StrategySpec = CANARY, **kw: object) -> Deployment:
    base = Deployment(
        id="d1",
        program="p",
        environment="production",
        version="2.0.0",
        digest="sha256:" + "b" * 64,
        strategy=strategy,
        state=state,
        creator="alice",
        reason="",
        create_time=NOW,
        required_approvals=1,
        previous_stable=OLD,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def _target(**kw: object) -> Target:
    return replace(Target(program="p", environment="production", stable=OLD, deployment="d1"), **kw)  # type: ignore[arg-type]


ACTIONS = {
    "approve": lambda d, t: dep.approve(d, t, NOW, "bob", "", False),
    "reject": lambda d, t: dep.approve(d, t, NOW, "bob", "", True),
    "advance": lambda d, t: dep.advance(d, t, NOW, "controller"),
    "promote": lambda d, t: dep.promote(d, t, NOW, "bob", False, ""),
    "promote fully": lambda d, t: dep.promote(d, t, NOW, "bob", True, ""),
    "abort": lambda d, t: dep.abort(d, t, NOW, "bob", "stop"),
    "supersede": lambda d, t: dep.supersede(d, t, NOW, "bob", "d2"),
    "roll back": lambda d, t: dep.roll_back(d, t, NOW, "bob", "worse", "d3"),
}
# (state, action) -> the state it leads to; absent pairs are illegal (FAILED_PRECONDITION).
LEGAL = {
    (State.PENDING_APPROVAL, "approve"): State.IN_PROGRESS,
    (State.PENDING_APPROVAL, "reject"): State.ABORTED,
    (State.PENDING_APPROVAL, "abort"): State.ABORTED,
    (State.PENDING_APPROVAL, "supersede"): State.SUPERSEDED,
    (State.IN_PROGRESS, "advance"): State.IN_PROGRESS,
    (State.IN_PROGRESS, "promote"): State.IN_PROGRESS,
    (State.IN_PROGRESS, "promote fully"): State.SUCCEEDED,
    (State.IN_PROGRESS, "abort"): State.ABORTED,
    (State.IN_PROGRESS, "supersede"): State.SUPERSEDED,
    (State.IN_PROGRESS, "roll back"): State.ROLLED_BACK,
    (State.SUCCEEDED, "roll back"): State.ROLLED_BACK,
    # Waiting for required checks (domain/checks.py): it may only end, aborted or superseded.
    (State.PENDING_CHECKS, "abort"): State.ABORTED,
    (State.PENDING_CHECKS, "supersede"): State.SUPERSEDED,
}


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("action", list(ACTIONS))
def test_every_state_and_action(state: State, action: str) -> None:
    d = _deployment(state)
    expected = LEGAL.get((state, action))
    if expected is None:
        with pytest.raises(FailedPrecondition):
            ACTIONS[action](d, _target())
        return
    result = ACTIONS[action](d, _target())
    after = result[0]
    assert isinstance(after, Deployment)
    assert after.state is expected
    assert after.timeline, "every transition is in the timeline"


def test_a_canary_walks_its_steps_then_promotes() -> None:
    d, t = dep.start(_deployment(State.PENDING_APPROVAL), _target(), NOW, "bob")
    assert (d.state, d.step, d.weight_percent, t.candidate_weight, t.stable) == (
        State.IN_PROGRESS,
        0,
        10,
        10,
        OLD,
    )
    assert d.next_step_time == NOW + timedelta(seconds=60) and not dep.due(d, NOW)
    later = NOW + timedelta(seconds=61)
    assert dep.due(d, later)
    d, t = dep.advance(d, t, later, "controller")
    assert (d.step, t.candidate_weight) == (1, 50)
    d, t = dep.advance(d, t, later + timedelta(seconds=61), "controller")
    assert d.state is State.SUCCEEDED and t.stable == d.pinned and t.candidate is None
    assert [e.kind for e in d.timeline] == [dep.Kind.STEP_ADVANCED, dep.Kind.PROMOTED, dep.Kind.SUCCEEDED]


def test_replace_moves_the_stable_at_once_and_blue_green_stages_at_weight_zero() -> None:
    d, t = dep.start(
        _deployment(State.PENDING_APPROVAL, StrategySpec(strategy=Strategy.REPLACE)), _target(), NOW, "bob"
    )
    assert d.state is State.SUCCEEDED and t.stable == d.pinned
    green = StrategySpec(strategy=Strategy.BLUE_GREEN, promote_delay_seconds=30)
    d, t = dep.start(_deployment(State.PENDING_APPROVAL, green), _target(), NOW, "bob")
    assert d.state is State.IN_PROGRESS and t.candidate == d.pinned and t.candidate_weight == 0
    assert d.next_step_time == NOW + timedelta(seconds=30)
    d, t = dep.advance(d, t, NOW + timedelta(seconds=30), "controller")
    assert d.state is State.SUCCEEDED and t.stable == d.pinned and t.candidate is None


def test_approvals_the_requester_cannot_give_and_none_twice() -> None:
    d = _deployment(State.PENDING_APPROVAL, required_approvals=2)
    with pytest.raises(FailedPrecondition, match="may not approve"):
        dep.approve(d, _target(), NOW, "alice", "", False)
    once, t = dep.approve(d, _target(), NOW, "bob", "lgtm", False)
    assert once.state is State.PENDING_APPROVAL
    with pytest.raises(FailedPrecondition, match="already approved"):
        dep.approve(once, t, NOW, "bob", "", False)
    twice, _ = dep.approve(once, t, NOW, "carol", "", False)
    assert twice.state is State.IN_PROGRESS


def test_rollback_needs_a_previous_version_and_the_latest_deployment() -> None:
    with pytest.raises(FailedPrecondition, match="no previous version"):
        dep.roll_back(_deployment(State.SUCCEEDED, previous_stable=None), _target(), NOW, "bob", "", "d3")
    with pytest.raises(FailedPrecondition, match="no longer shapes"):
        dep.roll_back(_deployment(State.SUCCEEDED), _target(deployment="d9"), NOW, "bob", "", "d3")
    ended, target, back_to = dep.roll_back(_deployment(State.SUCCEEDED), _target(), NOW, "bob", "worse", "d3")
    assert (
        back_to == OLD and target.stable == OLD and target.deployment == "d3" and ended.rolled_back_by == "d3"
    )


def _sidecar(name: str, *acked: tuple[str, str]) -> Report:
    entries = tuple(
        Applied(
            program="p",
            environment="production",
            version=version,
            digest=digest,
            acked=True,
            error_code=0,
            error_message="",
            revision=1,
            apply_time=None,
        )
        for version, digest in acked
    )
    return Report(
        sidecar_id=name, principal="pod", targets=entries, heartbeat_seconds=10.0, time=NOW, revision=1
    )


def test_the_blue_green_switch_waits_for_its_share_of_acks_then_times_out() -> None:
    green = ("2.0.0", "sha256:" + "b" * 64)
    spec = StrategySpec(strategy=Strategy.BLUE_GREEN, min_ack_percent=50, ack_timeout_seconds=60)
    d = _deployment(State.IN_PROGRESS, spec, step_start_time=NOW)
    t = _target(candidate=d.pinned)
    live = [_sidecar("a", green), _sidecar("b", (OLD.version, OLD.digest)), _sidecar("c")]
    assert dep.green_acks(d, live) == (1, 3, 2)  # ceil(3 * 50 %)
    waiting, same = dep.switch_when_acked(d, t, NOW, "controller", live)
    assert (waiting.state, waiting.next_step_time, same) == (State.IN_PROGRESS, NOW + timedelta(seconds=1), t)
    # The green version under another digest is no ACK of it.
    assert dep.green_acks(d, [_sidecar("x", ("2.0.0", "sha256:" + "c" * 64))]) == (0, 1, 1)

    live[1] = _sidecar("b", green)
    switched, target = dep.switch_when_acked(d, t, NOW, "controller", live)
    assert (switched.state, target.stable, target.candidate) == (State.SUCCEEDED, d.pinned, None)
    assert dep.switch_when_acked(d, t, NOW, "controller", [])[0].state is State.SUCCEEDED  # none to wait for

    late = NOW + timedelta(seconds=61)
    failed, dropped = dep.switch_when_acked(
        d, t, late, "controller", live[:1] + [_sidecar("b"), _sidecar("c")]
    )
    assert failed.state is State.FAILED and dropped.candidate is None
    assert failed.timeline[-1].reason == "1 of 3 live sidecars ACKed 2.0.0 within 60s; 2 needed (50%)"


def test_the_timeline_begins_with_created_and_says_the_step_after_each_entry() -> None:
    pending = dep.created(_deployment(State.PENDING_APPROVAL))
    assert [(e.kind, e.state, e.step) for e in pending.timeline] == [
        (dep.Kind.CREATED, State.PENDING_APPROVAL, 0)
    ]
    assert pending.steps_applied == 0
    started, _ = dep.approve(pending, _target(), NOW, "bob", "ok", reject=False)
    assert [(e.kind, e.state, e.step) for e in started.timeline] == [
        (dep.Kind.CREATED, State.PENDING_APPROVAL, 0),
        (dep.Kind.APPROVED, State.IN_PROGRESS, 1),  # the approval started the first canary step
    ]
    stepped, _ = dep.advance(started, _target(), NOW, "controller")
    assert (stepped.timeline[-1].step, stepped.steps_applied) == (2, 2)


def test_stored_entries_from_before_current_step_keep_their_meaning() -> None:
    d = dep.created(_deployment(State.PENDING_APPROVAL))
    stored: dict[str, Any] = dep.to_json(d)
    [entry] = stored["timeline"]
    assert (entry["current_step"], entry["step"]) == (0, 0)  # `step` for a server of the previous release
    older = dict(entry)
    del older["current_step"]
    older.update(step=1, state="IN_PROGRESS")  # once the 0-based step in force
    assert dep.from_json({**stored, "timeline": [older]}).timeline[0].step == 2
    older.update(step=0, state="PENDING_APPROVAL")  # 0 meant "not started" too
    assert dep.from_json({**stored, "timeline": [older]}).timeline[0].step == 0
    assert dep.event_step({"current_step": 0, "step": 5}) == 0


def test_a_rollback_deployment_is_created_and_succeeded_at_once() -> None:
    original = replace(_deployment(State.SUCCEEDED), step_start_time=NOW)
    back = dep.rollback_deployment("d2", original, OLD, OLD, "errors", "controller", NOW)
    assert (back.state, back.steps_applied, back.version, back.rollback_of) == (
        State.SUCCEEDED,
        1,
        "1.0.0",
        "d1",
    )
    assert [(e.kind, e.state, e.step) for e in back.timeline] == [
        (dep.Kind.CREATED, State.SUCCEEDED, 1),
        (dep.Kind.SUCCEEDED, State.SUCCEEDED, 1),
    ]
    # One stored before rollbacks had a step_start_time still says it started.
    assert replace(back, step_start_time=None).steps_applied == 1


def test_evolve_builds_what_replace_builds() -> None:
    d = _deployment(State.IN_PROGRESS, step=1, weight_percent=50)
    changes: dict[str, Any] = {"state": State.SUCCEEDED, "weight_percent": 100, "end_time": NOW}
    evolved = dep.evolve(d, **changes)
    assert evolved == replace(d, **changes)
    assert vars(evolved) == vars(replace(d, **changes))
    assert hash(evolved) == hash(replace(d, **changes))
    assert d.state is State.IN_PROGRESS and d.end_time is None  # the original is untouched
    with pytest.raises(TypeError, match="no field wieght_percent"):
        dep.evolve(d, wieght_percent=100)


def test_stored_form_writes_each_time_as_it_is_even_where_equal_times_differ_in_offset() -> None:
    """to_json writes each datetime object once; equal instants in other offsets keep their own text."""
    paris = NOW.astimezone(timezone(timedelta(hours=1)))
    assert paris == NOW
    d = _deployment(State.SUCCEEDED, create_time=NOW, update_time=paris, end_time=NOW)
    stored = dep.to_json(d)
    assert (stored["create_time"], stored["update_time"], stored["end_time"]) == (
        "2026-01-01T00:00:00+00:00",
        "2026-01-01T01:00:00+01:00",
        "2026-01-01T00:00:00+00:00",
    )
    assert dep.from_json(stored) == d

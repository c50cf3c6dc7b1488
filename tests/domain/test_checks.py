"""Required checks: the reports CI sends, the policy that lists them, and the gate they make."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from dspy_registry.server.domain import checks as checking
from dspy_registry.server.domain import deployments as dep
from dspy_registry.server.domain.checks import CheckState, OnMissingChecks, VersionCheck
from dspy_registry.server.domain.deployments import Deployment, Kind, State, Target
from dspy_registry.server.domain.environments import StrategySpec, load_toml, policy_from_json, policy_to_json
from dspy_registry.server.errors import InvalidArgument

NOW = datetime(2026, 1, 1, tzinfo=UTC)
REQUIRED = ("integration_tests", "load_test")


def _check(name: str, state: CheckState, summary: str = "") -> VersionCheck:
    return VersionCheck(
        program="p",
        version="2.0.0",
        check=name,
        state=state,
        details_url="",
        summary=summary,
        reporter="ci",
        create_time=NOW,
        update_time=NOW,
    )


def _waiting() -> Deployment:
    d = Deployment(
        id="d1",
        program="p",
        environment="production",
        version="2.0.0",
        digest="sha256:" + "b" * 64,
        strategy=StrategySpec(),
        state=State.PENDING_APPROVAL,
        creator="alice",
        reason="",
        create_time=NOW,
        required_checks=REQUIRED,
    )
    return dep.created(d)


def test_the_policy_reads_required_checks_from_toml_and_keeps_them() -> None:
    (env,) = load_toml(
        '[environments.production]\nrequired_checks = ["integration_tests", "load_test"]\n'
        'on_missing_checks = "refuse"\n'
    )
    assert env.policy.required_checks == REQUIRED
    assert env.policy.on_missing_checks is OnMissingChecks.REFUSE
    assert policy_from_json(policy_to_json(env.policy)) == env.policy
    stored_before = policy_to_json(env.policy)
    del stored_before["required_checks"], stored_before["on_missing_checks"]
    old = policy_from_json(stored_before)  # a policy stored before required checks existed
    assert (old.required_checks, old.on_missing_checks) == ((), OnMissingChecks.WAIT)


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ('required_checks = ["Load Test"]', "environments.production.policy.required_checks[0]"),
        ('required_checks = ["a", "a"]', "environments.production.policy.required_checks[1]"),
        ('on_missing_checks = "later"', "environments.production.on_missing_checks"),
        ("required_checks = 3", "environments.production.required_checks"),
    ],
)
def test_bad_required_checks_are_refused_naming_the_field(toml: str, field: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        load_toml(f"[environments.production]\n{toml}\n")
    assert field in {v.field for v in refused.value.violations}


def test_a_report_is_validated_field_by_field() -> None:
    assert not checking.validate_report("load_test", 1, "https://ci.example/r/1", "ok").items
    bad = checking.validate_report("Load Test", 0, "ftp://ci.example", "x" * 2000)
    assert {v.field for v in bad.items} == {"check", "state", "details_url", "summary"}
    assert {v.field for v in checking.validate_report("a", 9, "https://", "").items} == {
        "state",
        "details_url",
    }


def test_what_refuses_a_deployment_at_creation() -> None:
    failed = {"integration_tests": _check("integration_tests", CheckState.FAILED, "3 failed")}
    (violation,) = checking.violations(REQUIRED, OnMissingChecks.WAIT, failed, "s")
    assert violation.description == "required check integration_tests FAILED: 3 failed"
    running = {"load_test": _check("load_test", CheckState.RUNNING)}
    assert checking.violations(REQUIRED, OnMissingChecks.WAIT, running, "s") == []  # it waits
    refused = checking.violations(REQUIRED, OnMissingChecks.REFUSE, running, "s")
    assert [v.description for v in refused] == [
        "required check integration_tests has not passed (not reported)",
        "required check load_test has not passed (RUNNING)",
    ]


def test_a_deployment_waits_for_its_checks_and_the_last_one_starts_it() -> None:
    d, t = _waiting(), Target(program="p", environment="production")
    d = replace(d, required_approvals=1)
    d, t = dep.approve(d, t, NOW, "bob", "ok", False, passed={"integration_tests"})
    assert (d.state, d.waiting_checks, d.steps_applied) == (State.PENDING_CHECKS, ("load_test",), 0)
    assert d.timeline[-1].kind is Kind.CHECKS_PENDING
    assert d.timeline[-1].reason == "waiting for load_test; passed: integration_tests"
    # A report of a check it does not wait for changes nothing.
    assert dep.check_passed(d, t, NOW, "controller", _check("lint", CheckState.PASSED), {"lint"}) is None
    # The last one passing starts it: a REPLACE succeeds in the same step.
    passed = {"integration_tests", "load_test"}
    started, target = dep.check_passed(
        d, t, NOW, "controller", _check("load_test", CheckState.PASSED), passed
    )  # type: ignore[misc]
    assert started.state is State.SUCCEEDED and target.stable == started.pinned
    assert [e.kind for e in started.timeline][-3:] == [Kind.CHECK_PASSED, Kind.PROMOTED, Kind.SUCCEEDED]
    assert started.timeline[-3].state is State.IN_PROGRESS  # the entry holds the state after it
    # Were integration_tests re-run meanwhile (no longer PASSED), it would keep waiting.
    again = dep.check_passed(d, t, NOW, "controller", _check("load_test", CheckState.PASSED), {"load_test"})
    assert again is not None and again[0].state is State.PENDING_CHECKS
    assert again[0].waiting_checks == ("integration_tests",)


def test_a_failed_required_check_fails_a_deployment_not_started() -> None:
    d, t = _waiting(), Target(program="p", environment="production")
    failed = _check("load_test", CheckState.FAILED, "p95 2.4 s")
    ended, _ = dep.check_failed(d, t, NOW, "controller", failed)  # type: ignore[misc]
    assert (
        ended.state is State.FAILED
        and ended.timeline[-1].reason == "required check load_test FAILED: p95 2.4 s"
    )
    assert dep.check_failed(d, t, NOW, "controller", _check("lint", CheckState.FAILED)) is None
    started, t2 = dep.start(d, t, NOW, "alice")
    assert dep.check_failed(started, t2, NOW, "controller", failed) is None  # it has started: too late


def test_no_required_checks_start_at_once() -> None:
    d = replace(_waiting(), required_checks=())
    started, _ = dep.start_when_checked(d, Target(program="p", environment="production"), NOW, "alice", ())
    assert started.state is State.SUCCEEDED


def test_the_stored_form_keeps_the_checks() -> None:
    d = replace(_waiting(), state=State.PENDING_CHECKS, waiting_checks=("load_test",))
    assert dep.from_json(dep.to_json(d)) == d
    stored_before = dep.to_json(d)
    del stored_before["required_checks"], stored_before["waiting_checks"]
    assert dep.from_json(stored_before).required_checks == ()

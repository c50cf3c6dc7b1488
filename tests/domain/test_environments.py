"""Environments: the seed's defaults, the TOML file, and what a definition may not say."""

from __future__ import annotations

import dataclasses

import pytest

from dspy_registry.server.domain import environments as envs
from dspy_registry.server.errors import InvalidArgument

SEED_CONFIG = """
[deployment]
default_strategy = "blue_green"
auto_rollback = true
monitoring_window = "10m"

[environments.development]
auto_deploy = true
validation_required = false
rollback_enabled = true
default_strategy = "replace"

[environments.staging]
auto_deploy = false
validation_required = true
approval_required = false
rollback_enabled = true

[environments.production]
auto_deploy = false
validation_required = true
approval_required = true
rollback_enabled = true
monitoring_required = true
min_metrics = { accuracy = 0.85 }
required_predecessors = ["staging"]
default_strategy = "canary"
canary_percent = 10
"""


def test_the_defaults_are_the_seeds_three_environments() -> None:
    dev, staging, prod = envs.defaults()
    assert [e.name for e in (dev, staging, prod)] == ["development", "staging", "production"]
    assert dev.policy.auto_deploy and not dev.policy.validation_required
    assert staging.policy.validation_required and not staging.policy.approval_required
    assert prod.policy.approval_required and prod.policy.required_approvals == 1
    assert prod.policy.monitoring_required and prod.policy.rollback_enabled
    assert prod.policy.required_predecessors == ("staging",)
    assert prod.policy.auto_rollback == envs.Thresholds(
        error_rate=0.05, latency_p95_ms=2000, accuracy_drop=0.10, monitoring_window_seconds=300
    )
    for env in envs.defaults():
        assert not envs.validate(env, {"development", "staging", "production"})


def test_a_toml_file_shaped_like_the_seeds_configure_block() -> None:
    dev, staging, prod = envs.load_toml(SEED_CONFIG)
    assert dev.policy.default_strategy.strategy is envs.Strategy.REPLACE
    assert staging.policy.default_strategy.strategy is envs.Strategy.BLUE_GREEN  # the [deployment] default
    assert prod.policy.default_strategy.strategy is envs.Strategy.CANARY
    assert prod.policy.default_strategy.canary_steps[0].weight_percent == 10
    assert prod.policy.validation.min_metrics == {"accuracy": 0.85}
    assert prod.policy.auto_rollback.monitoring_window_seconds == 600  # "10m"
    assert [e.position for e in (dev, staging, prod)] == [0, 1, 2]


def test_without_an_environments_table_the_defaults_take_the_deployment_settings() -> None:
    dev, staging, prod = envs.load_toml('[deployment]\ndefault_strategy = "canary"\nauto_rollback = false\n')
    assert prod.policy.default_strategy.strategy is envs.Strategy.CANARY
    assert dev.policy.default_strategy.strategy is envs.Strategy.REPLACE
    assert not staging.policy.auto_rollback.enabled


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[environments.prod\n", "config"),
        (
            '[environments.prod]\nrequired_predecessors = ["nowhere"]\n',
            "environments.prod.policy.required_predecessors[0]",
        ),
        (
            "[environments.prod]\napproval_required = true\nrequired_approvals = 0\n",
            "environments.prod.policy.required_approvals",
        ),
        ("[environments.Prod]\n", "environments.Prod.name"),
        ('[deployment]\nmonitoring_window = "soon"\n', "deployment.monitoring_window"),
        ('[environments.prod]\ndefault_strategy = "yolo"\n', "environments.prod.default_strategy"),
        ('[environments.prod]\nauto_deploy = "false"\n', "environments.prod.auto_deploy"),
        ("[environments.prod]\nrequired_approvals = 1.5\n", "environments.prod.required_approvals"),
        ("[environments.prod]\nautodeploy = true\n", "environments.prod.autodeploy"),
        ('[versioning]\nauto_increment = "huge"\n', "versioning.auto_increment"),
        ('[versioning]\nstrategy = "calendar"\n', "versioning.strategy"),
        ("[versioning]\nrequire_changelog = 1\n", "versioning.require_changelog"),
        ("[versioning]\nautoincrement = true\n", "versioning.autoincrement"),
    ],
)
def test_bad_files_name_the_bad_field(text: str, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        envs.load_toml(text)
    assert field in {v.field for v in err.value.violations}


def test_canary_weights_strictly_increase_up_to_100() -> None:
    steps = (envs.CanaryStep(10, 0), envs.CanaryStep(10, 0), envs.CanaryStep(150, 0))
    bad = envs.validate_strategy(envs.StrategySpec(strategy=envs.Strategy.CANARY, canary_steps=steps), "s")
    assert {v.field for v in bad.items} == {
        "s.canary.steps[1].weight_percent",
        "s.canary.steps[2].weight_percent",
    }


def test_policies_survive_their_stored_form() -> None:
    for env in envs.load_toml(SEED_CONFIG):
        assert envs.policy_from_json(envs.policy_to_json(env.policy)) == env.policy


def test_a_strategys_stored_form_names_every_field() -> None:
    # strategy_to_json is spelt out by hand (cheaper than asdict): a field added to StrategySpec
    # must not be left out of every stored deployment and policy.
    spec = envs.StrategySpec(
        strategy=envs.Strategy.CANARY,
        canary_steps=(envs.CanaryStep(5, 1.5), envs.CanaryStep(50, 30.0)),
        step_deadline_seconds=9.0,
        auto_promote=False,
        promote_delay_seconds=2.0,
        min_ack_percent=90,
        ack_timeout_seconds=7.0,
    )
    stored = envs.strategy_to_json(spec)
    assert stored == {**dataclasses.asdict(spec), "strategy": "canary"}
    assert envs.strategy_from_json(stored) == spec

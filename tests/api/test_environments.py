"""Environments over a real channel, on SQLite and Postgres: defaults, the config file, updates."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2

from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from tests.api.conftest import Running, start, violations
from tests.calls import refusal

PRODUCTION = "environments/production"


async def test_the_seeds_environments_exist_by_default(server: Running) -> None:
    deployments = dpb_grpc.DeploymentServiceStub(server.channel)
    listed = await deployments.ListEnvironments(dpb.ListEnvironmentsRequest())
    assert [e.name for e in listed.environments] == [
        "environments/development",
        "environments/staging",
        "environments/production",
    ]
    dev, staging, prod = listed.environments
    assert dev.policy.auto_deploy and not dev.policy.validation_required
    assert staging.policy.validation_required and not staging.policy.approval_required
    assert prod.policy.approval_required and prod.policy.monitoring_required and prod.policy.rollback_enabled
    assert prod.policy.required_predecessors == ["staging"]
    assert prod.policy.auto_rollback.error_rate == pytest.approx(0.05)
    assert prod.policy.auto_rollback.latency_p95_ms == 2000
    assert prod.policy.auto_rollback.monitoring_window.seconds == 300
    assert prod.policy.default_strategy.strategy == dpb.STRATEGY_BLUE_GREEN
    got = await deployments.GetEnvironment(dpb.GetEnvironmentRequest(name=PRODUCTION))
    assert got.environment == prod


async def test_update_with_a_mask_and_an_etag(server: Running) -> None:
    deployments = dpb_grpc.DeploymentServiceStub(server.channel)
    prod = (await deployments.GetEnvironment(dpb.GetEnvironmentRequest(name=PRODUCTION))).environment
    change = dpb.Environment(name=PRODUCTION)
    change.policy.required_approvals = 2
    change.policy.auto_rollback.error_rate = 0.02
    mask = field_mask_pb2.FieldMask(paths=["policy.required_approvals", "policy.auto_rollback.error_rate"])
    updated = (
        await deployments.UpdateEnvironment(
            dpb.UpdateEnvironmentRequest(environment=change, update_mask=mask, etag=prod.etag)
        )
    ).environment
    assert (
        updated.policy.required_approvals == 2
        and updated.policy.auto_rollback.error_rate == pytest.approx(0.02)
    )
    assert updated.policy.approval_required and updated.policy.required_predecessors == ["staging"]  # kept
    assert updated.etag != prod.etag and updated.revision > prod.revision
    stale = await refusal(
        deployments.UpdateEnvironment(
            dpb.UpdateEnvironmentRequest(environment=change, update_mask=mask, etag=prod.etag)
        )
    )
    assert stale.code() == grpc.StatusCode.ABORTED
    async with server.app.store.read() as tx:
        events = await tx.events_after(updated.revision - 1)
    assert [(e.kind, e.resource) for e in events] == [("environment.updated", PRODUCTION)]


async def test_creating_and_refusing_definitions(server: Running) -> None:
    deployments = dpb_grpc.DeploymentServiceStub(server.channel)
    lab = dpb.Environment(name="environments/canary-lab", description="experiments", position=5)
    lab.policy.default_strategy.strategy = dpb.STRATEGY_CANARY
    lab.policy.default_strategy.canary.steps.add(weight_percent=5).pause.seconds = 30
    lab.policy.default_strategy.canary.steps.add(weight_percent=50).pause.seconds = 60
    missing = await refusal(deployments.UpdateEnvironment(dpb.UpdateEnvironmentRequest(environment=lab)))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    created = await deployments.UpdateEnvironment(
        dpb.UpdateEnvironmentRequest(environment=lab, allow_missing=True)
    )
    assert [s.weight_percent for s in created.environment.policy.default_strategy.canary.steps] == [5, 50]
    bad = dpb.Environment(name="environments/bad", position=9)
    bad.policy.approval_required = True
    bad.policy.required_predecessors.append("nowhere")
    refused = await refusal(
        deployments.UpdateEnvironment(dpb.UpdateEnvironmentRequest(environment=bad, allow_missing=True))
    )
    assert violations(refused) == {
        "environment.policy.required_approvals",
        "environment.policy.required_predecessors[0]",
    }
    wrong_mask = await refusal(
        deployments.UpdateEnvironment(
            dpb.UpdateEnvironmentRequest(
                environment=lab, update_mask=field_mask_pb2.FieldMask(paths=["etag"])
            )
        )
    )
    assert violations(wrong_mask) == {"update_mask"}
    listed = await deployments.ListEnvironments(dpb.ListEnvironmentsRequest(page_size=2))
    assert listed.total_size == 4 and len(listed.environments) == 2 and listed.next_page_token
    rest = await deployments.ListEnvironments(
        dpb.ListEnvironmentsRequest(page_size=2, page_token=listed.next_page_token)
    )
    assert [e.name for e in rest.environments] == ["environments/production", "environments/canary-lab"]


async def test_a_config_file_defines_the_environments_at_each_start(
    database_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "registry.toml"
    config.write_text(
        "[environments.dev]\nauto_deploy = true\n[environments.prod]\napproval_required = true\n"
    )
    first: Running = await start(database_url, config=str(config))
    try:
        listed = await dpb_grpc.DeploymentServiceStub(first.channel).ListEnvironments(
            dpb.ListEnvironmentsRequest()
        )
        assert [e.name for e in listed.environments] == ["environments/dev", "environments/prod"]
        token = first.admin_token
    finally:
        await first.channel.close(None)
        await first.app.stop(grace=0)
    config.write_text(
        "[environments.dev]\nauto_deploy = false\n[environments.prod]\napproval_required = true\n"
    )
    second = await start(database_url, admin_token=token, config=str(config))
    try:
        dev = await dpb_grpc.DeploymentServiceStub(second.channel).GetEnvironment(
            dpb.GetEnvironmentRequest(name="environments/dev")
        )
        assert not dev.environment.policy.auto_deploy  # the file wins at start
    finally:
        await second.channel.close(None)
        await second.app.stop(grace=0)

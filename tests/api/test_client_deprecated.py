"""The client's names from before each method took its RPC's name (client/_deprecated.py): each one
still works as it did, with its old signature and return value, and warns at the caller's line,
naming the method to use. This file goes with _deprecated.py in the release that drops them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from dspy_registry.client import Registry
from dspy_registry.client._deprecated import RENAMED
from dspy_registry.v1 import deployment_pb2 as dpb
from tests.api.conftest import Running
from tests.factories import dspy_state, spec_proto


async def test_each_deprecated_name_warns_and_still_works(server: Running) -> None:
    called: set[str] = set()

    @contextmanager
    def renamed(old: str) -> Iterator[None]:
        message = rf"Registry\.{old}\(\) is deprecated .* use Registry\.{RENAMED[old]}\(\)"
        with pytest.warns(DeprecationWarning, match=message) as caught:
            yield
        # Once, when called (not when awaited), and pointing at the caller's line, not the client's.
        assert [w.filename for w in caught] == [__file__]
        called.add(old)

    async with Registry.connect(server.target, token=server.admin_token) as registry:
        await registry.register_signature("sig", signature=spec_proto(), version="1.0.0")
        for version, accuracy in (("1.0.0", 0.89), ("1.1.0", 0.92)):
            await registry.register_program(
                "sentiment",
                program=dspy_state(f"v{version}"),
                signature_name="sig",
                version=version,
                metadata={"changelog": f"v{version}"},
                performance={"accuracy": accuracy},
            )

        with renamed("whoami"):
            me = await registry.whoami()
        assert me.principal == (await registry.who_am_i()).principal
        with renamed("list_versions"):
            versions = registry.list_versions("sentiment", page_size=1)
        assert [v.version async for v in versions] == ["1.1.0", "1.0.0"]
        with renamed("compare_versions"):
            compared = await registry.compare_versions("sentiment", "1.0.0", "1.1.0")
        assert compared == await registry.compare_program_versions("sentiment", "1.0.0", "1.1.0")
        with renamed("generate_upgrade_path"):
            steps = await registry.generate_upgrade_path("sentiment", "1.0.0")
        assert steps == await registry.get_upgrade_path("sentiment", "1.0.0")
        assert [(s.from_version, s.to_version) for s in steps] == [("1.0.0", "1.1.0")]

        with renamed("watch"):
            stream = registry.watch("sentiment", "staging")
        first = await anext(stream)
        assert first.WhichOneof("kind") == "snapshot" and not first.snapshot.targets
        await stream.aclose()

        # The old signatures: strategy and canary_percent, a rollback's reason, positional.
        with renamed("deploy"):
            staged = await registry.deploy("sentiment", "1.0.0", "staging", "replace")
        assert (staged.state, staged.strategy.strategy) == (
            dpb.DEPLOYMENT_STATE_SUCCEEDED,
            dpb.STRATEGY_REPLACE,
        )
        with renamed("deploy"):
            canary = await registry.deploy("sentiment", "1.1.0", "staging", "canary", 20, pause=3600)
        assert (canary.state, canary.weight_percent) == (dpb.DEPLOYMENT_STATE_IN_PROGRESS, 20)
        with renamed("rollback"):
            rolled = await registry.rollback(canary.name, "holding 1.1.0 back")
        # Still the raw response, as before rollback_deployment's `Rollback`.
        assert isinstance(rolled, dpb.RollbackDeploymentResponse)
        assert (rolled.rolled_back.name, rolled.rolled_back.state) == (
            canary.name,
            dpb.DEPLOYMENT_STATE_ROLLED_BACK,
        )
        assert (rolled.deployment.version, rolled.deployment.reason) == ("1.0.0", "holding 1.1.0 back")

        pending = await registry.create_deployment("sentiment", "1.0.0", "production", strategy="replace")
        assert pending.state == dpb.DEPLOYMENT_STATE_PENDING_APPROVAL
        await registry.create_principal("carol")
        await registry.grant_permission("carol", action="approve", resource="sentiment")
        carol_token = (await registry.create_token("carol")).secret
        async with Registry.connect(server.target, token=carol_token) as carol:
            with renamed("approve"):
                approved = await carol.approve(pending.name, "looks good")
        assert [(a.principal, a.comment) for a in approved.approvals] == [("principals/carol", "looks good")]

        with renamed("yank_version"):
            yanked = await registry.yank_version("sentiment", "1.1.0", "broken")
        assert (yanked.yanked, yanked.yank_reason) == (True, "broken")

    assert called == RENAMED.keys()

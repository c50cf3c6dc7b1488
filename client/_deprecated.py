"""The client's names from before each method took its RPC's name: deprecated, kept for one release.

Each alias keeps its old signature and return value (`rollback` still returns the raw
RollbackDeploymentResponse) and warns, when it is called, with a DeprecationWarning that names the
method to use. `RENAMED` lists them; SyncRegistry reads it to warn at its own caller.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from datetime import timedelta
from typing import ParamSpec, TypeVar

from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import registry_pb2 as pb

from ._access import AccessMethods
from ._deployments import DeploymentMethods, StrategyArgument
from ._programs import ProgramMethods
from ._streams import StreamMethods

# Old name -> the method that replaces it.
RENAMED: dict[str, str] = {
    "list_versions": "list_program_versions",
    "compare_versions": "compare_program_versions",
    "generate_upgrade_path": "get_upgrade_path",
    "yank_version": "yank_program_version",
    "deploy": "create_deployment",
    "approve": "approve_deployment",
    "rollback": "rollback_deployment",
    "watch": "watch_targets",
    "whoami": "who_am_i",
}

_P = ParamSpec("_P")
_R = TypeVar("_R")


def deprecation_message(owner: str, old: str) -> str:
    return f"{owner}.{old}() is deprecated and goes in the next release: use {owner}.{RENAMED[old]}()"


def _renamed(old: Callable[_P, _R]) -> Callable[_P, _R]:
    """`old`, warning when called (not when awaited or iterated), at the caller's line.

    The wrapped function stays reachable as `__wrapped__`, for SyncRegistry to call without a
    second warning from its event loop's thread.
    """

    @functools.wraps(old)
    def alias(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        warnings.warn(deprecation_message("Registry", old.__name__), DeprecationWarning, stacklevel=2)
        return old(*args, **kwargs)

    return alias


class DeprecatedMethods(ProgramMethods, DeploymentMethods, StreamMethods, AccessMethods):
    @_renamed
    def list_versions(self, name: str, *, page_size: int = 0) -> AsyncIterator[pb.ProgramVersion]:
        """Deprecated: use `list_program_versions`."""
        return self.list_program_versions(name, page_size=page_size)

    @_renamed
    async def compare_versions(
        self, name: str, base_version: str, target_version: str = "latest"
    ) -> pb.CompareProgramVersionsResponse:
        """Deprecated: use `compare_program_versions`."""
        return await self.compare_program_versions(name, base_version, target_version)

    @_renamed
    async def generate_upgrade_path(
        self, name: str, from_version: str, to_version: str = "latest"
    ) -> list[pb.UpgradeStep]:
        """Deprecated: use `get_upgrade_path`."""
        return await self.get_upgrade_path(name, from_version, to_version)

    @_renamed
    async def yank_version(
        self, name: str, version: str, reason: str = "", *, undo: bool = False, etag: str = ""
    ) -> pb.ProgramVersion:
        """Deprecated: use `yank_program_version`."""
        return await self.yank_program_version(name, version, reason=reason, undo=undo, etag=etag)

    @_renamed
    async def deploy(
        self,
        name: str,
        version: str,
        environment: str,
        strategy: StrategyArgument = None,
        canary_percent: int | Sequence[int] | None = None,
        *,
        pause: timedelta | float | None = None,
        reason: str = "",
        supersede: bool = False,
        allow_breaking: bool = False,
        expected_target_etag: str = "",
    ) -> dpb.Deployment:
        """Deprecated: use `create_deployment`."""
        return await self.create_deployment(
            name,
            version,
            environment,
            strategy=strategy,
            canary_percent=canary_percent,
            pause=pause,
            reason=reason,
            supersede=supersede,
            allow_breaking=allow_breaking,
            expected_target_etag=expected_target_etag,
        )

    @_renamed
    async def approve(
        self, deployment_id: str, comment: str = "", *, reject: bool = False, etag: str = ""
    ) -> dpb.Deployment:
        """Deprecated: use `approve_deployment`."""
        return await self.approve_deployment(deployment_id, comment=comment, reject=reject, etag=etag)

    @_renamed
    async def rollback(
        self, deployment_id: str, reason: str = "", *, etag: str = ""
    ) -> dpb.RollbackDeploymentResponse:
        """Deprecated: use `rollback_deployment` (which returns a `Rollback`, not the raw response)."""
        done = await self.rollback_deployment(deployment_id, reason=reason, etag=etag)
        return dpb.RollbackDeploymentResponse(deployment=done.deployment, rolled_back=done.rolled_back)

    @_renamed
    def watch(
        self,
        program: str = "",
        environment: str = "",
        *,
        selectors: Sequence[tuple[str, str]] = (),
        start_revision: int = 0,
        sidecar_id: str = "",
        progress_interval: timedelta | float | None = None,
    ) -> AsyncGenerator[dpb.WatchTargetsResponse, None]:
        """Deprecated: use `watch_targets`."""
        return self.watch_targets(
            program,
            environment,
            selectors=selectors,
            start_revision=start_revision,
            sidecar_id=sidecar_id,
            progress_interval=progress_interval,
        )

    @_renamed
    async def whoami(self) -> apb.WhoAmIResponse:
        """Deprecated: use `who_am_i`."""
        return await self.who_am_i()

"""DeploymentService's environment and deployment RPCs, as `Registry` methods."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from google.protobuf import field_mask_pb2, json_format

from dspy_registry.v1 import deployment_pb2 as dpb

from . import _convert as convert
from ._base import ClientBase

StrategyArgument = str | int | dpb.DeploymentStrategy | None


@dataclass(frozen=True, kw_only=True)
class Rollback:
    """What `rollback_deployment` returns: the two deployments a rollback links."""

    deployment: dpb.Deployment  # the new rollback deployment (REPLACE to the previous version)
    rolled_back: dpb.Deployment  # the deployment rolled back, now ROLLED_BACK


class DeploymentMethods(ClientBase):
    # -- environments

    async def list_environments(self, *, page_size: int = 0) -> AsyncIterator[dpb.Environment]:
        """Environments in promotion order (ListEnvironments), fetched a page at a time.

        Args:
            page_size: Environments per page (0: the server's default).

        Returns:
            An async iterator of the environments, each with its policy.

        Raises:
            InvalidArgumentError: A negative `page_size`.
        """
        request = dpb.ListEnvironmentsRequest(page_size=page_size)
        async for item in self._pages(
            self._deployment_service.ListEnvironments, request, dpb.ListEnvironmentsResponse, "environments"
        ):
            yield item

    async def get_environment(self, name: str) -> dpb.Environment:
        """One environment with its policy (GetEnvironment).

        Args:
            name: The environment, `production` or `environments/production`.

        Returns:
            The environment.

        Raises:
            NotFoundError: No such environment.
        """
        response = await self._call(
            self._deployment_service.GetEnvironment,
            dpb.GetEnvironmentRequest(name=convert.full_name("environments", name)),
            dpb.GetEnvironmentResponse,
        )
        return response.environment

    async def update_environment(
        self,
        environment: dpb.Environment | Mapping[str, Any],
        *,
        update_mask: Sequence[str] = (),
        etag: str = "",
        allow_missing: bool = False,
    ) -> dpb.Environment:
        """Changes an environment's policy (UpdateEnvironment, admin), or creates it.

        Args:
            environment: The environment with its new values: a proto or its dict (proto3 JSON
                mapping); `name` says which one.
            update_mask: The field paths to change (`policy.required_approvals` ...); empty for all.
            etag: The environment's etag as last read: the call fails if it changed since.
            allow_missing: Create the environment when it does not exist.

        Returns:
            The environment as it now is.

        Raises:
            InvalidArgumentError: A bad name, mask path or policy value.
            NotFoundError: No such environment, and `allow_missing` is false.
            ConflictError: `etag` does not match; read the environment again.
        """
        if isinstance(environment, Mapping):
            environment = json_format.ParseDict(dict(environment), dpb.Environment())
        if environment.name:
            environment.name = convert.full_name("environments", environment.name)
        response = await self._call(
            self._deployment_service.UpdateEnvironment,
            dpb.UpdateEnvironmentRequest(
                environment=environment,
                update_mask=field_mask_pb2.FieldMask(paths=list(update_mask)),
                etag=etag,
                allow_missing=allow_missing,
                request_id=convert.request_id(),
            ),
            dpb.UpdateEnvironmentResponse,
        )
        return response.environment

    # -- deployments

    async def create_deployment(
        self,
        name: str,
        version: str,
        environment: str,
        *,
        strategy: StrategyArgument = None,
        canary_percent: int | Sequence[int] | None = None,
        pause: timedelta | float | None = None,
        reason: str = "",
        supersede: bool = False,
        allow_breaking: bool = False,
        expected_target_etag: str = "",
    ) -> dpb.Deployment:
        """Deploys a version to an environment (CreateDeployment).

        The environment's policy validates the version first (its minimum performance, the semver
        guard, the promotion order); the deployment may wait in PENDING_APPROVAL (see
        `approve_deployment`).

        Args:
            name: The program, short or `programs/...`.
            version: The version to deploy.
            environment: The environment, short or `environments/...`.
            strategy: "canary", "blue_green", "replace", a DeploymentStrategy, or None for the
                environment's default (a canary when `canary_percent` or `pause` is given).
            canary_percent: A canary's weight (10 unless given), or one step per weight given.
            pause: How long each canary step is held, in seconds or as a timedelta.
            reason: Why, kept in the deployment's timeline.
            supersede: End a deployment of the same target in progress (SUPERSEDED) instead of failing.
            allow_breaking: Deploy even when the version's signature breaks the one served.
            expected_target_etag: The target's etag as last read: the call fails if it changed since.

        Returns:
            The deployment (IN_PROGRESS, PENDING_APPROVAL, or already SUCCEEDED for a replace).

        Raises:
            InvalidArgumentError: Bad input, such as canary weights not increasing or above 100.
            NotFoundError: The program version or the environment does not exist.
            FailedPreconditionError: The version is yanked, the policy or the promotion order refuses
                it (see `precondition_violations`), or another deployment of the target is in
                progress and `supersede` is false.
            ConflictError: `expected_target_etag` does not match.
        """
        response = await self._call(
            self._deployment_service.CreateDeployment,
            dpb.CreateDeploymentRequest(
                program=convert.short_name("programs", name),
                version=version,
                environment=convert.short_name("environments", environment),
                strategy=convert.strategy(strategy, canary_percent, pause),
                reason=reason,
                request_id=convert.request_id(),
                expected_target_etag=expected_target_etag,
                supersede=supersede,
                allow_breaking=allow_breaking,
            ),
            dpb.CreateDeploymentResponse,
        )
        return response.deployment

    async def get_deployment(self, deployment_id: str) -> dpb.Deployment:
        """One deployment with its timeline (GetDeployment).

        Args:
            deployment_id: The deployment, its id or `deployments/<id>`.

        Returns:
            The deployment.

        Raises:
            NotFoundError: No such deployment.
        """
        response = await self._call(
            self._deployment_service.GetDeployment,
            dpb.GetDeploymentRequest(name=convert.full_name("deployments", deployment_id)),
            dpb.GetDeploymentResponse,
        )
        return response.deployment

    async def list_deployments(
        self,
        name: str = "",
        environment: str = "",
        *,
        states: Iterable[str | int] = (),
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        page_size: int = 0,
    ) -> AsyncIterator[dpb.Deployment]:
        """Deployments, newest first (ListDeployments), fetched a page at a time.

        Args:
            name: Only those of this program (empty: every program).
            environment: Only those to this environment (empty: every environment).
            states: Only those in these states ("in_progress", "succeeded" ...).
            start_time: Only those created at or after it.
            end_time: Only those created before it.
            page_size: Deployments per page (0: the server's default).

        Returns:
            An async iterator of the deployments.

        Raises:
            InvalidArgumentError: A negative `page_size` or a time range that ends before it starts.
        """
        request = dpb.ListDeploymentsRequest(
            program=convert.short_name("programs", name),
            environment=convert.short_name("environments", environment),
            states=convert.enums(dpb.DeploymentState, "DEPLOYMENT_STATE_", states),  # type: ignore[arg-type]
            start_time=convert.timestamp(start_time),
            end_time=convert.timestamp(end_time),
            page_size=page_size,
        )
        async for item in self._pages(
            self._deployment_service.ListDeployments, request, dpb.ListDeploymentsResponse, "deployments"
        ):
            yield item

    async def approve_deployment(
        self, deployment_id: str, *, comment: str = "", reject: bool = False, etag: str = ""
    ) -> dpb.Deployment:
        """Approves a deployment pending approval, or rejects it, ending it ABORTED (ApproveDeployment).

        Enough approvals start it. The approver must not be the principal that requested it.

        Args:
            deployment_id: The deployment, its id or `deployments/<id>`.
            comment: Kept with the approval.
            reject: Reject instead.
            etag: The deployment's etag as last read: the call fails if it changed since.

        Returns:
            The deployment, started once approved enough.

        Raises:
            NotFoundError: No such deployment.
            FailedPreconditionError: It is not PENDING_APPROVAL, the caller requested it, or the
                caller already decided.
            ConflictError: `etag` does not match.
        """
        response = await self._call(
            self._deployment_service.ApproveDeployment,
            dpb.ApproveDeploymentRequest(
                name=convert.full_name("deployments", deployment_id),
                comment=comment,
                reject=reject,
                etag=etag,
                request_id=convert.request_id(),
            ),
            dpb.ApproveDeploymentResponse,
        )
        return response.deployment

    async def promote_version(
        self,
        name: str,
        version: str,
        target_environment: str,
        *,
        strategy: StrategyArgument = None,
        reason: str = "",
    ) -> dpb.Deployment:
        """Puts `version` into `target_environment` (DSPy.rb's VersionManager#promote_version).

        The same as `create_deployment` with the environment's own strategy unless one is given.
        To advance a deployment already in progress, use `promote_deployment`.

        Args:
            name: The program, short or `programs/...`.
            version: The version to promote.
            target_environment: The environment, short or `environments/...`.
            strategy: As `create_deployment`'s.
            reason: Why, kept in the deployment's timeline.

        Returns:
            The deployment.

        Raises:
            InvalidArgumentError: As `create_deployment`.
            NotFoundError: The program version or the environment does not exist.
            FailedPreconditionError: The environment's policy refuses the version (saying why), or
                another deployment of the target is in progress.
        """
        return await self.create_deployment(
            name, version, target_environment, strategy=strategy, reason=reason
        )

    async def promote_deployment(
        self, deployment_id: str, *, full: bool = False, reason: str = "", etag: str = ""
    ) -> dpb.Deployment:
        """Advances a deployment now: the next canary step (all of them with `full`), or the blue-green
        switch; resumes a paused one (PromoteDeployment).

        Args:
            deployment_id: The deployment, its id or `deployments/<id>`.
            full: Go all the way: the candidate becomes stable now.
            reason: Why, kept in the deployment's timeline.
            etag: The deployment's etag as last read: the call fails if it changed since.

        Returns:
            The deployment after the step.

        Raises:
            NotFoundError: No such deployment.
            FailedPreconditionError: It is not IN_PROGRESS.
            ConflictError: `etag` does not match.
        """
        response = await self._call(
            self._deployment_service.PromoteDeployment,
            dpb.PromoteDeploymentRequest(
                name=convert.full_name("deployments", deployment_id),
                full=full,
                reason=reason,
                etag=etag,
                request_id=convert.request_id(),
            ),
            dpb.PromoteDeploymentResponse,
        )
        return response.deployment

    async def abort_deployment(
        self, deployment_id: str, *, reason: str = "", etag: str = ""
    ) -> dpb.Deployment:
        """Ends a pending or in-progress deployment ABORTED; the stable version stays (AbortDeployment).

        Args:
            deployment_id: The deployment, its id or `deployments/<id>`.
            reason: Why, kept in the deployment's timeline.
            etag: The deployment's etag as last read: the call fails if it changed since.

        Returns:
            The deployment, ABORTED.

        Raises:
            NotFoundError: No such deployment.
            FailedPreconditionError: It has already ended.
            ConflictError: `etag` does not match.
        """
        response = await self._call(
            self._deployment_service.AbortDeployment,
            dpb.AbortDeploymentRequest(
                name=convert.full_name("deployments", deployment_id),
                reason=reason,
                etag=etag,
                request_id=convert.request_id(),
            ),
            dpb.AbortDeploymentResponse,
        )
        return response.deployment

    async def rollback_deployment(self, deployment_id: str, *, reason: str = "", etag: str = "") -> Rollback:
        """Deploys the target's previous version at once (REPLACE) and marks this deployment
        ROLLED_BACK (RollbackDeployment).

        Args:
            deployment_id: The deployment, its id or `deployments/<id>`.
            reason: Why, kept in both deployments' timelines.
            etag: The deployment's etag as last read: the call fails if it changed since.

        Returns:
            A `Rollback`: `.deployment` the new rollback deployment, `.rolled_back` this one.

        Raises:
            NotFoundError: No such deployment.
            FailedPreconditionError: There is no previous version, the environment does not allow
                rollbacks, or the deployment is not the target's current one (e.g. already rolled back).
            ConflictError: `etag` does not match.
        """
        response = await self._call(
            self._deployment_service.RollbackDeployment,
            dpb.RollbackDeploymentRequest(
                name=convert.full_name("deployments", deployment_id),
                reason=reason,
                etag=etag,
                request_id=convert.request_id(),
            ),
            dpb.RollbackDeploymentResponse,
        )
        return Rollback(deployment=response.deployment, rolled_back=response.rolled_back)

    async def report_version_check(
        self,
        name: str,
        version: str,
        check: str,
        *,
        state: str | int,
        details_url: str = "",
        summary: str = "",
    ) -> dpb.VersionCheck:
        """Reports CI's result of one check of a program version (ReportVersionCheck): what an
        environment's `required_checks` wait for. Needs the `check` action on the program.

        Args:
            name: The program, short or `programs/...`.
            version: The version tested (never `latest`).
            check: The check's name, e.g. `integration_tests`.
            state: "passed", "failed" or "running" (or CHECK_STATE_*).
            details_url: Where a person reads the run (http or https).
            summary: What the run found, in a line.

        Returns:
            The check as recorded.

        Raises:
            InvalidArgumentError: A bad version, check name, state, URL or summary.
            NotFoundError: No such version.
        """
        response = await self._call(
            self._deployment_service.ReportVersionCheck,
            dpb.ReportVersionCheckRequest(
                program_version=f"{convert.full_name('programs', name)}/versions/{version}",
                check=check,
                state=convert.enum(dpb.CheckState, "CHECK_STATE_", state),  # type: ignore[arg-type]
                details_url=details_url,
                summary=summary,
                request_id=convert.request_id(),
            ),
            dpb.ReportVersionCheckResponse,
        )
        return response.check

    async def get_deployment_status(self, name: str, environment: str) -> dpb.GetDeploymentStatusResponse:
        """A target's status (GetDeploymentStatus).

        Args:
            name: The program, short or `programs/...`.
            environment: The environment, short or `environments/...`.

        Returns:
            The response: `.target` (stable and candidate), `.current_deployment`, `.verdict` and
            `.health` per serving version against the thresholds, and `.sidecars` with what each runs.

        Raises:
            NotFoundError: No such program or environment.
        """
        return await self._call(
            self._deployment_service.GetDeploymentStatus,
            dpb.GetDeploymentStatusRequest(
                program=convert.short_name("programs", name),
                environment=convert.short_name("environments", environment),
            ),
            dpb.GetDeploymentStatusResponse,
        )

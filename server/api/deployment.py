"""DeploymentService: environments, deployments, watches, sidecar reports, metrics and webhooks (a mixin).

Thin: each method turns the request into domain values (field violations
named by path), asks a use case, and turns the answer back into protos.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

from dspy_registry.v1 import deployment_pb2 as pb

from ..calls import serving
from ..domain import checks as checking
from ..domain import deployments as dep
from ..domain import environments as envs
from ..domain import sidecars
from ..domain.access import Action
from ..domain.environments import Environment
from ..domain.names import VersionRef, check_name, check_text, parse_version_ref
from ..errors import InvalidArgument, PermissionDenied, ResourceExhausted, Violations, quote
from ..usecases.checks import CheckReport, Checks
from ..usecases.deployments import DeploymentRequest, Deployments
from ..usecases.environments import Environments
from ..usecases.metrics import Metrics
from ..usecases.sidecars import Sidecars
from ..usecases.webhooks import Webhooks
from .context import Context
from .convert.common import duration, seconds, short, time_field
from .convert.deployment import (
    applied_from_proto,
    deployment_proto,
    environment_from_proto,
    environment_proto,
    sidecar_proto,
    strategy_from_proto,
    target_proto,
    version_check_proto,
    version_health_proto,
    window_from_proto,
)
from .guard import Guard, identity
from .mutations import answer, idempotency
from .watch import EventWatch, TargetWatch
from .webhooks import WebhookMethods

MAX_WINDOWS = 1000  # metric windows in one ReportMetrics call


def _reported(c: checking.VersionCheck) -> pb.ReportVersionCheckResponse:
    return pb.ReportVersionCheckResponse(check=version_check_proto(c))


def _environment_name(value: str, field: str) -> str:
    parts = value.split("/")
    if len(parts) == 2 and parts[0] == "environments":
        return check_name(parts[1], field)
    raise InvalidArgument.one(field, f"{quote(value)} must look like environments/{{environment}}")


def _updated(e: Environment) -> pb.UpdateEnvironmentResponse:
    return pb.UpdateEnvironmentResponse(environment=environment_proto(e))


class DeploymentServicer(WebhookMethods):
    def __init__(
        self,
        environments: Environments,
        deployments: Deployments,
        guard: Guard,
        watch: TargetWatch,
        events: EventWatch,
        sidecars_: Sidecars,
        metrics: Metrics,
        webhooks_: Webhooks,
        checks: Checks | None = None,
        leader: Callable[[], str] = lambda: "",
    ) -> None:
        """`leader`: the name of the replica that leads now (server/leader.py)."""
        self.leader = leader
        self.checks = checks or Checks(deployments.store, deployments)
        self.webhooks = webhooks_
        self.metrics = metrics
        self.environments = environments
        self.deployments = deployments
        self.sidecars = sidecars_
        self.guard = guard
        self.watch = watch
        self.events = events

    def WatchTargets(self, request: pb.WatchTargetsRequest, context: Context) -> AsyncIterator[bytes]:
        return self.watch.stream(request)  # not re-yielded: a generator layer costs on every message

    def WatchEvents(self, request: pb.WatchEventsRequest, context: Context) -> AsyncIterator[bytes]:
        # Not a generator either: a bad kind raises here, where the stream's handler maps it as it
        # maps one raised by the first message.
        kinds = set()
        for kind in request.kinds:
            try:
                kinds.add(pb.DeploymentEventKind.Name(kind).removeprefix("DEPLOYMENT_EVENT_KIND_").lower())
            except ValueError:
                raise InvalidArgument.one("kinds", f"unknown event kind {kind}") from None
        return self.events.stream(request, frozenset(kinds))  # not re-yielded, as WatchTargets

    async def _deployment(self, name: str, action: Action) -> dep.Deployment:
        """The deployment `name` names, once the caller may do `action` on its program."""
        parts = name.split("/")
        if len(parts) != 2 or parts[0] != "deployments" or not parts[1].isalnum() or len(parts[1]) > 64:
            raise InvalidArgument.one("name", f"{quote(name)} must look like deployments/{{deployment}}")
        d = await self.deployments.get(parts[1])
        try:
            await self.guard.authorize_resource(action, [d.program])
        except PermissionDenied as denied:  # say what was asked for, not which program it is
            raise PermissionDenied(denied.principal, denied.action, d.resource_name) from None
        return d

    async def CreateDeployment(
        self, request: pb.CreateDeploymentRequest, context: Context
    ) -> pb.CreateDeploymentResponse:
        v = Violations()
        program = short(request.program, "programs")
        v.collect(lambda: check_name(program, "program"))
        environment = short(request.environment, "environments")
        v.collect(lambda: check_name(environment, "environment"))
        if not request.version:
            v.add("version", "name a version, or latest")
        v.collect(lambda: check_text(request.reason, "reason", 1024))
        strategy = None
        if request.HasField("strategy"):
            if not request.strategy.strategy:
                v.add(
                    "strategy.strategy",
                    "name the strategy, or leave strategy out for the environment's default",
                )
            else:

                def strategy(base: envs.StrategySpec) -> envs.StrategySpec:
                    # What the request leaves out comes from the environment's default.
                    merged = strategy_from_proto(request.strategy, base, "strategy")
                    envs.validate_strategy(merged, "strategy").raise_if_any()
                    return merged

        v.raise_if_any()
        draft = DeploymentRequest(
            program=program,
            version=request.version,
            environment=environment,
            strategy=strategy,
            reason=request.reason,
            expected_target_etag=request.expected_target_etag,
            supersede=request.supersede,
            allow_breaking=request.allow_breaking,
        )
        result = await self.deployments.create(
            serving(), draft, idempotency(request, "CreateDeployment", _created)
        )
        return answer(result, pb.CreateDeploymentResponse, _created)

    async def GetDeployment(
        self, request: pb.GetDeploymentRequest, context: Context
    ) -> pb.GetDeploymentResponse:
        return pb.GetDeploymentResponse(
            deployment=deployment_proto(await self._deployment(request.name, Action.READ))
        )

    async def ListDeployments(
        self, request: pb.ListDeploymentsRequest, context: Context
    ) -> pb.ListDeploymentsResponse:
        try:
            states = tuple(dep.State(s) for s in request.states)
        except ValueError:
            raise InvalidArgument.one("states", "known deployment states only") from None
        program = short(request.program, "programs")
        if program:
            check_name(program, "program")
        environment = short(request.environment, "environments")
        if environment:
            check_name(environment, "environment")
        page = await self.deployments.list(
            program,
            environment,
            states,
            time_field(request, "start_time"),
            time_field(request, "end_time"),
            await self.guard.readable(identity()),
            request.page_size,
            request.page_token,
        )
        return pb.ListDeploymentsResponse(
            deployments=[deployment_proto(d) for d in page.items],
            next_page_token=page.next_page_token,
            total_size=page.total_size,
        )

    async def ApproveDeployment(
        self, request: pb.ApproveDeploymentRequest, context: Context
    ) -> pb.ApproveDeploymentResponse:
        d = await self._deployment(request.name, Action.APPROVE)
        check_text(request.comment, "comment", 1024)
        idem = idempotency(request, "ApproveDeployment", _approved)
        result = await self.deployments.approve(
            serving(), d.id, request.comment, request.reject, request.etag, idem
        )
        return answer(result, pb.ApproveDeploymentResponse, _approved)

    async def PromoteDeployment(
        self, request: pb.PromoteDeploymentRequest, context: Context
    ) -> pb.PromoteDeploymentResponse:
        d = await self._deployment(request.name, Action.DEPLOY)
        check_text(request.reason, "reason", 1024)

        def act(
            x: dep.Deployment, t: dep.Target, now: datetime, actor: str
        ) -> tuple[dep.Deployment, dep.Target]:
            return dep.promote(x, t, now, actor, request.full, request.reason)

        idem = idempotency(request, "PromoteDeployment", _promoted)
        return answer(
            await self.deployments.change(serving(), d.id, request.etag, idem, act),
            pb.PromoteDeploymentResponse,
            _promoted,
        )

    async def AbortDeployment(
        self, request: pb.AbortDeploymentRequest, context: Context
    ) -> pb.AbortDeploymentResponse:
        d = await self._deployment(request.name, Action.DEPLOY)
        check_text(request.reason, "reason", 1024)

        def act(
            x: dep.Deployment, t: dep.Target, now: datetime, actor: str
        ) -> tuple[dep.Deployment, dep.Target]:
            return dep.abort(x, t, now, actor, request.reason or "aborted")

        idem = idempotency(request, "AbortDeployment", _aborted)
        return answer(
            await self.deployments.change(serving(), d.id, request.etag, idem, act),
            pb.AbortDeploymentResponse,
            _aborted,
        )

    async def RollbackDeployment(
        self, request: pb.RollbackDeploymentRequest, context: Context
    ) -> pb.RollbackDeploymentResponse:
        d = await self._deployment(request.name, Action.ROLLBACK)
        check_text(request.reason, "reason", 1024)
        idem = idempotency(request, "RollbackDeployment", _rolled_back)
        result = await self.deployments.rollback(
            serving(), d.id, request.reason or "rollback", request.etag, idem
        )
        return answer(result, pb.RollbackDeploymentResponse, _rolled_back)

    async def GetDeploymentStatus(
        self, request: pb.GetDeploymentStatusRequest, context: Context
    ) -> pb.GetDeploymentStatusResponse:
        program = check_name(short(request.program, "programs"), "program")
        environment = check_name(short(request.environment, "environments"), "environment")
        status = await self.deployments.status(program, environment)
        out = pb.GetDeploymentStatusResponse(leader=self.leader())
        if status.target is not None:
            out.target.CopyFrom(target_proto(status.target))
            out.revision = status.target.revision
        if status.deployment is not None:
            out.current_deployment.CopyFrom(deployment_proto(status.deployment))
        if status.assessment is not None:
            out.verdict = int(status.assessment.verdict)  # type: ignore[assignment]
            for assessed in status.assessment.versions:
                out.health.append(version_health_proto(assessed, status.assessment))
        for r in await self.sidecars.serving(program, environment):
            out.sidecars.append(sidecar_proto(r, program, environment))
        return out

    async def ReportMetrics(
        self, request: pb.ReportMetricsRequest, context: Context
    ) -> pb.ReportMetricsResponse:
        v = Violations()
        if not sidecars.SIDECAR_ID_RE.match(request.sidecar_id):
            v.add("sidecar_id", "must be lowercase letters, digits, '.', '_' or '-' (a pod or host name)")
        if len(request.windows) > MAX_WINDOWS:
            raise ResourceExhausted("metric_windows_per_call", f"at most {MAX_WINDOWS} windows per call")
        windows = [
            window_from_proto(request.sidecar_id, w, f"windows[{i}]", v)
            for i, w in enumerate(request.windows)
        ]
        v.raise_if_any()
        # Measurements decide rollbacks: `rollback` on each program reported (permissions.py).
        await self.guard.authorize_resource(Action.ROLLBACK, sorted({w.program for w in windows}))
        accepted, dropped = await self.metrics.report(serving(), request.sidecar_id, identity().name, windows)
        return pb.ReportMetricsResponse(accepted_count=accepted, dropped_count=dropped)

    async def ReportVersionCheck(
        self, request: pb.ReportVersionCheckRequest, context: Context
    ) -> pb.ReportVersionCheckResponse:
        refs: list[VersionRef] = []
        v = Violations()
        v.collect(
            lambda: refs.append(parse_version_ref(request.program_version, "programs", "program_version"))
        )
        v.items += checking.validate_report(
            request.check, request.state, request.details_url, request.summary
        ).items
        v.raise_if_any()
        (ref,) = refs
        if ref.is_latest:
            raise InvalidArgument.one("program_version", "name the version CI tested, not `latest`")
        report = CheckReport(
            program=ref.name,
            version=ref.version,
            check=request.check,
            state=checking.CheckState(request.state),
            details_url=request.details_url,
            summary=request.summary,
        )
        idem = idempotency(request, "ReportVersionCheck", _reported)
        result = await self.checks.report(serving(), report, idem)
        return answer(result, pb.ReportVersionCheckResponse, _reported)

    async def ReportSidecarStatus(
        self, request: pb.ReportSidecarStatusRequest, context: Context
    ) -> pb.ReportSidecarStatusResponse:
        who = identity().name
        now = self.sidecars.clock.now()  # the same clock that later judges liveness
        heartbeat = sidecars.heartbeat_for(seconds(request.heartbeat_interval))
        report = sidecars.Report(
            sidecar_id=request.sidecar_id,
            principal=who,
            targets=tuple(applied_from_proto(t) for t in request.targets),
            heartbeat_seconds=heartbeat,
            time=now,
            revision=request.revision,
        )
        v = Violations()
        sidecars.validate(report, v)
        v.raise_if_any()
        # Saying what runs where is a read's worth of trust: read on each program reported.
        await self.guard.authorize_resource(Action.READ, sorted({a.program for a in report.targets}))
        if request.leaving:
            revision = await self.sidecars.leave(serving(), report.sidecar_id, who)
        else:
            revision = await self.sidecars.report(serving(), report)
        return pb.ReportSidecarStatusResponse(heartbeat_interval=duration(heartbeat), revision=revision)

    async def ListEnvironments(
        self, request: pb.ListEnvironmentsRequest, context: Context
    ) -> pb.ListEnvironmentsResponse:
        page = await self.environments.list(request.page_size, request.page_token)
        return pb.ListEnvironmentsResponse(
            environments=[environment_proto(e) for e in page.items],
            next_page_token=page.next_page_token,
            total_size=page.total_size,
        )

    async def GetEnvironment(
        self, request: pb.GetEnvironmentRequest, context: Context
    ) -> pb.GetEnvironmentResponse:
        name = _environment_name(request.name, "name")
        return pb.GetEnvironmentResponse(environment=environment_proto(await self.environments.get(name)))

    async def UpdateEnvironment(
        self, request: pb.UpdateEnvironmentRequest, context: Context
    ) -> pb.UpdateEnvironmentResponse:
        name = _environment_name(request.environment.name, "environment.name")
        paths = list(request.update_mask.paths)
        for path in paths:
            if not _mask_path_ok(path):
                raise InvalidArgument.one("update_mask", f"{quote(path)} is not a field of Environment")

        def change(current: Environment | None) -> Environment:
            if current is None or not paths:  # no mask: the request states the whole environment
                return environment_from_proto(request.environment, name)
            merged = environment_proto(current)
            request.update_mask.MergeMessage(request.environment, merged, True, True)
            return environment_from_proto(merged, name)

        idem = idempotency(request, "UpdateEnvironment", _updated)
        result = await self.environments.update(
            serving(), name, change, request.etag, request.allow_missing, idem
        )
        return answer(result, pb.UpdateEnvironmentResponse, _updated)


def _mask_path_ok(path: str) -> bool:
    """A path of singular fields into Environment; a list or map may only end it."""
    message: Any = pb.Environment.DESCRIPTOR
    parts = path.split(".")
    for i, part in enumerate(parts):
        if message is None or part not in message.fields_by_name:
            return False
        field = message.fields_by_name[part]
        if message is pb.Environment.DESCRIPTOR and part in (
            "name",
            "create_time",
            "update_time",
            "revision",
            "etag",
        ):
            return False  # output only, or the identity
        if field.is_repeated and i < len(parts) - 1:
            return False
        message = field.message_type
    return True


def _created(d: dep.Deployment) -> pb.CreateDeploymentResponse:
    return pb.CreateDeploymentResponse(deployment=deployment_proto(d))


def _approved(d: dep.Deployment) -> pb.ApproveDeploymentResponse:
    return pb.ApproveDeploymentResponse(deployment=deployment_proto(d))


def _promoted(d: dep.Deployment) -> pb.PromoteDeploymentResponse:
    return pb.PromoteDeploymentResponse(deployment=deployment_proto(d))


def _aborted(d: dep.Deployment) -> pb.AbortDeploymentResponse:
    return pb.AbortDeploymentResponse(deployment=deployment_proto(d))


def _rolled_back(pair: tuple[dep.Deployment, dep.Deployment]) -> pb.RollbackDeploymentResponse:
    return pb.RollbackDeploymentResponse(
        deployment=deployment_proto(pair[0]), rolled_back=deployment_proto(pair[1])
    )

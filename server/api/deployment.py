"""DeploymentService: environments, deployments, watches, sidecar reports, metrics and webhooks (a mixin).

Thin: each method turns the request into domain values (field violations
named by path), asks a use case, and turns the answer back into protos.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from google.protobuf import duration_pb2

from dspy_registry.v1 import deployment_pb2 as pb

from ..calls import serving
from ..domain import deployments as dep
from ..domain import environments as envs
from ..domain import health, sidecars, versions
from ..domain.access import Action, principal_name
from ..domain.environments import Environment
from ..domain.names import check_name, check_text
from ..errors import InvalidArgument, PermissionDenied, ResourceExhausted, Violations, quote
from ..usecases.deployments import DeploymentRequest, Deployments
from ..usecases.environments import Environments
from ..usecases.metrics import Assessed, Assessment, Metrics
from ..usecases.sidecars import Sidecars
from ..usecases.webhooks import Webhooks
from .context import Context
from .convert import time_field, timestamp
from .guard import Guard, identity
from .mutations import answer, idempotency
from .watch import EventWatch, TargetWatch, pinned_proto, target_proto
from .webhooks import WebhookMethods


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def _seconds(d: duration_pb2.Duration) -> float:
    return d.ToNanoseconds() / 1e9


def strategy_proto(s: envs.StrategySpec) -> pb.DeploymentStrategy:
    out = pb.DeploymentStrategy(strategy=int(s.strategy))  # type: ignore[arg-type]
    for step in s.canary_steps:
        out.canary.steps.add(weight_percent=step.weight_percent, pause=_duration(step.pause_seconds))
    if s.step_deadline_seconds:
        out.canary.step_deadline.CopyFrom(_duration(s.step_deadline_seconds))
    out.blue_green.auto_promote = s.auto_promote
    out.blue_green.promote_delay.CopyFrom(_duration(s.promote_delay_seconds))
    out.blue_green.min_ack_percent = s.min_ack_percent
    out.blue_green.ack_timeout.CopyFrom(_duration(s.ack_timeout_seconds))
    return out


def strategy_from_proto(m: pb.DeploymentStrategy, base: envs.StrategySpec, path: str) -> envs.StrategySpec:
    """A strategy from a request; what it leaves out comes from `base` (the environment's default)."""
    try:
        kind = envs.Strategy(m.strategy) if m.strategy else base.strategy
    except ValueError:
        raise InvalidArgument.one(f"{path}.strategy", "REPLACE, BLUE_GREEN or CANARY") from None
    steps = (
        tuple(envs.CanaryStep(s.weight_percent, _seconds(s.pause)) for s in m.canary.steps)
        if m.HasField("canary") and m.canary.steps
        else base.canary_steps
    )
    blue_green = m.blue_green if m.HasField("blue_green") else None
    return envs.StrategySpec(
        strategy=kind,
        canary_steps=steps,
        step_deadline_seconds=_seconds(m.canary.step_deadline)
        if m.canary.HasField("step_deadline")
        else base.step_deadline_seconds,
        auto_promote=blue_green.auto_promote if blue_green is not None else base.auto_promote,
        promote_delay_seconds=_seconds(blue_green.promote_delay)
        if blue_green is not None
        else base.promote_delay_seconds,
        min_ack_percent=(
            blue_green.min_ack_percent
            if blue_green is not None and blue_green.HasField("min_ack_percent")
            else base.min_ack_percent
        ),
        ack_timeout_seconds=(
            _seconds(blue_green.ack_timeout)
            if blue_green is not None and blue_green.HasField("ack_timeout")
            else base.ack_timeout_seconds
        ),
    )


def environment_proto(e: Environment) -> pb.Environment:
    p = e.policy
    t = p.auto_rollback
    out = pb.Environment(
        name=e.resource_name,
        description=e.description,
        position=e.position,
        policy=pb.EnvironmentPolicy(
            auto_deploy=p.auto_deploy,
            validation_required=p.validation_required,
            validation=pb.ValidationPolicy(
                min_metrics=p.validation.min_metrics,
                max_metrics=p.validation.max_metrics,
                required_metadata_keys=list(p.validation.required_metadata_keys),
                require_compatible_signature=p.validation.require_compatible_signature,
            ),
            approval_required=p.approval_required,
            required_approvals=p.required_approvals,
            rollback_enabled=p.rollback_enabled,
            monitoring_required=p.monitoring_required,
            required_predecessors=list(p.required_predecessors),
            default_strategy=strategy_proto(p.default_strategy),
            auto_rollback=pb.AutoRollbackPolicy(
                enabled=t.enabled,
                error_rate=t.error_rate,
                latency_p95_ms=t.latency_p95_ms,
                accuracy_drop=t.accuracy_drop,
                monitoring_window=_duration(t.monitoring_window_seconds),
                min_requests=t.min_requests,
                analysis_interval=_duration(t.analysis_interval_seconds),
            ),
        ),
        revision=e.revision,
        etag=e.etag,
    )
    if e.create_time is not None:
        out.create_time.CopyFrom(timestamp(e.create_time))
    if e.update_time is not None:
        out.update_time.CopyFrom(timestamp(e.update_time))
    return out


def environment_from_proto(m: pb.Environment, name: str) -> Environment:
    """The definition a request states; unset thresholds take the defaults (environments.Thresholds)."""
    p, t = m.policy, m.policy.auto_rollback
    base = envs.Thresholds()

    def optional(field: str, default: Any) -> Any:
        return getattr(t, field) if t.HasField(field) else default

    policy = envs.Policy(
        auto_deploy=p.auto_deploy,
        validation_required=p.validation_required,
        validation=envs.Validation(
            min_metrics=dict(p.validation.min_metrics),
            max_metrics=dict(p.validation.max_metrics),
            required_metadata_keys=tuple(p.validation.required_metadata_keys),
            require_compatible_signature=p.validation.require_compatible_signature,
        ),
        approval_required=p.approval_required,
        required_approvals=p.required_approvals,
        rollback_enabled=p.rollback_enabled,
        monitoring_required=p.monitoring_required,
        required_predecessors=tuple(p.required_predecessors),
        default_strategy=strategy_from_proto(
            p.default_strategy, envs.StrategySpec(), "environment.policy.default_strategy"
        ),
        auto_rollback=envs.Thresholds(
            enabled=t.enabled if p.HasField("auto_rollback") else base.enabled,
            error_rate=optional("error_rate", base.error_rate),
            latency_p95_ms=optional("latency_p95_ms", base.latency_p95_ms),
            accuracy_drop=optional("accuracy_drop", base.accuracy_drop),
            monitoring_window_seconds=_seconds(t.monitoring_window)
            if t.HasField("monitoring_window")
            else base.monitoring_window_seconds,
            min_requests=optional("min_requests", base.min_requests),
            analysis_interval_seconds=_seconds(t.analysis_interval)
            if t.HasField("analysis_interval")
            else base.analysis_interval_seconds,
        ),
    )
    return Environment(name, m.description, m.position, policy)


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
    ) -> None:
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

    async def WatchEvents(self, request: pb.WatchEventsRequest, context: Context) -> AsyncIterator[bytes]:
        kinds = set()
        for kind in request.kinds:
            try:
                kinds.add(pb.DeploymentEventKind.Name(kind).removeprefix("DEPLOYMENT_EVENT_KIND_").lower())
            except ValueError:
                raise InvalidArgument.one("kinds", f"unknown event kind {kind}") from None
        async for message in self.events.stream(request, frozenset(kinds)):
            yield message

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
        program = _short(request.program, "programs")
        v.collect(lambda: check_name(program, "program"))
        environment = _short(request.environment, "environments")
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
            program, request.version, environment, strategy, request.reason, request.expected_target_etag,
            request.supersede, request.allow_breaking,
        )  # fmt: skip
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
        program = _short(request.program, "programs")
        if program:
            check_name(program, "program")
        environment = _short(request.environment, "environments")
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
        program = check_name(_short(request.program, "programs"), "program")
        environment = check_name(_short(request.environment, "environments"), "environment")
        status = await self.deployments.status(program, environment)
        out = pb.GetDeploymentStatusResponse()
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
        windows = [_window(request.sidecar_id, w, f"windows[{i}]", v) for i, w in enumerate(request.windows)]
        v.raise_if_any()
        # Measurements decide rollbacks: `rollback` on each program reported (permissions.py).
        await self.guard.authorize_resource(Action.ROLLBACK, sorted({w.program for w in windows}))
        accepted, dropped = await self.metrics.report(serving(), request.sidecar_id, identity().name, windows)
        return pb.ReportMetricsResponse(accepted_count=accepted, dropped_count=dropped)

    async def ReportSidecarStatus(
        self, request: pb.ReportSidecarStatusRequest, context: Context
    ) -> pb.ReportSidecarStatusResponse:
        who = identity().name
        now = self.sidecars.clock.now()  # the same clock that later judges liveness
        heartbeat = sidecars.heartbeat_for(_seconds(request.heartbeat_interval))
        report = sidecars.Report(
            request.sidecar_id, who, tuple(_applied(t) for t in request.targets), heartbeat, now,
            request.revision,
        )  # fmt: skip
        v = Violations()
        sidecars.validate(report, v)
        v.raise_if_any()
        # Saying what runs where is a read's worth of trust: read on each program reported.
        await self.guard.authorize_resource(Action.READ, sorted({a.program for a in report.targets}))
        if request.leaving:
            revision = await self.sidecars.leave(serving(), report.sidecar_id, who)
        else:
            revision = await self.sidecars.report(serving(), report)
        return pb.ReportSidecarStatusResponse(heartbeat_interval=_duration(heartbeat), revision=revision)

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


# -- deployments ---------------------------------------------------------------------------------


def _ref(deployment_id: str) -> str:
    return f"deployments/{deployment_id}" if deployment_id else ""


def deployment_proto(d: dep.Deployment) -> pb.Deployment:
    out = pb.Deployment(
        name=d.resource_name,
        program=d.program,
        environment=d.environment,
        version=d.version,
        digest=d.digest,
        strategy=strategy_proto(d.strategy),
        state=int(d.state),  # type: ignore[arg-type]
        current_step=d.steps_applied,
        step_count=d.step_count,
        weight_percent=d.weight_percent,
        paused=d.paused,
        pause_reason=d.pause_reason,
        reason=d.reason,
        creator=principal_name(d.creator),
        approvals=[
            pb.Approval(
                principal=principal_name(a.principal),
                rejected=a.rejected,
                comment=a.comment,
                time=timestamp(a.time),
            )
            for a in d.approvals
        ],
        required_approvals=d.required_approvals,
        replaced_deployment=_ref(d.replaced),
        rolled_back_deployment=_ref(d.rollback_of),
        rollback_deployment=_ref(d.rolled_back_by),
        superseded_by=_ref(d.superseded_by),
        supersede=d.supersede,
        allow_breaking=d.allow_breaking,
        auto_deployed=d.auto_deployed,
        timeline=[
            pb.DeploymentTransition(
                kind=int(e.kind),  # type: ignore[arg-type]
                state=int(e.state),  # type: ignore[arg-type]
                step=e.step,
                actor=principal_name(e.actor),
                time=timestamp(e.time),
                reason=e.reason,
                revision=e.revision,
            )
            for e in d.timeline
        ],
        create_time=timestamp(d.create_time),
        revision=d.revision,
        etag=d.etag,
    )
    if d.previous_stable:
        out.previous_stable.CopyFrom(pinned_proto(d.previous_stable))
    for field, value in (
        ("step_start_time", d.step_start_time),
        ("next_step_time", d.next_step_time),
        ("update_time", d.update_time),
        ("end_time", d.end_time),
    ):
        if value is not None:
            getattr(out, field).CopyFrom(timestamp(value))
    return out


def _short(value: str, collection: str) -> str:
    """`programs/x` or `x` -> `x`."""
    prefix = collection + "/"
    return value[len(prefix) :] if value.startswith(prefix) else value


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


_ACKED = {pb.APPLY_RESULT_ACK: True, pb.APPLY_RESULT_NACK: False}


MAX_WINDOWS = 1000


def _window(sidecar_id: str, m: pb.MetricWindow, at: str, v: Violations) -> health.Window:
    program = _short(m.program, "programs")
    environment = _short(m.environment, "environments")
    v.collect(lambda: check_name(program, f"{at}.program"))
    v.collect(lambda: check_name(environment, f"{at}.environment"))
    v.collect(lambda: versions.parse(m.version, f"{at}.version"))
    times = []
    for name in ("start_time", "end_time"):
        try:
            when = time_field(m, name, f"{at}.{name}")
        except InvalidArgument as bad:
            v.items += bad.violations
            when = None
        if not m.HasField(name):
            v.add(f"{at}.{name}", "is required")
        times.append(when or datetime.fromtimestamp(0, UTC))  # placeholder: the violations refuse the call
    window = health.Window(
        sidecar_id, program, environment, m.version,
        times[0], times[1],
        m.request_count, m.error_count,
        tuple(m.latency.bounds_ms) or health.STANDARD_BOUNDS_MS, tuple(m.latency.counts), m.latency.sum_ms,
        m.feedback_correct, m.feedback_total,
    )  # fmt: skip
    health.validate_window(window, at, v)
    return window


def version_health_proto(a: Assessed, found: Assessment) -> pb.VersionHealth:
    h = a.health
    totals = h.totals
    out = pb.VersionHealth(
        version=h.version,
        role=_ROLES[a.role],
        verdict=int(h.verdict),  # type: ignore[arg-type]
        request_count=totals.request_count,
        error_count=totals.error_count,
        feedback_correct=totals.feedback_correct,
        feedback_total=totals.feedback_total,
        registered_performance=a.registered,
    )
    out.window_start_time.CopyFrom(timestamp(found.window_start))
    out.window_end_time.CopyFrom(timestamp(found.window_end))
    for name, value in (
        ("error_rate", totals.error_rate),
        ("latency_p95_ms", totals.latency_p95_ms),
        ("accuracy", totals.accuracy),
        ("baseline_accuracy", h.baseline_accuracy),
    ):
        if value is not None:
            setattr(out, name, value)
    for c in h.checks:
        check = out.checks.add(
            metric=c.metric,
            threshold=c.threshold,
            verdict=int(c.verdict),
            message=c.message,
        )
        if c.value is not None:
            check.value = c.value
    return out


_ROLES = {
    "stable": pb.TRAFFIC_ROLE_STABLE,
    "candidate": pb.TRAFFIC_ROLE_CANDIDATE,
    "previous": pb.TRAFFIC_ROLE_PREVIOUS,
}


def _applied(m: pb.SidecarTargetStatus) -> sidecars.Applied:
    return sidecars.Applied(
        _short(m.program, "programs"), _short(m.environment, "environments"), m.version, m.digest,
        _ACKED.get(m.result), m.error_detail.code, m.error_detail.message, m.revision,
        time_field(m, "apply_time"),
    )  # fmt: skip


def sidecar_proto(r: sidecars.Report, program: str, environment: str) -> pb.Sidecar:
    """Sidecar `r` with only its entries for `program` in `environment`."""
    out = pb.Sidecar(
        sidecar_id=r.sidecar_id,
        principal=f"principals/{r.principal}",
        last_report_time=timestamp(r.time),
        heartbeat_interval=_duration(r.heartbeat_seconds),
        revision=r.revision,
    )
    for a in r.targets:
        if a.program != program or a.environment != environment:
            continue
        entry = out.targets.add(
            program=a.program, environment=a.environment, version=a.version, digest=a.digest,
            result=pb.APPLY_RESULT_ACK if a.acked else pb.APPLY_RESULT_NACK, revision=a.revision,
        )  # fmt: skip
        if not a.acked:
            entry.error_detail.code = a.error_code
            entry.error_detail.message = a.error_message
        if a.apply_time is not None:
            entry.apply_time.CopyFrom(timestamp(a.apply_time))
    return out

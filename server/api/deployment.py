"""DeploymentService: environments today; deployments, watches and metrics follow.

RPCs this class does not define answer UNIMPLEMENTED (server/api/pending.py),
after authentication, so that no caller mistakes them for a pretend answer.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import duration_pb2

from dspy_registry.v1 import deployment_pb2 as pb

from ..domain import environments as envs
from ..domain.environments import Environment
from ..domain.names import check_name
from ..errors import InvalidArgument
from ..usecases.environments import Environments
from .context import Context
from .convert import timestamp
from .mutations import answer, idempotency


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
    """The definition a request states; unset thresholds take the seed's defaults."""
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
    raise InvalidArgument.one(field, f"{value!r} must look like environments/{{environment}}")


def _updated(e: Environment) -> pb.UpdateEnvironmentResponse:
    return pb.UpdateEnvironmentResponse(environment=environment_proto(e))


class DeploymentServicer:
    def __init__(self, environments: Environments) -> None:
        self.environments = environments

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
                raise InvalidArgument.one("update_mask", f"{path!r} is not a field of Environment")

        def change(current: Environment | None) -> Environment:
            if current is None or not paths:  # no mask: the request states the whole environment
                return environment_from_proto(request.environment, name)
            merged = environment_proto(current)
            request.update_mask.MergeMessage(request.environment, merged, True, True)
            return environment_from_proto(merged, name)

        idem = idempotency(request, "UpdateEnvironment", _updated)
        result = await self.environments.update(name, change, request.etag, request.allow_missing, idem)
        return answer(result, pb.UpdateEnvironmentResponse, _updated)


def _mask_path_ok(path: str) -> bool:
    message: Any = pb.Environment.DESCRIPTOR
    for part in path.split("."):
        if message is None or part not in message.fields_by_name:
            return False
        field = message.fields_by_name[part]
        if (
            part in ("name", "create_time", "update_time", "revision", "etag")
            and message is pb.Environment.DESCRIPTOR
        ):
            return False  # output only, or the identity
        message = field.message_type
    return True

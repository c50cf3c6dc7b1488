"""DeploymentService's converters: environments and strategies, deployments and targets, sidecars,
metric windows and health, webhooks and their deliveries."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from dspy_registry.v1 import deployment_pb2 as pb

from ...domain import checks as checking
from ...domain import deployments as dep
from ...domain import environments as envs
from ...domain import health, sidecars, versions
from ...domain.access import principal_name
from ...domain.deployments import Pinned, Target
from ...domain.environments import Environment
from ...domain.names import check_name
from ...domain.webhooks import Delivery, DeliveryState, SigningSecret, Webhook
from ...errors import InvalidArgument, Violations
from ...usecases.metrics import Assessed, Assessment
from .common import duration, seconds, short, time_field, timestamp

# -- environments --------------------------------------------------------------------------------


def strategy_proto(s: envs.StrategySpec) -> pb.DeploymentStrategy:
    out = pb.DeploymentStrategy(strategy=int(s.strategy))  # type: ignore[arg-type]
    for step in s.canary_steps:
        out.canary.steps.add(weight_percent=step.weight_percent, pause=duration(step.pause_seconds))
    if s.step_deadline_seconds:
        out.canary.step_deadline.CopyFrom(duration(s.step_deadline_seconds))
    out.blue_green.auto_promote = s.auto_promote
    out.blue_green.promote_delay.CopyFrom(duration(s.promote_delay_seconds))
    out.blue_green.min_ack_percent = s.min_ack_percent
    out.blue_green.ack_timeout.CopyFrom(duration(s.ack_timeout_seconds))
    return out


def strategy_from_proto(m: pb.DeploymentStrategy, base: envs.StrategySpec, path: str) -> envs.StrategySpec:
    """A strategy from a request; what it leaves out comes from `base` (the environment's default)."""
    try:
        kind = envs.Strategy(m.strategy) if m.strategy else base.strategy
    except ValueError:
        raise InvalidArgument.one(f"{path}.strategy", "REPLACE, BLUE_GREEN or CANARY") from None
    steps = (
        tuple(envs.CanaryStep(s.weight_percent, seconds(s.pause)) for s in m.canary.steps)
        if m.HasField("canary") and m.canary.steps
        else base.canary_steps
    )
    blue_green = m.blue_green if m.HasField("blue_green") else None
    return envs.StrategySpec(
        strategy=kind,
        canary_steps=steps,
        step_deadline_seconds=seconds(m.canary.step_deadline)
        if m.canary.HasField("step_deadline")
        else base.step_deadline_seconds,
        auto_promote=blue_green.auto_promote if blue_green is not None else base.auto_promote,
        promote_delay_seconds=seconds(blue_green.promote_delay)
        if blue_green is not None
        else base.promote_delay_seconds,
        min_ack_percent=(
            blue_green.min_ack_percent
            if blue_green is not None and blue_green.HasField("min_ack_percent")
            else base.min_ack_percent
        ),
        ack_timeout_seconds=(
            seconds(blue_green.ack_timeout)
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
            required_checks=list(p.required_checks),
            on_missing_checks=int(p.on_missing_checks),  # type: ignore[arg-type]
            capacity=p.capacity,
            auto_rollback=pb.AutoRollbackPolicy(
                enabled=t.enabled,
                error_rate=t.error_rate,
                latency_p95_ms=t.latency_p95_ms,
                accuracy_drop=t.accuracy_drop,
                monitoring_window=duration(t.monitoring_window_seconds),
                min_requests=t.min_requests,
                analysis_interval=duration(t.analysis_interval_seconds),
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
        required_checks=tuple(p.required_checks),
        on_missing_checks=_on_missing_checks(p.on_missing_checks),
        capacity=dict(p.capacity),
        auto_rollback=envs.Thresholds(
            enabled=t.enabled if p.HasField("auto_rollback") else base.enabled,
            error_rate=optional("error_rate", base.error_rate),
            latency_p95_ms=optional("latency_p95_ms", base.latency_p95_ms),
            accuracy_drop=optional("accuracy_drop", base.accuracy_drop),
            monitoring_window_seconds=seconds(t.monitoring_window)
            if t.HasField("monitoring_window")
            else base.monitoring_window_seconds,
            min_requests=optional("min_requests", base.min_requests),
            analysis_interval_seconds=seconds(t.analysis_interval)
            if t.HasField("analysis_interval")
            else base.analysis_interval_seconds,
        ),
    )
    return Environment(name=name, description=m.description, position=m.position, policy=policy)


def _on_missing_checks(value: int) -> checking.OnMissingChecks:
    if value == pb.MISSING_CHECKS_UNSPECIFIED:
        return checking.OnMissingChecks.WAIT
    if value not in checking.OnMissingChecks.__members__.values():
        raise InvalidArgument.one("environment.policy.on_missing_checks", f"unknown value {value}")
    return checking.OnMissingChecks(value)


def version_check_proto(c: checking.VersionCheck) -> pb.VersionCheck:
    return pb.VersionCheck(
        name=c.resource_name,
        check=c.check,
        state=int(c.state),  # type: ignore[arg-type]
        details_url=c.details_url,
        summary=c.summary,
        reporter=principal_name(c.reporter),
        create_time=timestamp(c.create_time),
        update_time=timestamp(c.update_time),
        revision=c.revision,
    )


# -- deployments and targets ---------------------------------------------------------------------


def pinned_proto(p: Pinned) -> pb.TargetVersion:
    return pb.TargetVersion(version=p.version, digest=p.digest)


def target_proto(t: Target) -> pb.Target:
    out = pb.Target(
        name=t.resource_name, program=t.program, environment=t.environment, revision=t.revision, etag=t.etag
    )
    if t.stable:
        out.stable.CopyFrom(pinned_proto(t.stable))
    if t.candidate:
        out.candidate.CopyFrom(
            pb.CandidateVersion(
                version=t.candidate.version, digest=t.candidate.digest, weight_percent=t.candidate_weight
            )
        )
    if t.deployment:
        out.deployment = f"deployments/{t.deployment}"
    if t.update_time:
        out.update_time.CopyFrom(timestamp(t.update_time))
    return out


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
        required_checks=list(d.required_checks),
        waiting_checks=list(d.waiting_checks),
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


# -- sidecars, metric windows, health ------------------------------------------------------------


def window_from_proto(sidecar_id: str, m: pb.MetricWindow, at: str, v: Violations) -> health.Window:
    """The window at path `at` of a report; what is wrong with it goes to `v`."""
    program = short(m.program, "programs")
    environment = short(m.environment, "environments")
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
        sidecar_id=sidecar_id,
        program=program,
        environment=environment,
        version=m.version,
        start_time=times[0],
        end_time=times[1],
        request_count=m.request_count,
        error_count=m.error_count,
        bounds_ms=tuple(m.latency.bounds_ms) or health.STANDARD_BOUNDS_MS,
        counts=tuple(m.latency.counts),
        sum_ms=m.latency.sum_ms,
        feedback_correct=m.feedback_correct,
        feedback_total=m.feedback_total,
    )
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


_ACKED = {pb.APPLY_RESULT_ACK: True, pb.APPLY_RESULT_NACK: False}


def applied_from_proto(m: pb.SidecarTargetStatus) -> sidecars.Applied:
    return sidecars.Applied(
        program=short(m.program, "programs"),
        environment=short(m.environment, "environments"),
        version=m.version,
        digest=m.digest,
        acked=_ACKED.get(m.result),
        error_code=m.error_detail.code,
        error_message=m.error_detail.message,
        revision=m.revision,
        apply_time=time_field(m, "apply_time"),
    )


def sidecar_proto(r: sidecars.Report, program: str, environment: str) -> pb.Sidecar:
    """Sidecar `r` with only its entries for `program` in `environment`."""
    out = pb.Sidecar(
        sidecar_id=r.sidecar_id,
        principal=f"principals/{r.principal}",
        last_report_time=timestamp(r.time),
        heartbeat_interval=duration(r.heartbeat_seconds),
        revision=r.revision,
    )
    for a in r.targets:
        if a.program != program or a.environment != environment:
            continue
        entry = out.targets.add(
            program=a.program,
            environment=a.environment,
            version=a.version,
            digest=a.digest,
            result=pb.APPLY_RESULT_ACK if a.acked else pb.APPLY_RESULT_NACK,
            revision=a.revision,
        )
        if not a.acked:
            entry.error_detail.code = a.error_code
            entry.error_detail.message = a.error_message
        if a.apply_time is not None:
            entry.apply_time.CopyFrom(timestamp(a.apply_time))
    return out


# -- webhooks ------------------------------------------------------------------------------------


def webhook_proto(w: Webhook) -> pb.Webhook:
    return pb.Webhook(
        name=w.resource_name,
        url=w.url,
        event_kinds=[int(k) for k in w.event_kinds],  # type: ignore[misc]
        selectors=[pb.TargetSelector(program=s.program, environment=s.environment) for s in w.selectors],
        description=w.description,
        creator=principal_name(w.creator),
        create_time=timestamp(w.create_time),
        revision=w.revision,
        secrets=[secret_proto(w, s) for s in w.secrets],
    )


def secret_proto(w: Webhook, s: SigningSecret) -> pb.WebhookSecret:
    """The secret's name and age: its value never leaves the server."""
    return pb.WebhookSecret(name=f"{w.resource_name}/secrets/{s.id}", create_time=timestamp(s.create_time))


def delivery_proto(d: Delivery) -> pb.WebhookDelivery:
    out = pb.WebhookDelivery(
        name=d.resource_name,
        event_id=d.event_id,
        event_kind=int(d.event_kind),  # type: ignore[arg-type]
        state=int(d.state),  # type: ignore[arg-type]
        attempts=d.attempts,
        last_response_code=d.last_response_code,
        last_error=d.last_error,
        create_time=timestamp(d.create_time),
    )
    for field, value in (
        ("last_attempt_time", d.last_attempt_time),
        # Unset unless PENDING (while PENDING it may be the lease of an attempt in flight).
        ("next_attempt_time", d.next_attempt_time if d.state == DeliveryState.PENDING else None),
        ("complete_time", d.complete_time),
    ):
        if value is not None:
            getattr(out, field).CopyFrom(timestamp(value))
    return out

import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Strategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STRATEGY_UNSPECIFIED: _ClassVar[Strategy]
    STRATEGY_REPLACE: _ClassVar[Strategy]
    STRATEGY_BLUE_GREEN: _ClassVar[Strategy]
    STRATEGY_CANARY: _ClassVar[Strategy]

class DeploymentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEPLOYMENT_STATE_UNSPECIFIED: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_PENDING_APPROVAL: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_IN_PROGRESS: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_SUCCEEDED: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_FAILED: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_ROLLED_BACK: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_ABORTED: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_SUPERSEDED: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_PENDING_CHECKS: _ClassVar[DeploymentState]

class DeploymentEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEPLOYMENT_EVENT_KIND_UNSPECIFIED: _ClassVar[DeploymentEventKind]
    DEPLOYMENT_EVENT_KIND_CREATED: _ClassVar[DeploymentEventKind]
    DEPLOYMENT_EVENT_KIND_APPROVED: _ClassVar[DeploymentEventKind]
    DEPLOYMENT_EVENT_KIND_REJECTED: _ClassVar[DeploymentEventKind]
    DEPLOYMENT_EVENT_KIND_STEP_ADVANCED: _ClassVar[DeploymentEventKind]
    DEPLOYMENT_EVENT_KIND_PROMOTED: _ClassVar[DeploymentEventKind]
    DEPLOYMENT_EVENT_KIND_SUCCEEDED: _ClassVar[DeploymentEventKind]
    DEPLOYMENT_EVENT_KIND_FAILED: _ClassVar[DeploymentEventKind]
    DEPLOYMENT_EVENT_KIND_ABORTED: _ClassVar[DeploymentEventKind]
    DEPLOYMENT_EVENT_KIND_ROLLED_BACK: _ClassVar[DeploymentEventKind]
    DEPLOYMENT_EVENT_KIND_AUTO_ROLLBACK: _ClassVar[DeploymentEventKind]
    DEPLOYMENT_EVENT_KIND_SUPERSEDED: _ClassVar[DeploymentEventKind]
    DEPLOYMENT_EVENT_KIND_PAUSED: _ClassVar[DeploymentEventKind]
    DEPLOYMENT_EVENT_KIND_RESUMED: _ClassVar[DeploymentEventKind]
    DEPLOYMENT_EVENT_KIND_CHECKS_PENDING: _ClassVar[DeploymentEventKind]
    DEPLOYMENT_EVENT_KIND_CHECK_PASSED: _ClassVar[DeploymentEventKind]

class CheckState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHECK_STATE_UNSPECIFIED: _ClassVar[CheckState]
    CHECK_STATE_PASSED: _ClassVar[CheckState]
    CHECK_STATE_FAILED: _ClassVar[CheckState]
    CHECK_STATE_RUNNING: _ClassVar[CheckState]

class MissingChecks(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MISSING_CHECKS_UNSPECIFIED: _ClassVar[MissingChecks]
    MISSING_CHECKS_WAIT: _ClassVar[MissingChecks]
    MISSING_CHECKS_REFUSE: _ClassVar[MissingChecks]

class TrafficRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAFFIC_ROLE_UNSPECIFIED: _ClassVar[TrafficRole]
    TRAFFIC_ROLE_STABLE: _ClassVar[TrafficRole]
    TRAFFIC_ROLE_CANDIDATE: _ClassVar[TrafficRole]
    TRAFFIC_ROLE_PREVIOUS: _ClassVar[TrafficRole]

class HealthVerdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEALTH_VERDICT_UNSPECIFIED: _ClassVar[HealthVerdict]
    HEALTH_VERDICT_HEALTHY: _ClassVar[HealthVerdict]
    HEALTH_VERDICT_UNHEALTHY: _ClassVar[HealthVerdict]
    HEALTH_VERDICT_INCONCLUSIVE: _ClassVar[HealthVerdict]

class ApplyResult(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    APPLY_RESULT_UNSPECIFIED: _ClassVar[ApplyResult]
    APPLY_RESULT_ACK: _ClassVar[ApplyResult]
    APPLY_RESULT_NACK: _ClassVar[ApplyResult]

class DeliveryState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELIVERY_STATE_UNSPECIFIED: _ClassVar[DeliveryState]
    DELIVERY_STATE_PENDING: _ClassVar[DeliveryState]
    DELIVERY_STATE_SUCCEEDED: _ClassVar[DeliveryState]
    DELIVERY_STATE_FAILED: _ClassVar[DeliveryState]
STRATEGY_UNSPECIFIED: Strategy
STRATEGY_REPLACE: Strategy
STRATEGY_BLUE_GREEN: Strategy
STRATEGY_CANARY: Strategy
DEPLOYMENT_STATE_UNSPECIFIED: DeploymentState
DEPLOYMENT_STATE_PENDING_APPROVAL: DeploymentState
DEPLOYMENT_STATE_IN_PROGRESS: DeploymentState
DEPLOYMENT_STATE_SUCCEEDED: DeploymentState
DEPLOYMENT_STATE_FAILED: DeploymentState
DEPLOYMENT_STATE_ROLLED_BACK: DeploymentState
DEPLOYMENT_STATE_ABORTED: DeploymentState
DEPLOYMENT_STATE_SUPERSEDED: DeploymentState
DEPLOYMENT_STATE_PENDING_CHECKS: DeploymentState
DEPLOYMENT_EVENT_KIND_UNSPECIFIED: DeploymentEventKind
DEPLOYMENT_EVENT_KIND_CREATED: DeploymentEventKind
DEPLOYMENT_EVENT_KIND_APPROVED: DeploymentEventKind
DEPLOYMENT_EVENT_KIND_REJECTED: DeploymentEventKind
DEPLOYMENT_EVENT_KIND_STEP_ADVANCED: DeploymentEventKind
DEPLOYMENT_EVENT_KIND_PROMOTED: DeploymentEventKind
DEPLOYMENT_EVENT_KIND_SUCCEEDED: DeploymentEventKind
DEPLOYMENT_EVENT_KIND_FAILED: DeploymentEventKind
DEPLOYMENT_EVENT_KIND_ABORTED: DeploymentEventKind
DEPLOYMENT_EVENT_KIND_ROLLED_BACK: DeploymentEventKind
DEPLOYMENT_EVENT_KIND_AUTO_ROLLBACK: DeploymentEventKind
DEPLOYMENT_EVENT_KIND_SUPERSEDED: DeploymentEventKind
DEPLOYMENT_EVENT_KIND_PAUSED: DeploymentEventKind
DEPLOYMENT_EVENT_KIND_RESUMED: DeploymentEventKind
DEPLOYMENT_EVENT_KIND_CHECKS_PENDING: DeploymentEventKind
DEPLOYMENT_EVENT_KIND_CHECK_PASSED: DeploymentEventKind
CHECK_STATE_UNSPECIFIED: CheckState
CHECK_STATE_PASSED: CheckState
CHECK_STATE_FAILED: CheckState
CHECK_STATE_RUNNING: CheckState
MISSING_CHECKS_UNSPECIFIED: MissingChecks
MISSING_CHECKS_WAIT: MissingChecks
MISSING_CHECKS_REFUSE: MissingChecks
TRAFFIC_ROLE_UNSPECIFIED: TrafficRole
TRAFFIC_ROLE_STABLE: TrafficRole
TRAFFIC_ROLE_CANDIDATE: TrafficRole
TRAFFIC_ROLE_PREVIOUS: TrafficRole
HEALTH_VERDICT_UNSPECIFIED: HealthVerdict
HEALTH_VERDICT_HEALTHY: HealthVerdict
HEALTH_VERDICT_UNHEALTHY: HealthVerdict
HEALTH_VERDICT_INCONCLUSIVE: HealthVerdict
APPLY_RESULT_UNSPECIFIED: ApplyResult
APPLY_RESULT_ACK: ApplyResult
APPLY_RESULT_NACK: ApplyResult
DELIVERY_STATE_UNSPECIFIED: DeliveryState
DELIVERY_STATE_PENDING: DeliveryState
DELIVERY_STATE_SUCCEEDED: DeliveryState
DELIVERY_STATE_FAILED: DeliveryState

class CanaryStep(_message.Message):
    __slots__ = ("weight_percent", "pause")
    WEIGHT_PERCENT_FIELD_NUMBER: _ClassVar[int]
    PAUSE_FIELD_NUMBER: _ClassVar[int]
    weight_percent: int
    pause: _duration_pb2.Duration
    def __init__(self, weight_percent: _Optional[int] = ..., pause: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class CanaryOptions(_message.Message):
    __slots__ = ("steps", "step_deadline")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedCompositeFieldContainer[CanaryStep]
    step_deadline: _duration_pb2.Duration
    def __init__(self, steps: _Optional[_Iterable[_Union[CanaryStep, _Mapping]]] = ..., step_deadline: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class BlueGreenOptions(_message.Message):
    __slots__ = ("auto_promote", "promote_delay", "min_ack_percent", "ack_timeout")
    AUTO_PROMOTE_FIELD_NUMBER: _ClassVar[int]
    PROMOTE_DELAY_FIELD_NUMBER: _ClassVar[int]
    MIN_ACK_PERCENT_FIELD_NUMBER: _ClassVar[int]
    ACK_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    auto_promote: bool
    promote_delay: _duration_pb2.Duration
    min_ack_percent: int
    ack_timeout: _duration_pb2.Duration
    def __init__(self, auto_promote: _Optional[bool] = ..., promote_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., min_ack_percent: _Optional[int] = ..., ack_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class DeploymentStrategy(_message.Message):
    __slots__ = ("strategy", "canary", "blue_green")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    BLUE_GREEN_FIELD_NUMBER: _ClassVar[int]
    strategy: Strategy
    canary: CanaryOptions
    blue_green: BlueGreenOptions
    def __init__(self, strategy: _Optional[_Union[Strategy, str]] = ..., canary: _Optional[_Union[CanaryOptions, _Mapping]] = ..., blue_green: _Optional[_Union[BlueGreenOptions, _Mapping]] = ...) -> None: ...

class ValidationPolicy(_message.Message):
    __slots__ = ("min_metrics", "max_metrics", "required_metadata_keys", "require_compatible_signature")
    class MinMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class MaxMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MIN_METRICS_FIELD_NUMBER: _ClassVar[int]
    MAX_METRICS_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_METADATA_KEYS_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_COMPATIBLE_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    min_metrics: _containers.ScalarMap[str, float]
    max_metrics: _containers.ScalarMap[str, float]
    required_metadata_keys: _containers.RepeatedScalarFieldContainer[str]
    require_compatible_signature: bool
    def __init__(self, min_metrics: _Optional[_Mapping[str, float]] = ..., max_metrics: _Optional[_Mapping[str, float]] = ..., required_metadata_keys: _Optional[_Iterable[str]] = ..., require_compatible_signature: _Optional[bool] = ...) -> None: ...

class AutoRollbackPolicy(_message.Message):
    __slots__ = ("enabled", "error_rate", "latency_p95_ms", "accuracy_drop", "monitoring_window", "min_requests", "analysis_interval")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_DROP_FIELD_NUMBER: _ClassVar[int]
    MONITORING_WINDOW_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ANALYSIS_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    error_rate: float
    latency_p95_ms: float
    accuracy_drop: float
    monitoring_window: _duration_pb2.Duration
    min_requests: int
    analysis_interval: _duration_pb2.Duration
    def __init__(self, enabled: _Optional[bool] = ..., error_rate: _Optional[float] = ..., latency_p95_ms: _Optional[float] = ..., accuracy_drop: _Optional[float] = ..., monitoring_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., min_requests: _Optional[int] = ..., analysis_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class EnvironmentPolicy(_message.Message):
    __slots__ = ("auto_deploy", "validation_required", "validation", "approval_required", "required_approvals", "rollback_enabled", "monitoring_required", "required_predecessors", "default_strategy", "auto_rollback", "required_checks", "on_missing_checks", "capacity")
    class CapacityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AUTO_DEPLOY_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_APPROVALS_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_ENABLED_FIELD_NUMBER: _ClassVar[int]
    MONITORING_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_PREDECESSORS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    AUTO_ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_CHECKS_FIELD_NUMBER: _ClassVar[int]
    ON_MISSING_CHECKS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    auto_deploy: bool
    validation_required: bool
    validation: ValidationPolicy
    approval_required: bool
    required_approvals: int
    rollback_enabled: bool
    monitoring_required: bool
    required_predecessors: _containers.RepeatedScalarFieldContainer[str]
    default_strategy: DeploymentStrategy
    auto_rollback: AutoRollbackPolicy
    required_checks: _containers.RepeatedScalarFieldContainer[str]
    on_missing_checks: MissingChecks
    capacity: _containers.ScalarMap[str, str]
    def __init__(self, auto_deploy: _Optional[bool] = ..., validation_required: _Optional[bool] = ..., validation: _Optional[_Union[ValidationPolicy, _Mapping]] = ..., approval_required: _Optional[bool] = ..., required_approvals: _Optional[int] = ..., rollback_enabled: _Optional[bool] = ..., monitoring_required: _Optional[bool] = ..., required_predecessors: _Optional[_Iterable[str]] = ..., default_strategy: _Optional[_Union[DeploymentStrategy, _Mapping]] = ..., auto_rollback: _Optional[_Union[AutoRollbackPolicy, _Mapping]] = ..., required_checks: _Optional[_Iterable[str]] = ..., on_missing_checks: _Optional[_Union[MissingChecks, str]] = ..., capacity: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Environment(_message.Message):
    __slots__ = ("name", "description", "position", "policy", "create_time", "update_time", "revision", "etag")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    position: int
    policy: EnvironmentPolicy
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    revision: int
    etag: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., position: _Optional[int] = ..., policy: _Optional[_Union[EnvironmentPolicy, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revision: _Optional[int] = ..., etag: _Optional[str] = ...) -> None: ...

class TargetVersion(_message.Message):
    __slots__ = ("version", "digest")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    version: str
    digest: str
    def __init__(self, version: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...

class CandidateVersion(_message.Message):
    __slots__ = ("version", "digest", "weight_percent")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_PERCENT_FIELD_NUMBER: _ClassVar[int]
    version: str
    digest: str
    weight_percent: int
    def __init__(self, version: _Optional[str] = ..., digest: _Optional[str] = ..., weight_percent: _Optional[int] = ...) -> None: ...

class Target(_message.Message):
    __slots__ = ("name", "program", "environment", "stable", "candidate", "deployment", "revision", "etag", "update_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    program: str
    environment: str
    stable: TargetVersion
    candidate: CandidateVersion
    deployment: str
    revision: int
    etag: str
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., program: _Optional[str] = ..., environment: _Optional[str] = ..., stable: _Optional[_Union[TargetVersion, _Mapping]] = ..., candidate: _Optional[_Union[CandidateVersion, _Mapping]] = ..., deployment: _Optional[str] = ..., revision: _Optional[int] = ..., etag: _Optional[str] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Approval(_message.Message):
    __slots__ = ("principal", "rejected", "comment", "time")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    principal: str
    rejected: bool
    comment: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, principal: _Optional[str] = ..., rejected: _Optional[bool] = ..., comment: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DeploymentTransition(_message.Message):
    __slots__ = ("kind", "state", "step", "actor", "time", "reason", "revision")
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    kind: DeploymentEventKind
    state: DeploymentState
    step: int
    actor: str
    time: _timestamp_pb2.Timestamp
    reason: str
    revision: int
    def __init__(self, kind: _Optional[_Union[DeploymentEventKind, str]] = ..., state: _Optional[_Union[DeploymentState, str]] = ..., step: _Optional[int] = ..., actor: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class Deployment(_message.Message):
    __slots__ = ("name", "program", "environment", "version", "digest", "strategy", "state", "current_step", "step_count", "weight_percent", "paused", "pause_reason", "step_start_time", "next_step_time", "reason", "creator", "approvals", "required_approvals", "previous_stable", "replaced_deployment", "rolled_back_deployment", "rollback_deployment", "superseded_by", "supersede", "allow_breaking", "auto_deployed", "timeline", "create_time", "update_time", "end_time", "revision", "etag", "required_checks", "waiting_checks")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_STEP_FIELD_NUMBER: _ClassVar[int]
    STEP_COUNT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_PERCENT_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    PAUSE_REASON_FIELD_NUMBER: _ClassVar[int]
    STEP_START_TIME_FIELD_NUMBER: _ClassVar[int]
    NEXT_STEP_TIME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_APPROVALS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_STABLE_FIELD_NUMBER: _ClassVar[int]
    REPLACED_DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    SUPERSEDED_BY_FIELD_NUMBER: _ClassVar[int]
    SUPERSEDE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_BREAKING_FIELD_NUMBER: _ClassVar[int]
    AUTO_DEPLOYED_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_CHECKS_FIELD_NUMBER: _ClassVar[int]
    WAITING_CHECKS_FIELD_NUMBER: _ClassVar[int]
    name: str
    program: str
    environment: str
    version: str
    digest: str
    strategy: DeploymentStrategy
    state: DeploymentState
    current_step: int
    step_count: int
    weight_percent: int
    paused: bool
    pause_reason: str
    step_start_time: _timestamp_pb2.Timestamp
    next_step_time: _timestamp_pb2.Timestamp
    reason: str
    creator: str
    approvals: _containers.RepeatedCompositeFieldContainer[Approval]
    required_approvals: int
    previous_stable: TargetVersion
    replaced_deployment: str
    rolled_back_deployment: str
    rollback_deployment: str
    superseded_by: str
    supersede: bool
    allow_breaking: bool
    auto_deployed: bool
    timeline: _containers.RepeatedCompositeFieldContainer[DeploymentTransition]
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    revision: int
    etag: str
    required_checks: _containers.RepeatedScalarFieldContainer[str]
    waiting_checks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., program: _Optional[str] = ..., environment: _Optional[str] = ..., version: _Optional[str] = ..., digest: _Optional[str] = ..., strategy: _Optional[_Union[DeploymentStrategy, _Mapping]] = ..., state: _Optional[_Union[DeploymentState, str]] = ..., current_step: _Optional[int] = ..., step_count: _Optional[int] = ..., weight_percent: _Optional[int] = ..., paused: _Optional[bool] = ..., pause_reason: _Optional[str] = ..., step_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_step_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., creator: _Optional[str] = ..., approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ..., required_approvals: _Optional[int] = ..., previous_stable: _Optional[_Union[TargetVersion, _Mapping]] = ..., replaced_deployment: _Optional[str] = ..., rolled_back_deployment: _Optional[str] = ..., rollback_deployment: _Optional[str] = ..., superseded_by: _Optional[str] = ..., supersede: _Optional[bool] = ..., allow_breaking: _Optional[bool] = ..., auto_deployed: _Optional[bool] = ..., timeline: _Optional[_Iterable[_Union[DeploymentTransition, _Mapping]]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revision: _Optional[int] = ..., etag: _Optional[str] = ..., required_checks: _Optional[_Iterable[str]] = ..., waiting_checks: _Optional[_Iterable[str]] = ...) -> None: ...

class VersionCheck(_message.Message):
    __slots__ = ("name", "check", "state", "details_url", "summary", "reporter", "create_time", "update_time", "revision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_URL_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    REPORTER_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    check: str
    state: CheckState
    details_url: str
    summary: str
    reporter: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    revision: int
    def __init__(self, name: _Optional[str] = ..., check: _Optional[str] = ..., state: _Optional[_Union[CheckState, str]] = ..., details_url: _Optional[str] = ..., summary: _Optional[str] = ..., reporter: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class ListEnvironmentsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEnvironmentsResponse(_message.Message):
    __slots__ = ("environments", "next_page_token", "total_size")
    ENVIRONMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    environments: _containers.RepeatedCompositeFieldContainer[Environment]
    next_page_token: str
    total_size: int
    def __init__(self, environments: _Optional[_Iterable[_Union[Environment, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_size: _Optional[int] = ...) -> None: ...

class GetEnvironmentRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetEnvironmentResponse(_message.Message):
    __slots__ = ("environment",)
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    environment: Environment
    def __init__(self, environment: _Optional[_Union[Environment, _Mapping]] = ...) -> None: ...

class UpdateEnvironmentRequest(_message.Message):
    __slots__ = ("environment", "update_mask", "etag", "allow_missing", "request_id")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    environment: Environment
    update_mask: _field_mask_pb2.FieldMask
    etag: str
    allow_missing: bool
    request_id: str
    def __init__(self, environment: _Optional[_Union[Environment, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., etag: _Optional[str] = ..., allow_missing: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class UpdateEnvironmentResponse(_message.Message):
    __slots__ = ("environment",)
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    environment: Environment
    def __init__(self, environment: _Optional[_Union[Environment, _Mapping]] = ...) -> None: ...

class CreateDeploymentRequest(_message.Message):
    __slots__ = ("program", "version", "environment", "strategy", "reason", "request_id", "expected_target_etag", "supersede", "allow_breaking")
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_TARGET_ETAG_FIELD_NUMBER: _ClassVar[int]
    SUPERSEDE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_BREAKING_FIELD_NUMBER: _ClassVar[int]
    program: str
    version: str
    environment: str
    strategy: DeploymentStrategy
    reason: str
    request_id: str
    expected_target_etag: str
    supersede: bool
    allow_breaking: bool
    def __init__(self, program: _Optional[str] = ..., version: _Optional[str] = ..., environment: _Optional[str] = ..., strategy: _Optional[_Union[DeploymentStrategy, _Mapping]] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ..., expected_target_etag: _Optional[str] = ..., supersede: _Optional[bool] = ..., allow_breaking: _Optional[bool] = ...) -> None: ...

class CreateDeploymentResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ...) -> None: ...

class GetDeploymentRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetDeploymentResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ...) -> None: ...

class ListDeploymentsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "program", "environment", "states", "start_time", "end_time")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    program: str
    environment: str
    states: _containers.RepeatedScalarFieldContainer[DeploymentState]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., program: _Optional[str] = ..., environment: _Optional[str] = ..., states: _Optional[_Iterable[_Union[DeploymentState, str]]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListDeploymentsResponse(_message.Message):
    __slots__ = ("deployments", "next_page_token", "total_size")
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    deployments: _containers.RepeatedCompositeFieldContainer[Deployment]
    next_page_token: str
    total_size: int
    def __init__(self, deployments: _Optional[_Iterable[_Union[Deployment, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_size: _Optional[int] = ...) -> None: ...

class ApproveDeploymentRequest(_message.Message):
    __slots__ = ("name", "comment", "reject", "etag", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    comment: str
    reject: bool
    etag: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., comment: _Optional[str] = ..., reject: _Optional[bool] = ..., etag: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ApproveDeploymentResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ...) -> None: ...

class PromoteDeploymentRequest(_message.Message):
    __slots__ = ("name", "full", "reason", "etag", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    full: bool
    reason: str
    etag: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., full: _Optional[bool] = ..., reason: _Optional[str] = ..., etag: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class PromoteDeploymentResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ...) -> None: ...

class AbortDeploymentRequest(_message.Message):
    __slots__ = ("name", "reason", "etag", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    etag: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ..., etag: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class AbortDeploymentResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ...) -> None: ...

class RollbackDeploymentRequest(_message.Message):
    __slots__ = ("name", "reason", "etag", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    etag: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ..., etag: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class RollbackDeploymentResponse(_message.Message):
    __slots__ = ("deployment", "rolled_back")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    rolled_back: Deployment
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ..., rolled_back: _Optional[_Union[Deployment, _Mapping]] = ...) -> None: ...

class GetDeploymentStatusRequest(_message.Message):
    __slots__ = ("program", "environment")
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    program: str
    environment: str
    def __init__(self, program: _Optional[str] = ..., environment: _Optional[str] = ...) -> None: ...

class ThresholdCheck(_message.Message):
    __slots__ = ("metric", "value", "threshold", "verdict", "message")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    metric: str
    value: float
    threshold: float
    verdict: HealthVerdict
    message: str
    def __init__(self, metric: _Optional[str] = ..., value: _Optional[float] = ..., threshold: _Optional[float] = ..., verdict: _Optional[_Union[HealthVerdict, str]] = ..., message: _Optional[str] = ...) -> None: ...

class VersionHealth(_message.Message):
    __slots__ = ("version", "role", "verdict", "window_start_time", "window_end_time", "request_count", "error_count", "error_rate", "latency_p95_ms", "feedback_correct", "feedback_total", "accuracy", "baseline_accuracy", "checks", "registered_performance")
    class RegisteredPerformanceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_TIME_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_TIME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERROR_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_CORRECT_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    BASELINE_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_PERFORMANCE_FIELD_NUMBER: _ClassVar[int]
    version: str
    role: TrafficRole
    verdict: HealthVerdict
    window_start_time: _timestamp_pb2.Timestamp
    window_end_time: _timestamp_pb2.Timestamp
    request_count: int
    error_count: int
    error_rate: float
    latency_p95_ms: float
    feedback_correct: int
    feedback_total: int
    accuracy: float
    baseline_accuracy: float
    checks: _containers.RepeatedCompositeFieldContainer[ThresholdCheck]
    registered_performance: _containers.ScalarMap[str, float]
    def __init__(self, version: _Optional[str] = ..., role: _Optional[_Union[TrafficRole, str]] = ..., verdict: _Optional[_Union[HealthVerdict, str]] = ..., window_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window_end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_count: _Optional[int] = ..., error_count: _Optional[int] = ..., error_rate: _Optional[float] = ..., latency_p95_ms: _Optional[float] = ..., feedback_correct: _Optional[int] = ..., feedback_total: _Optional[int] = ..., accuracy: _Optional[float] = ..., baseline_accuracy: _Optional[float] = ..., checks: _Optional[_Iterable[_Union[ThresholdCheck, _Mapping]]] = ..., registered_performance: _Optional[_Mapping[str, float]] = ...) -> None: ...

class SidecarTargetStatus(_message.Message):
    __slots__ = ("program", "environment", "version", "digest", "result", "error_detail", "revision", "apply_time")
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_DETAIL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    APPLY_TIME_FIELD_NUMBER: _ClassVar[int]
    program: str
    environment: str
    version: str
    digest: str
    result: ApplyResult
    error_detail: _status_pb2.Status
    revision: int
    apply_time: _timestamp_pb2.Timestamp
    def __init__(self, program: _Optional[str] = ..., environment: _Optional[str] = ..., version: _Optional[str] = ..., digest: _Optional[str] = ..., result: _Optional[_Union[ApplyResult, str]] = ..., error_detail: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., revision: _Optional[int] = ..., apply_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Sidecar(_message.Message):
    __slots__ = ("sidecar_id", "principal", "targets", "last_report_time", "heartbeat_interval", "revision")
    SIDECAR_ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    LAST_REPORT_TIME_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    sidecar_id: str
    principal: str
    targets: _containers.RepeatedCompositeFieldContainer[SidecarTargetStatus]
    last_report_time: _timestamp_pb2.Timestamp
    heartbeat_interval: _duration_pb2.Duration
    revision: int
    def __init__(self, sidecar_id: _Optional[str] = ..., principal: _Optional[str] = ..., targets: _Optional[_Iterable[_Union[SidecarTargetStatus, _Mapping]]] = ..., last_report_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class GetDeploymentStatusResponse(_message.Message):
    __slots__ = ("target", "current_deployment", "verdict", "health", "sidecars", "revision", "leader")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CURRENT_DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    SIDECARS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    target: Target
    current_deployment: Deployment
    verdict: HealthVerdict
    health: _containers.RepeatedCompositeFieldContainer[VersionHealth]
    sidecars: _containers.RepeatedCompositeFieldContainer[Sidecar]
    revision: int
    leader: str
    def __init__(self, target: _Optional[_Union[Target, _Mapping]] = ..., current_deployment: _Optional[_Union[Deployment, _Mapping]] = ..., verdict: _Optional[_Union[HealthVerdict, str]] = ..., health: _Optional[_Iterable[_Union[VersionHealth, _Mapping]]] = ..., sidecars: _Optional[_Iterable[_Union[Sidecar, _Mapping]]] = ..., revision: _Optional[int] = ..., leader: _Optional[str] = ...) -> None: ...

class TargetSelector(_message.Message):
    __slots__ = ("program", "environment")
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    program: str
    environment: str
    def __init__(self, program: _Optional[str] = ..., environment: _Optional[str] = ...) -> None: ...

class WatchTargetsRequest(_message.Message):
    __slots__ = ("selectors", "start_revision", "sidecar_id", "progress_interval")
    SELECTORS_FIELD_NUMBER: _ClassVar[int]
    START_REVISION_FIELD_NUMBER: _ClassVar[int]
    SIDECAR_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    selectors: _containers.RepeatedCompositeFieldContainer[TargetSelector]
    start_revision: int
    sidecar_id: str
    progress_interval: _duration_pb2.Duration
    def __init__(self, selectors: _Optional[_Iterable[_Union[TargetSelector, _Mapping]]] = ..., start_revision: _Optional[int] = ..., sidecar_id: _Optional[str] = ..., progress_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class TargetSnapshot(_message.Message):
    __slots__ = ("targets", "reset", "compact_revision")
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    COMPACT_REVISION_FIELD_NUMBER: _ClassVar[int]
    targets: _containers.RepeatedCompositeFieldContainer[Target]
    reset: bool
    compact_revision: int
    def __init__(self, targets: _Optional[_Iterable[_Union[Target, _Mapping]]] = ..., reset: _Optional[bool] = ..., compact_revision: _Optional[int] = ...) -> None: ...

class TargetChanges(_message.Message):
    __slots__ = ("targets",)
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    targets: _containers.RepeatedCompositeFieldContainer[Target]
    def __init__(self, targets: _Optional[_Iterable[_Union[Target, _Mapping]]] = ...) -> None: ...

class WatchProgress(_message.Message):
    __slots__ = ("time",)
    TIME_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WatchTargetsResponse(_message.Message):
    __slots__ = ("revision", "snapshot", "changes", "progress")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    revision: int
    snapshot: TargetSnapshot
    changes: TargetChanges
    progress: WatchProgress
    def __init__(self, revision: _Optional[int] = ..., snapshot: _Optional[_Union[TargetSnapshot, _Mapping]] = ..., changes: _Optional[_Union[TargetChanges, _Mapping]] = ..., progress: _Optional[_Union[WatchProgress, _Mapping]] = ...) -> None: ...

class DeploymentEvent(_message.Message):
    __slots__ = ("id", "kind", "revision", "time", "deployment", "program", "environment", "version", "state", "step", "weight_percent", "actor", "reason", "related_deployment")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_PERCENT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RELATED_DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: DeploymentEventKind
    revision: int
    time: _timestamp_pb2.Timestamp
    deployment: str
    program: str
    environment: str
    version: str
    state: DeploymentState
    step: int
    weight_percent: int
    actor: str
    reason: str
    related_deployment: str
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[_Union[DeploymentEventKind, str]] = ..., revision: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deployment: _Optional[str] = ..., program: _Optional[str] = ..., environment: _Optional[str] = ..., version: _Optional[str] = ..., state: _Optional[_Union[DeploymentState, str]] = ..., step: _Optional[int] = ..., weight_percent: _Optional[int] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., related_deployment: _Optional[str] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("selectors", "start_revision", "kinds", "progress_interval")
    SELECTORS_FIELD_NUMBER: _ClassVar[int]
    START_REVISION_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    selectors: _containers.RepeatedCompositeFieldContainer[TargetSelector]
    start_revision: int
    kinds: _containers.RepeatedScalarFieldContainer[DeploymentEventKind]
    progress_interval: _duration_pb2.Duration
    def __init__(self, selectors: _Optional[_Iterable[_Union[TargetSelector, _Mapping]]] = ..., start_revision: _Optional[int] = ..., kinds: _Optional[_Iterable[_Union[DeploymentEventKind, str]]] = ..., progress_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class DeploymentSnapshot(_message.Message):
    __slots__ = ("deployments", "reset", "compact_revision")
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    COMPACT_REVISION_FIELD_NUMBER: _ClassVar[int]
    deployments: _containers.RepeatedCompositeFieldContainer[Deployment]
    reset: bool
    compact_revision: int
    def __init__(self, deployments: _Optional[_Iterable[_Union[Deployment, _Mapping]]] = ..., reset: _Optional[bool] = ..., compact_revision: _Optional[int] = ...) -> None: ...

class DeploymentEvents(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[DeploymentEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[DeploymentEvent, _Mapping]]] = ...) -> None: ...

class WatchEventsResponse(_message.Message):
    __slots__ = ("revision", "snapshot", "events", "progress")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    revision: int
    snapshot: DeploymentSnapshot
    events: DeploymentEvents
    progress: WatchProgress
    def __init__(self, revision: _Optional[int] = ..., snapshot: _Optional[_Union[DeploymentSnapshot, _Mapping]] = ..., events: _Optional[_Union[DeploymentEvents, _Mapping]] = ..., progress: _Optional[_Union[WatchProgress, _Mapping]] = ...) -> None: ...

class ReportSidecarStatusRequest(_message.Message):
    __slots__ = ("sidecar_id", "targets", "heartbeat_interval", "revision", "leaving")
    SIDECAR_ID_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    LEAVING_FIELD_NUMBER: _ClassVar[int]
    sidecar_id: str
    targets: _containers.RepeatedCompositeFieldContainer[SidecarTargetStatus]
    heartbeat_interval: _duration_pb2.Duration
    revision: int
    leaving: bool
    def __init__(self, sidecar_id: _Optional[str] = ..., targets: _Optional[_Iterable[_Union[SidecarTargetStatus, _Mapping]]] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., revision: _Optional[int] = ..., leaving: _Optional[bool] = ...) -> None: ...

class ReportSidecarStatusResponse(_message.Message):
    __slots__ = ("heartbeat_interval", "revision")
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval: _duration_pb2.Duration
    revision: int
    def __init__(self, heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class LatencyHistogram(_message.Message):
    __slots__ = ("bounds_ms", "counts", "sum_ms")
    BOUNDS_MS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    SUM_MS_FIELD_NUMBER: _ClassVar[int]
    bounds_ms: _containers.RepeatedScalarFieldContainer[float]
    counts: _containers.RepeatedScalarFieldContainer[int]
    sum_ms: float
    def __init__(self, bounds_ms: _Optional[_Iterable[float]] = ..., counts: _Optional[_Iterable[int]] = ..., sum_ms: _Optional[float] = ...) -> None: ...

class MetricWindow(_message.Message):
    __slots__ = ("program", "environment", "version", "start_time", "end_time", "request_count", "error_count", "latency", "feedback_correct", "feedback_total")
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERROR_COUNT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_CORRECT_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_TOTAL_FIELD_NUMBER: _ClassVar[int]
    program: str
    environment: str
    version: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    request_count: int
    error_count: int
    latency: LatencyHistogram
    feedback_correct: int
    feedback_total: int
    def __init__(self, program: _Optional[str] = ..., environment: _Optional[str] = ..., version: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_count: _Optional[int] = ..., error_count: _Optional[int] = ..., latency: _Optional[_Union[LatencyHistogram, _Mapping]] = ..., feedback_correct: _Optional[int] = ..., feedback_total: _Optional[int] = ...) -> None: ...

class ReportMetricsRequest(_message.Message):
    __slots__ = ("sidecar_id", "windows")
    SIDECAR_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    sidecar_id: str
    windows: _containers.RepeatedCompositeFieldContainer[MetricWindow]
    def __init__(self, sidecar_id: _Optional[str] = ..., windows: _Optional[_Iterable[_Union[MetricWindow, _Mapping]]] = ...) -> None: ...

class ReportMetricsResponse(_message.Message):
    __slots__ = ("accepted_count", "dropped_count")
    ACCEPTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    DROPPED_COUNT_FIELD_NUMBER: _ClassVar[int]
    accepted_count: int
    dropped_count: int
    def __init__(self, accepted_count: _Optional[int] = ..., dropped_count: _Optional[int] = ...) -> None: ...

class ReportVersionCheckRequest(_message.Message):
    __slots__ = ("program_version", "check", "state", "details_url", "summary", "request_id")
    PROGRAM_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_URL_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    program_version: str
    check: str
    state: CheckState
    details_url: str
    summary: str
    request_id: str
    def __init__(self, program_version: _Optional[str] = ..., check: _Optional[str] = ..., state: _Optional[_Union[CheckState, str]] = ..., details_url: _Optional[str] = ..., summary: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ReportVersionCheckResponse(_message.Message):
    __slots__ = ("check",)
    CHECK_FIELD_NUMBER: _ClassVar[int]
    check: VersionCheck
    def __init__(self, check: _Optional[_Union[VersionCheck, _Mapping]] = ...) -> None: ...

class Webhook(_message.Message):
    __slots__ = ("name", "url", "event_kinds", "selectors", "secret", "description", "creator", "create_time", "revision", "secrets")
    NAME_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    EVENT_KINDS_FIELD_NUMBER: _ClassVar[int]
    SELECTORS_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    name: str
    url: str
    event_kinds: _containers.RepeatedScalarFieldContainer[DeploymentEventKind]
    selectors: _containers.RepeatedCompositeFieldContainer[TargetSelector]
    secret: str
    description: str
    creator: str
    create_time: _timestamp_pb2.Timestamp
    revision: int
    secrets: _containers.RepeatedCompositeFieldContainer[WebhookSecret]
    def __init__(self, name: _Optional[str] = ..., url: _Optional[str] = ..., event_kinds: _Optional[_Iterable[_Union[DeploymentEventKind, str]]] = ..., selectors: _Optional[_Iterable[_Union[TargetSelector, _Mapping]]] = ..., secret: _Optional[str] = ..., description: _Optional[str] = ..., creator: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revision: _Optional[int] = ..., secrets: _Optional[_Iterable[_Union[WebhookSecret, _Mapping]]] = ...) -> None: ...

class WebhookSecret(_message.Message):
    __slots__ = ("name", "create_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WebhookDelivery(_message.Message):
    __slots__ = ("name", "event_id", "event_kind", "state", "attempts", "last_response_code", "last_error", "create_time", "last_attempt_time", "next_attempt_time", "complete_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_RESPONSE_CODE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_ATTEMPT_TIME_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_TIME_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    event_id: str
    event_kind: DeploymentEventKind
    state: DeliveryState
    attempts: int
    last_response_code: int
    last_error: str
    create_time: _timestamp_pb2.Timestamp
    last_attempt_time: _timestamp_pb2.Timestamp
    next_attempt_time: _timestamp_pb2.Timestamp
    complete_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., event_id: _Optional[str] = ..., event_kind: _Optional[_Union[DeploymentEventKind, str]] = ..., state: _Optional[_Union[DeliveryState, str]] = ..., attempts: _Optional[int] = ..., last_response_code: _Optional[int] = ..., last_error: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_attempt_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_attempt_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., complete_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateWebhookRequest(_message.Message):
    __slots__ = ("webhook_id", "webhook", "request_id")
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    webhook_id: str
    webhook: Webhook
    request_id: str
    def __init__(self, webhook_id: _Optional[str] = ..., webhook: _Optional[_Union[Webhook, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateWebhookResponse(_message.Message):
    __slots__ = ("webhook",)
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    webhook: Webhook
    def __init__(self, webhook: _Optional[_Union[Webhook, _Mapping]] = ...) -> None: ...

class ListWebhooksRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListWebhooksResponse(_message.Message):
    __slots__ = ("webhooks", "next_page_token", "total_size")
    WEBHOOKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    webhooks: _containers.RepeatedCompositeFieldContainer[Webhook]
    next_page_token: str
    total_size: int
    def __init__(self, webhooks: _Optional[_Iterable[_Union[Webhook, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_size: _Optional[int] = ...) -> None: ...

class DeleteWebhookRequest(_message.Message):
    __slots__ = ("name", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteWebhookResponse(_message.Message):
    __slots__ = ("webhook",)
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    webhook: Webhook
    def __init__(self, webhook: _Optional[_Union[Webhook, _Mapping]] = ...) -> None: ...

class AddWebhookSecretRequest(_message.Message):
    __slots__ = ("parent", "secret", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: str
    secret: str
    request_id: str
    def __init__(self, parent: _Optional[str] = ..., secret: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class AddWebhookSecretResponse(_message.Message):
    __slots__ = ("webhook", "secret")
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    webhook: Webhook
    secret: WebhookSecret
    def __init__(self, webhook: _Optional[_Union[Webhook, _Mapping]] = ..., secret: _Optional[_Union[WebhookSecret, _Mapping]] = ...) -> None: ...

class RetireWebhookSecretRequest(_message.Message):
    __slots__ = ("name", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class RetireWebhookSecretResponse(_message.Message):
    __slots__ = ("webhook",)
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    webhook: Webhook
    def __init__(self, webhook: _Optional[_Union[Webhook, _Mapping]] = ...) -> None: ...

class ListWebhookDeliveriesRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token", "states")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    states: _containers.RepeatedScalarFieldContainer[DeliveryState]
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., states: _Optional[_Iterable[_Union[DeliveryState, str]]] = ...) -> None: ...

class ListWebhookDeliveriesResponse(_message.Message):
    __slots__ = ("deliveries", "next_page_token", "total_size")
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    deliveries: _containers.RepeatedCompositeFieldContainer[WebhookDelivery]
    next_page_token: str
    total_size: int
    def __init__(self, deliveries: _Optional[_Iterable[_Union[WebhookDelivery, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_size: _Optional[int] = ...) -> None: ...

import datetime

from dspy_registry.v1 import deployment_pb2 as _deployment_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChangeType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_TYPE_UNSPECIFIED: _ClassVar[ChangeType]
    CHANGE_TYPE_PATCH: _ClassVar[ChangeType]
    CHANGE_TYPE_MINOR: _ClassVar[ChangeType]
    CHANGE_TYPE_MAJOR: _ClassVar[ChangeType]

class CompatibilityLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPATIBILITY_LEVEL_UNSPECIFIED: _ClassVar[CompatibilityLevel]
    COMPATIBILITY_LEVEL_IDENTICAL: _ClassVar[CompatibilityLevel]
    COMPATIBILITY_LEVEL_PATCH: _ClassVar[CompatibilityLevel]
    COMPATIBILITY_LEVEL_MINOR: _ClassVar[CompatibilityLevel]
    COMPATIBILITY_LEVEL_BREAKING: _ClassVar[CompatibilityLevel]

class Recommendation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECOMMENDATION_UNSPECIFIED: _ClassVar[Recommendation]
    RECOMMENDATION_UPGRADE: _ClassVar[Recommendation]
    RECOMMENDATION_HOLD: _ClassVar[Recommendation]
    RECOMMENDATION_BREAKING: _ClassVar[Recommendation]
CHANGE_TYPE_UNSPECIFIED: ChangeType
CHANGE_TYPE_PATCH: ChangeType
CHANGE_TYPE_MINOR: ChangeType
CHANGE_TYPE_MAJOR: ChangeType
COMPATIBILITY_LEVEL_UNSPECIFIED: CompatibilityLevel
COMPATIBILITY_LEVEL_IDENTICAL: CompatibilityLevel
COMPATIBILITY_LEVEL_PATCH: CompatibilityLevel
COMPATIBILITY_LEVEL_MINOR: CompatibilityLevel
COMPATIBILITY_LEVEL_BREAKING: CompatibilityLevel
RECOMMENDATION_UNSPECIFIED: Recommendation
RECOMMENDATION_UPGRADE: Recommendation
RECOMMENDATION_HOLD: Recommendation
RECOMMENDATION_BREAKING: Recommendation

class FieldType(_message.Message):
    __slots__ = ("kind", "enum_values", "item_type")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[FieldType.Kind]
        KIND_STRING: _ClassVar[FieldType.Kind]
        KIND_INTEGER: _ClassVar[FieldType.Kind]
        KIND_FLOAT: _ClassVar[FieldType.Kind]
        KIND_BOOLEAN: _ClassVar[FieldType.Kind]
        KIND_ENUM: _ClassVar[FieldType.Kind]
        KIND_LIST: _ClassVar[FieldType.Kind]
        KIND_JSON: _ClassVar[FieldType.Kind]
    KIND_UNSPECIFIED: FieldType.Kind
    KIND_STRING: FieldType.Kind
    KIND_INTEGER: FieldType.Kind
    KIND_FLOAT: FieldType.Kind
    KIND_BOOLEAN: FieldType.Kind
    KIND_ENUM: FieldType.Kind
    KIND_LIST: FieldType.Kind
    KIND_JSON: FieldType.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    ENUM_VALUES_FIELD_NUMBER: _ClassVar[int]
    ITEM_TYPE_FIELD_NUMBER: _ClassVar[int]
    kind: FieldType.Kind
    enum_values: _containers.RepeatedScalarFieldContainer[str]
    item_type: FieldType
    def __init__(self, kind: _Optional[_Union[FieldType.Kind, str]] = ..., enum_values: _Optional[_Iterable[str]] = ..., item_type: _Optional[_Union[FieldType, _Mapping]] = ...) -> None: ...

class SignatureField(_message.Message):
    __slots__ = ("name", "type", "description", "required")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: FieldType
    description: str
    required: bool
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[FieldType, _Mapping]] = ..., description: _Optional[str] = ..., required: _Optional[bool] = ...) -> None: ...

class SignatureSpec(_message.Message):
    __slots__ = ("description", "instructions", "input_fields", "output_fields")
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELDS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELDS_FIELD_NUMBER: _ClassVar[int]
    description: str
    instructions: str
    input_fields: _containers.RepeatedCompositeFieldContainer[SignatureField]
    output_fields: _containers.RepeatedCompositeFieldContainer[SignatureField]
    def __init__(self, description: _Optional[str] = ..., instructions: _Optional[str] = ..., input_fields: _Optional[_Iterable[_Union[SignatureField, _Mapping]]] = ..., output_fields: _Optional[_Iterable[_Union[SignatureField, _Mapping]]] = ...) -> None: ...

class SignatureVersion(_message.Message):
    __slots__ = ("name", "signature", "version", "spec", "metadata", "previous_version", "compatibility", "creator", "create_time", "revision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    COMPATIBILITY_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    signature: str
    version: str
    spec: SignatureSpec
    metadata: _struct_pb2.Struct
    previous_version: str
    compatibility: CompatibilityLevel
    creator: str
    create_time: _timestamp_pb2.Timestamp
    revision: int
    def __init__(self, name: _Optional[str] = ..., signature: _Optional[str] = ..., version: _Optional[str] = ..., spec: _Optional[_Union[SignatureSpec, _Mapping]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., previous_version: _Optional[str] = ..., compatibility: _Optional[_Union[CompatibilityLevel, str]] = ..., creator: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class Signature(_message.Message):
    __slots__ = ("name", "latest_version", "version_count", "create_time", "update_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    latest_version: str
    version_count: int
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., latest_version: _Optional[str] = ..., version_count: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RegisterSignatureRequest(_message.Message):
    __slots__ = ("signature", "version", "change_type", "spec", "metadata", "request_id")
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    signature: str
    version: str
    change_type: ChangeType
    spec: SignatureSpec
    metadata: _struct_pb2.Struct
    request_id: str
    def __init__(self, signature: _Optional[str] = ..., version: _Optional[str] = ..., change_type: _Optional[_Union[ChangeType, str]] = ..., spec: _Optional[_Union[SignatureSpec, _Mapping]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class RegisterSignatureResponse(_message.Message):
    __slots__ = ("signature_version", "warnings")
    SIGNATURE_VERSION_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    signature_version: SignatureVersion
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, signature_version: _Optional[_Union[SignatureVersion, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class GetSignatureRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetSignatureResponse(_message.Message):
    __slots__ = ("signature_version",)
    SIGNATURE_VERSION_FIELD_NUMBER: _ClassVar[int]
    signature_version: SignatureVersion
    def __init__(self, signature_version: _Optional[_Union[SignatureVersion, _Mapping]] = ...) -> None: ...

class ListSignaturesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "name_prefix")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NAME_PREFIX_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    name_prefix: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., name_prefix: _Optional[str] = ...) -> None: ...

class ListSignaturesResponse(_message.Message):
    __slots__ = ("signatures", "next_page_token", "total_size")
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    signatures: _containers.RepeatedCompositeFieldContainer[Signature]
    next_page_token: str
    total_size: int
    def __init__(self, signatures: _Optional[_Iterable[_Union[Signature, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_size: _Optional[int] = ...) -> None: ...

class ListSignatureVersionsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSignatureVersionsResponse(_message.Message):
    __slots__ = ("signature_versions", "next_page_token", "total_size")
    SIGNATURE_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    signature_versions: _containers.RepeatedCompositeFieldContainer[SignatureVersion]
    next_page_token: str
    total_size: int
    def __init__(self, signature_versions: _Optional[_Iterable[_Union[SignatureVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_size: _Optional[int] = ...) -> None: ...

class CheckSignatureCompatibilityRequest(_message.Message):
    __slots__ = ("base", "target", "proposed", "proposed_version")
    BASE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PROPOSED_FIELD_NUMBER: _ClassVar[int]
    PROPOSED_VERSION_FIELD_NUMBER: _ClassVar[int]
    base: str
    target: str
    proposed: SignatureSpec
    proposed_version: str
    def __init__(self, base: _Optional[str] = ..., target: _Optional[str] = ..., proposed: _Optional[_Union[SignatureSpec, _Mapping]] = ..., proposed_version: _Optional[str] = ...) -> None: ...

class SignatureChange(_message.Message):
    __slots__ = ("level", "path", "description")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    level: CompatibilityLevel
    path: str
    description: str
    def __init__(self, level: _Optional[_Union[CompatibilityLevel, str]] = ..., path: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class Compatibility(_message.Message):
    __slots__ = ("level", "required_change", "changes")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_CHANGE_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    level: CompatibilityLevel
    required_change: ChangeType
    changes: _containers.RepeatedCompositeFieldContainer[SignatureChange]
    def __init__(self, level: _Optional[_Union[CompatibilityLevel, str]] = ..., required_change: _Optional[_Union[ChangeType, str]] = ..., changes: _Optional[_Iterable[_Union[SignatureChange, _Mapping]]] = ...) -> None: ...

class CheckSignatureCompatibilityResponse(_message.Message):
    __slots__ = ("compatibility", "bump_sufficient")
    COMPATIBILITY_FIELD_NUMBER: _ClassVar[int]
    BUMP_SUFFICIENT_FIELD_NUMBER: _ClassVar[int]
    compatibility: Compatibility
    bump_sufficient: bool
    def __init__(self, compatibility: _Optional[_Union[Compatibility, _Mapping]] = ..., bump_sufficient: _Optional[bool] = ...) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("digest", "size_bytes", "media_type")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size_bytes: int
    media_type: str
    def __init__(self, digest: _Optional[str] = ..., size_bytes: _Optional[int] = ..., media_type: _Optional[str] = ...) -> None: ...

class PredictorSummary(_message.Message):
    __slots__ = ("name", "instructions", "demo_count", "field_count")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    DEMO_COUNT_FIELD_NUMBER: _ClassVar[int]
    FIELD_COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    instructions: str
    demo_count: int
    field_count: int
    def __init__(self, name: _Optional[str] = ..., instructions: _Optional[str] = ..., demo_count: _Optional[int] = ..., field_count: _Optional[int] = ...) -> None: ...

class ProgramVersionSpec(_message.Message):
    __slots__ = ("program", "version", "change_type", "media_type", "signature", "performance", "labels", "metadata")
    class PerformanceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PERFORMANCE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    program: str
    version: str
    change_type: ChangeType
    media_type: str
    signature: str
    performance: _containers.ScalarMap[str, float]
    labels: _containers.ScalarMap[str, str]
    metadata: _struct_pb2.Struct
    def __init__(self, program: _Optional[str] = ..., version: _Optional[str] = ..., change_type: _Optional[_Union[ChangeType, str]] = ..., media_type: _Optional[str] = ..., signature: _Optional[str] = ..., performance: _Optional[_Mapping[str, float]] = ..., labels: _Optional[_Mapping[str, str]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ProgramVersion(_message.Message):
    __slots__ = ("name", "program", "version", "artifact", "signature", "performance", "labels", "metadata", "previous_version", "change_type", "predictors", "yanked", "yank_reason", "creator", "create_time", "revision", "etag", "checks")
    class PerformanceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PERFORMANCE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    PREDICTORS_FIELD_NUMBER: _ClassVar[int]
    YANKED_FIELD_NUMBER: _ClassVar[int]
    YANK_REASON_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    name: str
    program: str
    version: str
    artifact: Artifact
    signature: str
    performance: _containers.ScalarMap[str, float]
    labels: _containers.ScalarMap[str, str]
    metadata: _struct_pb2.Struct
    previous_version: str
    change_type: ChangeType
    predictors: _containers.RepeatedCompositeFieldContainer[PredictorSummary]
    yanked: bool
    yank_reason: str
    creator: str
    create_time: _timestamp_pb2.Timestamp
    revision: int
    etag: str
    checks: _containers.RepeatedCompositeFieldContainer[_deployment_pb2.VersionCheck]
    def __init__(self, name: _Optional[str] = ..., program: _Optional[str] = ..., version: _Optional[str] = ..., artifact: _Optional[_Union[Artifact, _Mapping]] = ..., signature: _Optional[str] = ..., performance: _Optional[_Mapping[str, float]] = ..., labels: _Optional[_Mapping[str, str]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., previous_version: _Optional[str] = ..., change_type: _Optional[_Union[ChangeType, str]] = ..., predictors: _Optional[_Iterable[_Union[PredictorSummary, _Mapping]]] = ..., yanked: _Optional[bool] = ..., yank_reason: _Optional[str] = ..., creator: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revision: _Optional[int] = ..., etag: _Optional[str] = ..., checks: _Optional[_Iterable[_Union[_deployment_pb2.VersionCheck, _Mapping]]] = ...) -> None: ...

class Program(_message.Message):
    __slots__ = ("name", "latest_version", "version_count", "labels", "signature", "create_time", "update_time", "environments")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_COUNT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    latest_version: str
    version_count: int
    labels: _containers.ScalarMap[str, str]
    signature: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    environments: _containers.RepeatedCompositeFieldContainer[ProgramEnvironment]
    def __init__(self, name: _Optional[str] = ..., latest_version: _Optional[str] = ..., version_count: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., signature: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., environments: _Optional[_Iterable[_Union[ProgramEnvironment, _Mapping]]] = ...) -> None: ...

class ProgramEnvironment(_message.Message):
    __slots__ = ("environment", "target", "deployment", "update_time")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    environment: str
    target: _deployment_pb2.Target
    deployment: _deployment_pb2.Deployment
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, environment: _Optional[str] = ..., target: _Optional[_Union[_deployment_pb2.Target, _Mapping]] = ..., deployment: _Optional[_Union[_deployment_pb2.Deployment, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RegisterProgramRequest(_message.Message):
    __slots__ = ("spec", "artifact", "request_id")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    spec: ProgramVersionSpec
    artifact: bytes
    request_id: str
    def __init__(self, spec: _Optional[_Union[ProgramVersionSpec, _Mapping]] = ..., artifact: _Optional[bytes] = ..., request_id: _Optional[str] = ...) -> None: ...

class RegisterProgramResponse(_message.Message):
    __slots__ = ("program_version", "created")
    PROGRAM_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    program_version: ProgramVersion
    created: bool
    def __init__(self, program_version: _Optional[_Union[ProgramVersion, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class UploadProgramHeader(_message.Message):
    __slots__ = ("spec", "request_id", "expected_digest", "size_bytes")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    spec: ProgramVersionSpec
    request_id: str
    expected_digest: str
    size_bytes: int
    def __init__(self, spec: _Optional[_Union[ProgramVersionSpec, _Mapping]] = ..., request_id: _Optional[str] = ..., expected_digest: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class UploadProgramRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadProgramHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UploadProgramHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadProgramResponse(_message.Message):
    __slots__ = ("program_version", "created")
    PROGRAM_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    program_version: ProgramVersion
    created: bool
    def __init__(self, program_version: _Optional[_Union[ProgramVersion, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetProgramRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetProgramResponse(_message.Message):
    __slots__ = ("program",)
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    program: Program
    def __init__(self, program: _Optional[_Union[Program, _Mapping]] = ...) -> None: ...

class GetProgramVersionRequest(_message.Message):
    __slots__ = ("name", "environment")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    environment: str
    def __init__(self, name: _Optional[str] = ..., environment: _Optional[str] = ...) -> None: ...

class GetProgramVersionResponse(_message.Message):
    __slots__ = ("program_version",)
    PROGRAM_VERSION_FIELD_NUMBER: _ClassVar[int]
    program_version: ProgramVersion
    def __init__(self, program_version: _Optional[_Union[ProgramVersion, _Mapping]] = ...) -> None: ...

class ListProgramsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "name_prefix", "labels", "environment")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NAME_PREFIX_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    name_prefix: str
    labels: _containers.ScalarMap[str, str]
    environment: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., name_prefix: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., environment: _Optional[str] = ...) -> None: ...

class ListProgramsResponse(_message.Message):
    __slots__ = ("programs", "next_page_token", "total_size")
    PROGRAMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    programs: _containers.RepeatedCompositeFieldContainer[Program]
    next_page_token: str
    total_size: int
    def __init__(self, programs: _Optional[_Iterable[_Union[Program, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_size: _Optional[int] = ...) -> None: ...

class ListProgramVersionsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListProgramVersionsResponse(_message.Message):
    __slots__ = ("program_versions", "next_page_token", "total_size")
    PROGRAM_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    program_versions: _containers.RepeatedCompositeFieldContainer[ProgramVersion]
    next_page_token: str
    total_size: int
    def __init__(self, program_versions: _Optional[_Iterable[_Union[ProgramVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_size: _Optional[int] = ...) -> None: ...

class GetArtifactRequest(_message.Message):
    __slots__ = ("program", "digest")
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    program: str
    digest: str
    def __init__(self, program: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...

class GetArtifactResponse(_message.Message):
    __slots__ = ("artifact", "offset", "data")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    artifact: Artifact
    offset: int
    data: bytes
    def __init__(self, artifact: _Optional[_Union[Artifact, _Mapping]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class CompareProgramVersionsRequest(_message.Message):
    __slots__ = ("base", "target")
    BASE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    base: str
    target: str
    def __init__(self, base: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class MetricDiff(_message.Message):
    __slots__ = ("metric", "base_value", "target_value", "change", "change_percent", "higher_is_better")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    BASE_VALUE_FIELD_NUMBER: _ClassVar[int]
    TARGET_VALUE_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    CHANGE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    HIGHER_IS_BETTER_FIELD_NUMBER: _ClassVar[int]
    metric: str
    base_value: float
    target_value: float
    change: float
    change_percent: float
    higher_is_better: bool
    def __init__(self, metric: _Optional[str] = ..., base_value: _Optional[float] = ..., target_value: _Optional[float] = ..., change: _Optional[float] = ..., change_percent: _Optional[float] = ..., higher_is_better: _Optional[bool] = ...) -> None: ...

class ConfigurationChange(_message.Message):
    __slots__ = ("path", "base_value", "target_value")
    PATH_FIELD_NUMBER: _ClassVar[int]
    BASE_VALUE_FIELD_NUMBER: _ClassVar[int]
    TARGET_VALUE_FIELD_NUMBER: _ClassVar[int]
    path: str
    base_value: str
    target_value: str
    def __init__(self, path: _Optional[str] = ..., base_value: _Optional[str] = ..., target_value: _Optional[str] = ...) -> None: ...

class GetUpgradePathRequest(_message.Message):
    __slots__ = ("program", "from_version", "to_version")
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    program: str
    from_version: str
    to_version: str
    def __init__(self, program: _Optional[str] = ..., from_version: _Optional[str] = ..., to_version: _Optional[str] = ...) -> None: ...

class CompareProgramVersionsResponse(_message.Message):
    __slots__ = ("base", "target", "performance_diff", "configuration_diff", "compatibility", "recommendation", "reasons")
    BASE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PERFORMANCE_DIFF_FIELD_NUMBER: _ClassVar[int]
    CONFIGURATION_DIFF_FIELD_NUMBER: _ClassVar[int]
    COMPATIBILITY_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    base: ProgramVersion
    target: ProgramVersion
    performance_diff: _containers.RepeatedCompositeFieldContainer[MetricDiff]
    configuration_diff: _containers.RepeatedCompositeFieldContainer[ConfigurationChange]
    compatibility: Compatibility
    recommendation: Recommendation
    reasons: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, base: _Optional[_Union[ProgramVersion, _Mapping]] = ..., target: _Optional[_Union[ProgramVersion, _Mapping]] = ..., performance_diff: _Optional[_Iterable[_Union[MetricDiff, _Mapping]]] = ..., configuration_diff: _Optional[_Iterable[_Union[ConfigurationChange, _Mapping]]] = ..., compatibility: _Optional[_Union[Compatibility, _Mapping]] = ..., recommendation: _Optional[_Union[Recommendation, str]] = ..., reasons: _Optional[_Iterable[str]] = ...) -> None: ...

class UpgradeStep(_message.Message):
    __slots__ = ("from_version", "to_version", "compatibility", "breaking_changes", "recommended_tests")
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    COMPATIBILITY_FIELD_NUMBER: _ClassVar[int]
    BREAKING_CHANGES_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDED_TESTS_FIELD_NUMBER: _ClassVar[int]
    from_version: str
    to_version: str
    compatibility: Compatibility
    breaking_changes: _containers.RepeatedScalarFieldContainer[str]
    recommended_tests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, from_version: _Optional[str] = ..., to_version: _Optional[str] = ..., compatibility: _Optional[_Union[Compatibility, _Mapping]] = ..., breaking_changes: _Optional[_Iterable[str]] = ..., recommended_tests: _Optional[_Iterable[str]] = ...) -> None: ...

class GetUpgradePathResponse(_message.Message):
    __slots__ = ("steps",)
    STEPS_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedCompositeFieldContainer[UpgradeStep]
    def __init__(self, steps: _Optional[_Iterable[_Union[UpgradeStep, _Mapping]]] = ...) -> None: ...

class YankProgramVersionRequest(_message.Message):
    __slots__ = ("name", "reason", "undo", "etag", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    UNDO_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    undo: bool
    etag: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ..., undo: _Optional[bool] = ..., etag: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class YankProgramVersionResponse(_message.Message):
    __slots__ = ("program_version",)
    PROGRAM_VERSION_FIELD_NUMBER: _ClassVar[int]
    program_version: ProgramVersion
    def __init__(self, program_version: _Optional[_Union[ProgramVersion, _Mapping]] = ...) -> None: ...

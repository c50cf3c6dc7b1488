"""RegistryService's converters: signatures, programs, comparisons and upgrade paths."""

from __future__ import annotations

from typing import Any

from dspy_registry.v1 import registry_pb2 as pb

from ...domain import compare as comparing
from ...domain import programs, signatures
from ...domain.access import principal_name
from ...domain.model import ProgramSummary, ProgramVersion, SignatureSummary, SignatureVersion
from ...errors import InvalidArgument
from ...usecases.registry import SignatureDraft
from .common import dict_to_struct, struct_to_dict, timestamp


def change_type(value: int, field: str) -> int | None:
    if value == pb.CHANGE_TYPE_UNSPECIFIED:
        return None
    if value not in (pb.CHANGE_TYPE_PATCH, pb.CHANGE_TYPE_MINOR, pb.CHANGE_TYPE_MAJOR):
        raise InvalidArgument.one(field, f"unknown change type {value}")
    return value  # the proto numbers are the domain's ChangeType numbers


# -- signatures ----------------------------------------------------------------------------


def field_type_from_proto(t: pb.FieldType, path: str, depth: int = 0) -> signatures.FieldType:
    try:
        kind = signatures.Kind(t.kind)
    except ValueError:
        raise InvalidArgument.one(f"{path}.kind", "set a kind: STRING, INTEGER, FLOAT, ...") from None
    item = None
    if t.HasField("item_type"):
        if depth >= signatures.MAX_LIST_DEPTH:
            raise InvalidArgument.one(f"{path}.item_type", "lists nest too deep")
        item = field_type_from_proto(t.item_type, f"{path}.item_type", depth + 1)
    return signatures.FieldType(kind, tuple(t.enum_values), item)


def field_type_to_proto(t: signatures.FieldType) -> pb.FieldType:
    out = pb.FieldType(kind=int(t.kind), enum_values=list(t.enum_values))  # type: ignore[arg-type]
    if t.item_type is not None:
        out.item_type.CopyFrom(field_type_to_proto(t.item_type))
    return out


def spec_from_proto(spec: pb.SignatureSpec, path: str) -> signatures.SignatureSpec:
    def fields(group: str, items: Any) -> tuple[signatures.SignatureField, ...]:
        return tuple(
            signatures.SignatureField(
                name=f.name,
                type=field_type_from_proto(f.type, f"{path}.{group}[{i}].type"),
                description=f.description,
                required=f.required if f.HasField("required") else True,
            )
            for i, f in enumerate(items)
        )

    return signatures.SignatureSpec(
        description=spec.description,
        instructions=spec.instructions,
        inputs=fields("input_fields", spec.input_fields),
        outputs=fields("output_fields", spec.output_fields),
    )


def spec_to_proto(spec: signatures.SignatureSpec) -> pb.SignatureSpec:
    def fields(items: tuple[signatures.SignatureField, ...]) -> list[pb.SignatureField]:
        return [
            pb.SignatureField(
                name=f.name, type=field_type_to_proto(f.type), description=f.description, required=f.required
            )
            for f in items
        ]

    return pb.SignatureSpec(
        description=spec.description,
        instructions=spec.instructions,
        input_fields=fields(spec.inputs),
        output_fields=fields(spec.outputs),
    )


def signature_draft(request: pb.RegisterSignatureRequest) -> SignatureDraft:
    return SignatureDraft(
        signature=request.signature,
        version=request.version,
        change_type=change_type(request.change_type, "change_type"),
        spec=spec_from_proto(request.spec, "spec"),
        metadata=struct_to_dict(request.metadata, "metadata"),
    )


def signature_version(sv: SignatureVersion) -> pb.SignatureVersion:
    return pb.SignatureVersion(
        name=sv.name,
        signature=sv.signature,
        version=sv.version,
        spec=spec_to_proto(sv.spec),
        metadata=dict_to_struct(sv.metadata),
        previous_version=sv.previous_version,
        compatibility=int(sv.compatibility) if sv.compatibility else 0,  # type: ignore[arg-type]
        creator=principal_name(sv.creator),
        create_time=timestamp(sv.create_time),
        revision=sv.revision,
    )


def signature_summary(s: SignatureSummary) -> pb.Signature:
    return pb.Signature(
        name=f"signatures/{s.signature}",
        latest_version=s.latest_version,
        version_count=s.version_count,
        create_time=timestamp(s.create_time),
        update_time=timestamp(s.update_time),
    )


def compatibility(c: signatures.Compatibility) -> pb.Compatibility:
    return pb.Compatibility(
        level=int(c.level),  # type: ignore[arg-type]
        required_change=c.required_change or 0,  # type: ignore[arg-type]
        changes=[
            pb.SignatureChange(level=int(ch.level), path=ch.path, description=ch.description)  # type: ignore[arg-type]
            for ch in c.changes
        ],
    )


# -- programs ------------------------------------------------------------------------------


def program_draft(spec: pb.ProgramVersionSpec) -> programs.ProgramDraft:
    return programs.ProgramDraft(
        program=spec.program,
        version=spec.version,
        change_type=change_type(spec.change_type, "spec.change_type"),
        media_type=spec.media_type or programs.DSPY_MEDIA_TYPE,
        signature=spec.signature,
        performance=dict(spec.performance),
        labels=dict(spec.labels),
        metadata=struct_to_dict(spec.metadata, "spec.metadata"),
    )


def program_version(pv: ProgramVersion) -> pb.ProgramVersion:
    return pb.ProgramVersion(
        name=pv.name,
        program=pv.program,
        version=pv.version,
        artifact=pb.Artifact(digest=pv.digest, size_bytes=pv.size_bytes, media_type=pv.media_type),
        signature=pv.signature_name,
        performance=pv.performance,
        labels=pv.labels,
        metadata=dict_to_struct(pv.metadata),
        previous_version=pv.previous_version,
        change_type=pv.change_type or 0,  # type: ignore[arg-type]
        predictors=[
            pb.PredictorSummary(
                name=p.name, instructions=p.instructions, demo_count=p.demo_count, field_count=p.field_count
            )
            for p in pv.predictors
        ],
        yanked=pv.yanked,
        yank_reason=pv.yank_reason,
        creator=principal_name(pv.creator),
        create_time=timestamp(pv.create_time),
        revision=pv.revision,
        etag=pv.etag,
    )


def program_summary(p: ProgramSummary) -> pb.Program:
    return pb.Program(
        name=f"programs/{p.program}",
        latest_version=p.latest_version,
        version_count=p.version_count,
        labels=p.labels,
        signature=p.signature,
        create_time=timestamp(p.create_time),
        update_time=timestamp(p.update_time),
    )


def comparison(
    base: ProgramVersion, target: ProgramVersion, c: comparing.Comparison
) -> pb.CompareProgramVersionsResponse:
    return pb.CompareProgramVersionsResponse(
        base=program_version(base),
        target=program_version(target),
        performance_diff=[
            pb.MetricDiff(
                metric=d.metric,
                base_value=d.base_value,
                target_value=d.target_value,
                change=d.change,
                change_percent=d.change_percent,
                higher_is_better=d.higher_is_better,
            )
            for d in c.performance
        ],
        configuration_diff=[
            pb.ConfigurationChange(path=x.path, base_value=x.base_value, target_value=x.target_value)
            for x in c.configuration
        ],
        compatibility=compatibility(c.compatibility),
        recommendation=int(c.recommendation),  # type: ignore[arg-type]
        reasons=list(c.reasons),
    )


def upgrade_step(s: comparing.UpgradeStep) -> pb.UpgradeStep:
    return pb.UpgradeStep(
        from_version=s.from_version,
        to_version=s.to_version,
        compatibility=compatibility(s.compatibility),
        breaking_changes=list(s.breaking_changes),
        recommended_tests=list(s.recommended_tests),
    )

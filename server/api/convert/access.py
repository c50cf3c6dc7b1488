"""AccessService's converters: principals, tokens, permissions and audit events."""

from __future__ import annotations

from dspy_registry.v1 import access_pb2 as pb

from ...domain.access import AuditEvent, Grant, Principal, Token, principal_name
from .common import timestamp


def principal_proto(p: Principal) -> pb.Principal:
    return pb.Principal(
        name=p.resource_name,
        type=int(p.type),  # type: ignore[arg-type]
        display_name=p.display_name,
        team=p.team,
        email=p.email,
        certificate_subjects=list(p.certificate_subjects),
        disabled=p.disabled,
        disable_reason=p.disable_reason,
        creator=principal_name(p.creator),
        create_time=timestamp(p.create_time),
        update_time=timestamp(p.update_time),
        revision=p.revision,
        etag=p.etag,
    )


def token_proto(t: Token) -> pb.Token:
    out = pb.Token(
        name=t.resource_name,
        description=t.description,
        secret_prefix=t.secret_prefix,
        revoked=t.revoked,
        creator=principal_name(t.creator),
        create_time=timestamp(t.create_time),
        revision=t.revision,
    )
    if t.expire_time is not None:
        out.expire_time.CopyFrom(timestamp(t.expire_time))
    if t.revoke_time is not None:
        out.revoke_time.CopyFrom(timestamp(t.revoke_time))
    if t.last_use_time is not None:
        out.last_use_time.CopyFrom(timestamp(t.last_use_time))
    return out


def permission_proto(g: Grant) -> pb.Permission:
    return pb.Permission(
        name=g.resource_name,
        principal=f"principals/{g.principal}",
        action=int(g.action),  # type: ignore[arg-type]
        resource=g.resource,
        creator=principal_name(g.creator),
        create_time=timestamp(g.create_time),
        revision=g.revision,
    )


def audit_proto(e: AuditEvent) -> pb.AuditEvent:
    return pb.AuditEvent(
        name=e.resource_name,
        time=timestamp(e.time),
        principal=f"principals/{e.principal}" if e.principal else "",
        token=e.token,
        method=e.method,
        resource=e.resource,
        request_id=e.request_id,
        outcome=int(e.outcome),  # type: ignore[arg-type]
        code=e.code,
        message=e.message,
        revision=e.revision,
        peer=e.peer,
    )

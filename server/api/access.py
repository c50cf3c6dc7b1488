"""AccessService: parse, call the access use cases, map back. No rules here."""

from __future__ import annotations

import re

from dspy_registry.v1 import access_pb2 as pb

from .. import release
from ..calls import serving
from ..domain import access
from ..domain.access import Action, AuditFilter, Grant, NewToken, Outcome, Principal, Token
from ..domain.names import check_name, check_text
from ..errors import InvalidArgument, quote
from ..usecases.access import Access, PrincipalDraft
from .context import Context
from .convert.access import audit_proto, permission_proto, principal_proto, token_proto
from .convert.common import duration_field, time_field
from .guard import Guard, identity
from .mutations import answer, idempotency

TOKEN_ID_RE = re.compile(r"[a-z0-9]{12}")


def _id(value: str, field: str, shape: str) -> str:
    if not TOKEN_ID_RE.fullmatch(value):
        raise InvalidArgument.one(field, f"must look like {shape}")
    return value


def _principal_name(value: str, field: str) -> str:
    """`principals/{p}` -> `p`."""
    parts = value.split("/")
    if len(parts) != 2 or parts[0] != "principals":
        raise InvalidArgument.one(field, f"{quote(value)} must look like principals/{{principal}}")
    return check_name(parts[1], field)


def _action(value: int, field: str, *, required: bool = True) -> Action | None:
    if value == 0 and not required:
        return None
    try:
        return Action(value)
    except ValueError:
        raise InvalidArgument.one(
            field, "set an action: READ, REGISTER, DEPLOY, ROLLBACK, APPROVE or ADMIN"
        ) from None


def _created_token(issued: NewToken) -> pb.CreateTokenResponse:
    return pb.CreateTokenResponse(
        token=token_proto(issued.token), secret=access.bearer_token(issued.token.id, issued.secret)
    )


def _recorded_token(issued: NewToken) -> pb.CreateTokenResponse:
    """What a retry gets back: the token, never the secret (it is stored nowhere)."""
    return pb.CreateTokenResponse(token=token_proto(issued.token))


def _granted(result: tuple[Grant, bool]) -> pb.GrantPermissionResponse:
    return pb.GrantPermissionResponse(permission=permission_proto(result[0]), created=result[1])


class AccessServicer:
    def __init__(self, access_: Access, guard: Guard) -> None:
        self.access = access_
        self.guard = guard

    async def WhoAmI(self, request: pb.WhoAmIRequest, context: Context) -> pb.WhoAmIResponse:
        who = identity()
        method = (
            pb.AUTHENTICATION_METHOD_TOKEN
            if who.token is not None
            else pb.AUTHENTICATION_METHOD_CLIENT_CERTIFICATE
        )
        grants = await self.access.grants(who.name) if self.guard.enabled else ()
        response = pb.WhoAmIResponse(
            principal=principal_proto(who.principal),
            authentication_method=method,
            permissions=[permission_proto(g) for g in grants],
            server_version=release.version(),
        )
        response.server_time.FromDatetime(self.access.clock.now())
        if who.token is not None:
            response.token.CopyFrom(token_proto(who.token))
        return response

    async def CreatePrincipal(
        self, request: pb.CreatePrincipalRequest, context: Context
    ) -> pb.CreatePrincipalResponse:
        p = request.principal
        try:
            kind = access.PrincipalType(p.type or access.PrincipalType.USER)
        except ValueError:
            raise InvalidArgument.one("principal.type", "USER or SERVICE_ACCOUNT") from None
        draft = PrincipalDraft(
            name=request.principal_id,
            type=kind,
            display_name=p.display_name,
            team=p.team,
            email=p.email,
            certificate_subjects=tuple(p.certificate_subjects),
        )

        def build(x: Principal) -> pb.CreatePrincipalResponse:
            return pb.CreatePrincipalResponse(principal=principal_proto(x))

        result = await self.access.create_principal(
            serving(), draft, idempotency(request, "CreatePrincipal", build)
        )
        return answer(result, pb.CreatePrincipalResponse, build)

    async def ListPrincipals(
        self, request: pb.ListPrincipalsRequest, context: Context
    ) -> pb.ListPrincipalsResponse:
        try:
            kind = access.PrincipalType(request.type) if request.type else None
        except ValueError:
            raise InvalidArgument.one("type", "USER or SERVICE_ACCOUNT") from None
        page = await self.access.list_principals(
            kind, request.team, request.include_disabled, request.page_size, request.page_token
        )
        return pb.ListPrincipalsResponse(
            principals=[principal_proto(p) for p in page.items],
            next_page_token=page.next_page_token,
            total_size=page.total_size,
        )

    async def DisablePrincipal(
        self, request: pb.DisablePrincipalRequest, context: Context
    ) -> pb.DisablePrincipalResponse:
        name = _principal_name(request.name, "name")

        def build(x: Principal) -> pb.DisablePrincipalResponse:
            return pb.DisablePrincipalResponse(principal=principal_proto(x))

        result = await self.access.disable_principal(
            serving(),
            name,
            request.reason,
            request.undo,
            request.etag,
            idempotency(request, "DisablePrincipal", build),
        )
        return answer(result, pb.DisablePrincipalResponse, build)

    async def CreateToken(self, request: pb.CreateTokenRequest, context: Context) -> pb.CreateTokenResponse:
        principal = _principal_name(request.parent, "parent")
        expire = time_field(request, "expire_time")
        ttl = duration_field(request, "ttl")
        result = await self.access.create_token(
            serving(),
            principal,
            request.description,
            expire,
            ttl,
            idempotency(request, "CreateToken", _recorded_token),
        )
        return answer(result, pb.CreateTokenResponse, _created_token)

    async def ListTokens(self, request: pb.ListTokensRequest, context: Context) -> pb.ListTokensResponse:
        principal = (
            None if request.parent in ("", "principals/-") else _principal_name(request.parent, "parent")
        )
        page = await self.access.list_tokens(
            principal, request.include_inactive, request.page_size, request.page_token
        )
        return pb.ListTokensResponse(
            tokens=[token_proto(t) for t in page.items],
            next_page_token=page.next_page_token,
            total_size=page.total_size,
        )

    async def RevokeToken(self, request: pb.RevokeTokenRequest, context: Context) -> pb.RevokeTokenResponse:
        parts = request.name.split("/")
        if len(parts) != 4 or parts[0] != "principals" or parts[2] != "tokens":
            raise InvalidArgument.one("name", "must look like principals/{principal}/tokens/{token}")
        check_name(parts[1], "name")
        _id(parts[3], "name", "principals/{principal}/tokens/{12 characters of a-z0-9}")

        def build(t: Token) -> pb.RevokeTokenResponse:
            return pb.RevokeTokenResponse(token=token_proto(t))

        result = await self.access.revoke_token(
            serving(), parts[1], parts[3], idempotency(request, "RevokeToken", build)
        )
        return answer(result, pb.RevokeTokenResponse, build)

    async def GrantPermission(
        self, request: pb.GrantPermissionRequest, context: Context
    ) -> pb.GrantPermissionResponse:
        principal = _principal_name(request.principal, "principal")
        action = _action(request.action, "action")
        assert action is not None
        result = await self.access.grant(
            serving(), principal, action, request.resource, idempotency(request, "GrantPermission", _granted)
        )
        return answer(result, pb.GrantPermissionResponse, _granted)

    async def RevokePermission(
        self, request: pb.RevokePermissionRequest, context: Context
    ) -> pb.RevokePermissionResponse:
        parts = request.name.split("/")
        if len(parts) != 2 or parts[0] != "permissions":
            raise InvalidArgument.one("name", "must look like permissions/{permission}")
        _id(parts[1], "name", "permissions/{12 characters of a-z0-9}")

        def build(g: Grant) -> pb.RevokePermissionResponse:
            return pb.RevokePermissionResponse(permission=permission_proto(g))

        result = await self.access.revoke_grant(
            serving(), parts[1], idempotency(request, "RevokePermission", build)
        )
        return answer(result, pb.RevokePermissionResponse, build)

    async def ListPermissions(
        self, request: pb.ListPermissionsRequest, context: Context
    ) -> pb.ListPermissionsResponse:
        principal = _principal_name(request.principal, "principal") if request.principal else ""
        action = _action(request.action, "action", required=False)
        if request.resource:
            access.check_glob(request.resource, "resource")
        page = await self.access.list_grants(
            principal, action, request.resource, request.page_size, request.page_token
        )
        return pb.ListPermissionsResponse(
            permissions=[permission_proto(g) for g in page.items],
            next_page_token=page.next_page_token,
            total_size=page.total_size,
        )

    async def CheckPermission(
        self, request: pb.CheckPermissionRequest, context: Context
    ) -> pb.CheckPermissionResponse:
        who = identity()
        principal = _principal_name(request.principal, "principal") if request.principal else who.name
        action = _action(request.action, "action")
        assert action is not None
        access.check_glob(request.resource, "resource")
        if principal != who.name and self.guard.enabled:
            # Asking about someone else reveals their grants: admin on `*` only.
            await self.access.authorize(who, Action.ADMIN, [access.ALL])
        if not self.guard.enabled:
            return pb.CheckPermissionResponse(allowed=True, reason="authentication is off")
        grant, reason = await self.access.check(principal, action, request.resource)
        response = pb.CheckPermissionResponse(allowed=grant is not None, reason=reason)
        if grant is not None:
            response.permission.CopyFrom(permission_proto(grant))
        return response

    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Context
    ) -> pb.ListAuditEventsResponse:
        try:
            outcomes = tuple(Outcome(o) for o in request.outcomes)
        except ValueError:
            raise InvalidArgument.one("outcomes", "SUCCEEDED, DENIED or FAILED") from None
        f = AuditFilter(
            principal=_principal_name(request.principal, "principal") if request.principal else "",
            resource=check_text(request.resource, "resource", 512),
            method=check_text(request.method, "method", 256),
            start_time=time_field(request, "start_time"),
            end_time=time_field(request, "end_time"),
            outcomes=outcomes,
            codes=tuple(request.codes),
        )
        page = await self.access.list_audit(f, request.page_size, request.page_token)
        return pb.ListAuditEventsResponse(
            audit_events=[audit_proto(e) for e in page.items],
            next_page_token=page.next_page_token,
            total_size=page.total_size,
        )

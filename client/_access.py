"""AccessService's RPCs (principals, tokens, grants, the audit log), as `Registry` methods."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timedelta

from dspy_registry.v1 import access_pb2 as apb

from . import _convert as convert
from ._base import ClientBase


class AccessMethods(ClientBase):
    async def who_am_i(self) -> apb.WhoAmIResponse:
        """The calling principal, how it authenticated, and its grants (WhoAmI).

        Returns:
            The response: `.principal`, `.authentication_method`, `.token` (when a token was used)
            and `.permissions`.

        Raises:
            UnauthenticatedError: No, bad, revoked or expired token, or a disabled principal.
        """
        return await self._call(self._access_service.WhoAmI, apb.WhoAmIRequest(), apb.WhoAmIResponse)

    async def create_principal(
        self,
        principal_id: str,
        *,
        type: str | int = "user",
        display_name: str = "",
        team: str = "",
        email: str = "",
        certificate_subjects: Iterable[str] = (),
    ) -> apb.Principal:
        """Creates a user or a service account (CreatePrincipal).

        Args:
            principal_id: Its id (or `principals/<id>`).
            type: "user" or "service_account".
            display_name: A name for people.
            team: Its team.
            email: Its e-mail address.
            certificate_subjects: Client certificate subjects (`CN=pod-7,O=...`) that authenticate as it
                over mutual TLS.

        Returns:
            The principal.

        Raises:
            InvalidArgumentError: A bad id or field.
            AlreadyExistsError: The id is taken.
        """
        response = await self._call(
            self._access_service.CreatePrincipal,
            apb.CreatePrincipalRequest(
                principal_id=convert.short_name("principals", principal_id),
                principal=apb.Principal(
                    type=convert.enum(apb.PrincipalType, "PRINCIPAL_TYPE_", type),  # type: ignore[arg-type]
                    display_name=display_name,
                    team=team,
                    email=email,
                    certificate_subjects=list(certificate_subjects),
                ),
                request_id=convert.request_id(),
            ),
            apb.CreatePrincipalResponse,
        )
        return response.principal

    async def list_principals(
        self,
        *,
        type: str | int | None = None,
        team: str = "",
        include_disabled: bool = False,
        page_size: int = 0,
    ) -> AsyncIterator[apb.Principal]:
        """Principals by name (ListPrincipals), fetched a page at a time.

        Args:
            type: Only users ("user") or service accounts ("service_account").
            team: Only those of this team.
            include_disabled: Disabled ones too.
            page_size: Principals per page (0: the server's default).

        Returns:
            An async iterator of the principals.

        Raises:
            InvalidArgumentError: A negative `page_size`.
        """
        request = apb.ListPrincipalsRequest(
            type=convert.enum(apb.PrincipalType, "PRINCIPAL_TYPE_", type),  # type: ignore[arg-type]
            team=team,
            include_disabled=include_disabled,
            page_size=page_size,
        )
        async for item in self._pages(
            self._access_service.ListPrincipals, request, apb.ListPrincipalsResponse, "principals"
        ):
            yield item

    async def disable_principal(
        self, principal: str, *, reason: str = "", undo: bool = False, etag: str = ""
    ) -> apb.Principal:
        """Disables a principal, whose calls then fail at once, or enables it again (DisablePrincipal).

        Args:
            principal: Its id (or `principals/<id>`).
            reason: Why (required when disabling).
            undo: Enable it again instead.
            etag: The principal's etag as last read: the call fails if it changed since.

        Returns:
            The principal as it now is.

        Raises:
            InvalidArgumentError: No `reason` to disable.
            NotFoundError: No such principal.
            FailedPreconditionError: The principal is the caller.
            ConflictError: `etag` does not match.
        """
        response = await self._call(
            self._access_service.DisablePrincipal,
            apb.DisablePrincipalRequest(
                name=convert.full_name("principals", principal),
                reason=reason,
                undo=undo,
                etag=etag,
                request_id=convert.request_id(),
            ),
            apb.DisablePrincipalResponse,
        )
        return response.principal

    async def create_token(
        self,
        principal: str,
        *,
        description: str = "",
        ttl: timedelta | float | None = None,
        expire_time: datetime | None = None,
    ) -> apb.CreateTokenResponse:
        """A new bearer token for a principal (CreateToken); the server keeps only its hash.

        Args:
            principal: Its id (or `principals/<id>`).
            description: What the token is for.
            ttl: How long it lasts, in seconds or as a timedelta (neither this nor `expire_time`: forever).
            expire_time: When it expires.

        Returns:
            The response: `.secret`, shown only here, and `.token`.

        Raises:
            NotFoundError: No such principal.
            InvalidArgumentError: An expiry in the past.
            FailedPreconditionError: The principal is disabled.
        """
        return await self._call(
            self._access_service.CreateToken,
            apb.CreateTokenRequest(
                parent=convert.full_name("principals", principal),
                description=description,
                ttl=convert.duration(ttl),
                expire_time=convert.timestamp(expire_time),
                request_id=convert.request_id(),
            ),
            apb.CreateTokenResponse,
        )

    async def list_tokens(
        self, principal: str = "-", *, include_inactive: bool = False, page_size: int = 0
    ) -> AsyncIterator[apb.Token]:
        """A principal's tokens, or everyone's with "-", never the secrets (ListTokens).

        Args:
            principal: Its id (or `principals/<id>`), or "-" for all.
            include_inactive: Revoked and expired ones too.
            page_size: Tokens per page (0: the server's default).

        Returns:
            An async iterator of the tokens.

        Raises:
            NotFoundError: No such principal.
            InvalidArgumentError: A negative `page_size`.
        """
        request = apb.ListTokensRequest(
            parent=convert.full_name("principals", principal),
            include_inactive=include_inactive,
            page_size=page_size,
        )
        async for item in self._pages(
            self._access_service.ListTokens, request, apb.ListTokensResponse, "tokens"
        ):
            yield item

    async def revoke_token(self, name: str) -> apb.Token:
        """Revokes a token, whose calls then fail at once (RevokeToken); a revoked one is returned as is.

        Args:
            name: The token's resource name, principals/{principal}/tokens/{token}.

        Returns:
            The token, revoked.

        Raises:
            NotFoundError: No such token.
        """
        response = await self._call(
            self._access_service.RevokeToken,
            apb.RevokeTokenRequest(name=name, request_id=convert.request_id()),
            apb.RevokeTokenResponse,
        )
        return response.token

    async def grant_permission(self, principal: str, *, action: str | int, resource: str) -> apb.Permission:
        """Grants a principal an action on a program or signature name or glob (GrantPermission).

        Granting a grant that exists returns it.

        Args:
            principal: Its id (or `principals/<id>`).
            action: "read", "register", "deploy", "rollback", "approve", "admin" or "check".
            resource: A program or signature name, or a glob (`sentiment_*`, `*`).

        Returns:
            The grant.

        Raises:
            InvalidArgumentError: A bad action or pattern.
            NotFoundError: No such principal.
            FailedPreconditionError: The principal is disabled.
        """
        response = await self._call(
            self._access_service.GrantPermission,
            apb.GrantPermissionRequest(
                principal=convert.full_name("principals", principal),
                action=convert.enum(apb.Action, "ACTION_", action),  # type: ignore[arg-type]
                resource=resource,
                request_id=convert.request_id(),
            ),
            apb.GrantPermissionResponse,
        )
        return response.permission

    async def revoke_permission(self, permission: str) -> apb.Permission:
        """Removes a grant (RevokePermission).

        Args:
            permission: The grant's id (or `permissions/<id>`).

        Returns:
            The grant removed.

        Raises:
            NotFoundError: No such grant.
        """
        response = await self._call(
            self._access_service.RevokePermission,
            apb.RevokePermissionRequest(
                name=convert.full_name("permissions", permission), request_id=convert.request_id()
            ),
            apb.RevokePermissionResponse,
        )
        return response.permission

    async def list_permissions(
        self,
        *,
        principal: str = "",
        action: str | int | None = None,
        resource: str = "",
        page_size: int = 0,
    ) -> AsyncIterator[apb.Permission]:
        """Grants (ListPermissions), fetched a page at a time.

        Args:
            principal: Only those of this principal.
            action: Only those of this action.
            resource: Only grants whose pattern is exactly this.
            page_size: Grants per page (0: the server's default).

        Returns:
            An async iterator of the grants.

        Raises:
            InvalidArgumentError: A negative `page_size`.
        """
        request = apb.ListPermissionsRequest(
            principal=convert.principal_filter(principal),
            action=convert.enum(apb.Action, "ACTION_", action),  # type: ignore[arg-type]
            resource=resource,
            page_size=page_size,
        )
        async for item in self._pages(
            self._access_service.ListPermissions, request, apb.ListPermissionsResponse, "permissions"
        ):
            yield item

    async def check_permission(
        self, resource: str, *, action: str | int, principal: str = ""
    ) -> apb.CheckPermissionResponse:
        """Whether a principal (the caller by default) may do an action on a program or signature
        (CheckPermission).

        Args:
            resource: A program or signature name (no glob), or `*` for global actions.
            action: "read", "register", "deploy", "rollback", "approve", "admin" or "check".
            principal: Whom to ask about (admins only); empty for the caller.

        Returns:
            The response: `.allowed`, `.permission` (the narrowest grant that allows it) or
            `.reason` (why not).

        Raises:
            InvalidArgumentError: A bad action or resource.
            NotFoundError: A named principal does not exist.
        """
        return await self._call(
            self._access_service.CheckPermission,
            apb.CheckPermissionRequest(
                principal=convert.principal_filter(principal),
                action=convert.enum(apb.Action, "ACTION_", action),  # type: ignore[arg-type]
                resource=resource,
            ),
            apb.CheckPermissionResponse,
        )

    async def list_audit_events(
        self,
        *,
        principal: str = "",
        resource: str = "",
        method: str = "",
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        outcomes: Iterable[str | int] = (),
        codes: Iterable[int] = (),
        page_size: int = 0,
    ) -> AsyncIterator[apb.AuditEvent]:
        """Audit events, newest first (ListAuditEvents): every mutation and every denial.

        Args:
            principal: Only those of this principal.
            resource: Only those on this resource name.
            method: Only those of this RPC, by its full name
                (`/dspy_registry.v1.DeploymentService/CreateDeployment`).
            start_time: Only those at or after it.
            end_time: Only those before it.
            outcomes: Only these outcomes ("succeeded", "denied", "failed").
            codes: Only those that ended with these gRPC status codes (numbers).
            page_size: Events per page (0: the server's default).

        Returns:
            An async iterator of the events.

        Raises:
            InvalidArgumentError: A negative `page_size` or a time range that ends before it starts.
        """
        request = apb.ListAuditEventsRequest(
            principal=convert.principal_filter(principal),
            resource=resource,
            method=method,
            start_time=convert.timestamp(start_time),
            end_time=convert.timestamp(end_time),
            outcomes=convert.enums(apb.AuditOutcome, "AUDIT_OUTCOME_", outcomes),  # type: ignore[arg-type]
            codes=list(codes),
            page_size=page_size,
        )
        async for item in self._pages(
            self._access_service.ListAuditEvents, request, apb.ListAuditEventsResponse, "audit_events"
        ):
            yield item

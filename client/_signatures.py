"""RegistryService's signature RPCs, as `Registry` methods."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from dspy_registry.v1 import registry_pb2 as pb

from . import _convert as convert
from ._base import ClientBase

log = logging.getLogger("dspy_registry.client.registry")


class SignatureMethods(ClientBase):
    async def register_signature(
        self,
        name: str,
        *,
        signature: Any,
        version: str = "",
        metadata: Mapping[str, Any] | None = None,
        change_type: str | int | None = None,
    ) -> pb.SignatureVersion:
        """Registers a signature version (RegisterSignature); the same spec again is a no-op.

        Breaking changes the server's semver guard lets through in `warn` mode are logged as warnings.

        Args:
            name: The signature, `text_classifier` or `signatures/text_classifier`.
            signature: The spec: a SignatureSpec, its dict (proto3 JSON mapping), its serialized
                bytes, or a dspy.Signature class.
            version: The version; empty for the latest bumped by `change_type`, or by what changed.
            metadata: Free JSON-like metadata kept with the version.
            change_type: "major", "minor" or "patch" when `version` is empty.

        Returns:
            The registered version (or the identical one that existed).

        Raises:
            InvalidArgumentError: A bad name, version or field (see `field_violations`).
            FailedPreconditionError: The semver guard refuses a bump smaller than the changes need
                (see `precondition_violations`).
            AlreadyExistsError: The version exists with a different spec.
            TypeError: `signature` is none of the accepted types, or a dspy field has no registry type.
        """
        response = await self._call(
            self._registry_service.RegisterSignature,
            pb.RegisterSignatureRequest(
                signature=convert.short_name("signatures", name),
                version=version,
                change_type=convert.enum(pb.ChangeType, "CHANGE_TYPE_", change_type),  # type: ignore[arg-type]
                spec=convert.signature_spec(signature),
                metadata=convert.struct(metadata),
                request_id=convert.request_id(),
            ),
            pb.RegisterSignatureResponse,
        )
        for warning in response.warnings:
            log.warning("register_signature %s: %s", name, warning)
        return response.signature_version

    async def get_signature(self, name: str, version: str = "latest") -> pb.SignatureVersion:
        """One signature version (GetSignature).

        Args:
            name: The signature, short or `signatures/...`, or a full `signatures/s/versions/v` name.
            version: The version, or `latest`.

        Returns:
            The version with its spec.

        Raises:
            NotFoundError: No such signature or version.
        """
        response = await self._call(
            self._registry_service.GetSignature,
            pb.GetSignatureRequest(name=convert.signature_name(name, version)),
            pb.GetSignatureResponse,
        )
        return response.signature_version

    async def list_signatures(
        self, *, name_prefix: str = "", page_size: int = 0
    ) -> AsyncIterator[pb.Signature]:
        """Every signature, in name order (ListSignatures), fetched a page at a time.

        Args:
            name_prefix: Only the signatures whose name starts with it.
            page_size: Signatures per page (0: the server's default).

        Returns:
            An async iterator of the signatures.

        Raises:
            InvalidArgumentError: A negative `page_size`.
        """
        request = pb.ListSignaturesRequest(name_prefix=name_prefix, page_size=page_size)
        async for item in self._pages(
            self._registry_service.ListSignatures, request, pb.ListSignaturesResponse, "signatures"
        ):
            yield item

    async def list_signature_versions(
        self, name: str, *, page_size: int = 0
    ) -> AsyncIterator[pb.SignatureVersion]:
        """A signature's versions, newest first (ListSignatureVersions).

        Args:
            name: The signature, short or `signatures/...`.
            page_size: Versions per page (0: the server's default).

        Returns:
            An async iterator of the versions.

        Raises:
            NotFoundError: No such signature.
            InvalidArgumentError: A negative `page_size`.
        """
        request = pb.ListSignatureVersionsRequest(
            parent=convert.full_name("signatures", name), page_size=page_size
        )
        async for item in self._pages(
            self._registry_service.ListSignatureVersions,
            request,
            pb.ListSignatureVersionsResponse,
            "signature_versions",
        ):
            yield item

    async def check_signature_compatibility(
        self,
        name: str,
        base_version: str = "latest",
        *,
        target_version: str | None = None,
        proposed: Any = None,
        proposed_version: str = "",
    ) -> pb.CheckSignatureCompatibilityResponse:
        """The compatibility of `target_version`, or of a `proposed` spec, with `base_version`.

        Args:
            name: The signature, short or `signatures/...`.
            base_version: The version compared against, or `latest`.
            target_version: A registered version to compare.
            proposed: A spec not registered yet (any type `register_signature` takes).
            proposed_version: The version `proposed` would get: the answer then says whether the
                semver guard accepts it (`bump_sufficient`).

        Returns:
            The response: `.compatibility` (level, changes) and `.bump_sufficient`.

        Raises:
            NotFoundError: A named version does not exist.
            InvalidArgumentError: Neither `target_version` nor `proposed` (`proposed` wins when both
                are given), or a bad proposed spec.
        """
        request = pb.CheckSignatureCompatibilityRequest(
            base=convert.signature_name(name, base_version), proposed_version=proposed_version
        )
        if target_version is not None:
            request.target = convert.signature_name(name, target_version)
        if proposed is not None:
            request.proposed.CopyFrom(convert.signature_spec(proposed))
        return await self._call(
            self._registry_service.CheckSignatureCompatibility,
            request,
            pb.CheckSignatureCompatibilityResponse,
        )

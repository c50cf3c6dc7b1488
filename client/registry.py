"""The asynchronous Python client: one method per RPC of the three services, named after the RPC.

    async with Registry.connect("localhost:50051", token_file="admin.token") as registry:
        await registry.register_signature("text_classifier", signature=spec, version="1.0.0")
        await registry.register_program(
            "sentiment", program=state_bytes, signature_name="text_classifier", version="1.0.0"
        )
        loaded = await registry.load_program("sentiment", environment="production")

Each RPC's method is its name in snake_case (CreateDeployment: `create_deployment`), so that a
reader of the protos or of grpcurl finds it; `RPC_METHODS` maps each RPC to its method, and a test
checks that it covers the contract. Beside them, a few conveniences that are not one RPC:
`register_program` (RegisterProgram, or UploadProgram for a large artifact), `load_program`,
`get_latest_version` and `promote_version`. The names from before (`deploy`, `rollback`, `watch` ...)
still work for one release and warn (_deprecated.py).

The resource a method addresses is positional (for deployments: program, version, environment);
every option is keyword-only. Unary methods return the proto message of the contract
(protos/dspy_registry/v1), unwrapped from a one-field response; `rollback_deployment` returns a
`Rollback` of its two deployments, `load_program` a `LoadedProgram`. List methods are async
iterators that fetch the pages as they go. Failures raise the typed exceptions of errors.py.

Every mutation carries a fresh request_id, reused when the client retries the call after
UNAVAILABLE, so the server applies it once. The raw stubs are reachable beside the methods, as
`registry_service`, `deployment_service` and `access_service`.

Signatures are accepted as protos, dicts, bytes and dspy.Signature classes; programs as bytes,
state dicts, paths and dspy.Module instances; and `load_program(..., module=MyModule)` returns a
live dspy.Module. The dspy conversions are in dspy_interop.py, which never imports dspy (an
optional extra: `pip install 'dspy-registry[dspy]'`).

The methods are written by service area in private modules (_signatures.py, _programs.py,
_deployments.py, _streams.py, _webhooks.py, _access.py, on _base.py's connection, with the
deprecated names in _deprecated.py); this module assembles them.
"""

from __future__ import annotations

from ._access import AccessMethods
from ._deployments import DeploymentMethods, Rollback
from ._deprecated import DeprecatedMethods
from ._programs import CHUNK_SIZE, DSPY_MEDIA_TYPE, UNARY_ARTIFACT_LIMIT, LoadedProgram, ProgramMethods
from ._signatures import SignatureMethods
from ._streams import StreamMethods
from ._webhooks import WebhookMethods

__all__ = [
    "CHUNK_SIZE",
    "DSPY_MEDIA_TYPE",
    "RPC_METHODS",
    "UNARY_ARTIFACT_LIMIT",
    "LoadedProgram",
    "Registry",
    "Rollback",
]

_R = "dspy_registry.v1.RegistryService."
_D = "dspy_registry.v1.DeploymentService."
_A = "dspy_registry.v1.AccessService."

# Every RPC of the contract and the client method that calls it (tests/api/test_client.py checks both ways).
RPC_METHODS: dict[str, str] = {
    _R + "RegisterSignature": "register_signature",
    _R + "GetSignature": "get_signature",
    _R + "ListSignatures": "list_signatures",
    _R + "ListSignatureVersions": "list_signature_versions",
    _R + "CheckSignatureCompatibility": "check_signature_compatibility",
    _R + "RegisterProgram": "register_program",
    _R + "UploadProgram": "upload_program",
    _R + "GetProgram": "get_program",
    _R + "GetProgramVersion": "get_program_version",
    _R + "ListPrograms": "list_programs",
    _R + "ListProgramVersions": "list_program_versions",
    _R + "GetArtifact": "get_artifact",
    _R + "CompareProgramVersions": "compare_program_versions",
    _R + "GetUpgradePath": "get_upgrade_path",
    _R + "YankProgramVersion": "yank_program_version",
    _D + "ListEnvironments": "list_environments",
    _D + "GetEnvironment": "get_environment",
    _D + "UpdateEnvironment": "update_environment",
    _D + "CreateDeployment": "create_deployment",
    _D + "GetDeployment": "get_deployment",
    _D + "ListDeployments": "list_deployments",
    _D + "ApproveDeployment": "approve_deployment",
    _D + "PromoteDeployment": "promote_deployment",
    _D + "AbortDeployment": "abort_deployment",
    _D + "RollbackDeployment": "rollback_deployment",
    _D + "GetDeploymentStatus": "get_deployment_status",
    _D + "WatchTargets": "watch_targets",
    _D + "WatchEvents": "watch_events",
    _D + "ReportSidecarStatus": "report_sidecar_status",
    _D + "ReportMetrics": "report_metrics",
    _D + "ReportVersionCheck": "report_version_check",
    _D + "CreateWebhook": "create_webhook",
    _D + "ListWebhooks": "list_webhooks",
    _D + "DeleteWebhook": "delete_webhook",
    _D + "ListWebhookDeliveries": "list_webhook_deliveries",
    _D + "AddWebhookSecret": "add_webhook_secret",
    _D + "RetireWebhookSecret": "retire_webhook_secret",
    _A + "WhoAmI": "who_am_i",
    _A + "CreatePrincipal": "create_principal",
    _A + "ListPrincipals": "list_principals",
    _A + "DisablePrincipal": "disable_principal",
    _A + "CreateToken": "create_token",
    _A + "ListTokens": "list_tokens",
    _A + "RevokeToken": "revoke_token",
    _A + "GrantPermission": "grant_permission",
    _A + "RevokePermission": "revoke_permission",
    _A + "ListPermissions": "list_permissions",
    _A + "CheckPermission": "check_permission",
    _A + "ListAuditEvents": "list_audit_events",
}


class Registry(
    DeprecatedMethods,
    SignatureMethods,
    ProgramMethods,
    DeploymentMethods,
    StreamMethods,
    WebhookMethods,
    AccessMethods,
):
    """An asynchronous client of the registry. Use `Registry.connect(...)` as an async context manager.

    Besides the errors each method lists, any call can raise `UnauthenticatedError` (no, bad,
    revoked or expired token, or a disabled principal), `AccessDeniedError` (no grant for the
    action), `UnavailableError` (the server could not be reached, after the retries) and
    `DeadlineExceededError` (the call's timeout passed).
    """

"""One valid request per RPC, in text format, for the fuzzer (fuzz.py) to make hostile.

The $names (string.Template) come from the test's set-up: $program (the
program the caller may change), $version and $version2 (two of its versions),
$digest (the first one's artifact), $signature, $environment, $gate (an
environment that needs an approval), $policy (one UpdateEnvironment may
change), $deployment (a finished deployment of $program), $pending (one
awaiting approval), $principal with its $token and $permission, $webhook (with two
secrets, the first $webhook_secret) and $team. A client-streaming RPC has a seed per message: the header, then a chunk.
"""

from __future__ import annotations

_STATE = '{"predict": {"signature": {"instructions": "x", "fields": []}, "demos": []}}'
SEEDS: dict[str, tuple[str, ...]] = {
    "RegistryService.RegisterSignature": (
        'signature: "$signature" version: "9.0.0" '
        'spec { description: "d" input_fields { name: "text" type { kind: KIND_STRING } } '
        'output_fields { name: "label" type { kind: KIND_ENUM enum_values: "a" enum_values: "b" } } } '
        'metadata { fields { key: "k" value { string_value: "v" } } }',
    ),
    "RegistryService.GetSignature": ('name: "signatures/$signature/versions/1.0.0"',),
    "RegistryService.ListSignatures": ('page_size: 10 name_prefix: "s"',),
    "RegistryService.ListSignatureVersions": ('parent: "signatures/$signature" page_size: 10',),
    "RegistryService.CheckSignatureCompatibility": (
        'base: "signatures/$signature/versions/1.0.0" target: "signatures/$signature/versions/latest" '
        'proposed_version: "1.1.0"',
    ),
    "RegistryService.RegisterProgram": (
        'spec { program: "$program" version: "7.0.0" media_type: "application/vnd.dspy.program+json" '
        'signature: "signatures/$signature/versions/1.0.0" performance { key: "accuracy" value: 0.9 } '
        'labels { key: "team" value: "ml" } metadata { fields { key: "k" value { number_value: 1 } } } } '
        f"artifact: {_STATE!r}",
    ),
    "RegistryService.UploadProgram": (
        'header { spec { program: "$program" version: "8.0.0" signature: "signatures/$signature/versions/1.0.0" '
        f'labels {{ key: "team" value: "ml" }} }} size_bytes: {len(_STATE)} }}',
        f"chunk: {_STATE!r}",
    ),
    "RegistryService.GetProgram": ('name: "programs/$program"',),
    "RegistryService.GetProgramVersion": ('name: "programs/$program/versions/$version"',),
    "RegistryService.ListPrograms": (
        'page_size: 10 labels { key: "team" value: "ml" } environment: "$environment"',
    ),
    "RegistryService.ListProgramVersions": ('parent: "programs/$program" page_size: 10',),
    "RegistryService.GetArtifact": ('program: "programs/$program" digest: "$digest"',),
    "RegistryService.CompareProgramVersions": (
        'base: "programs/$program/versions/$version" target: "programs/$program/versions/$version2"',
    ),
    "RegistryService.GetUpgradePath": (
        'program: "programs/$program" from_version: "$version" to_version: "$version2"',
    ),
    "RegistryService.YankProgramVersion": (
        'name: "programs/$program/versions/$version" reason: "fuzz" undo: true',
    ),
    "DeploymentService.ListEnvironments": ("page_size: 10",),
    "DeploymentService.GetEnvironment": ('name: "environments/$environment"',),
    "DeploymentService.UpdateEnvironment": (
        'environment { name: "environments/$policy" description: "d" '
        "policy { rollback_enabled: true default_strategy { strategy: STRATEGY_REPLACE } "
        "auto_rollback { enabled: true error_rate: 0.05 min_requests: 10 monitoring_window { seconds: 60 } } } } "
        'update_mask { paths: "description" paths: "policy" }',
    ),
    "DeploymentService.CreateDeployment": (
        'program: "$program" version: "$version" environment: "$gate" '
        "strategy { strategy: STRATEGY_CANARY canary { steps { weight_percent: 10 } } } "
        'reason: "fuzz" supersede: true',
    ),
    "DeploymentService.GetDeployment": ('name: "$deployment"',),
    "DeploymentService.ListDeployments": (
        'page_size: 10 program: "$program" environment: "$environment" states: DEPLOYMENT_STATE_SUCCEEDED '
        "start_time { seconds: 0 } end_time { seconds: 4102444800 }",
    ),
    "DeploymentService.ApproveDeployment": ('name: "$pending" comment: "fuzz"',),
    "DeploymentService.PromoteDeployment": ('name: "$deployment" reason: "fuzz"',),
    "DeploymentService.AbortDeployment": ('name: "$pending" reason: "fuzz"',),
    "DeploymentService.RollbackDeployment": ('name: "$deployment" reason: "fuzz"',),
    "DeploymentService.GetDeploymentStatus": ('program: "$program" environment: "$environment"',),
    "DeploymentService.WatchTargets": (
        'selectors { program: "$program" environment: "$environment" } sidecar_id: "fuzz-pod" '
        "progress_interval { nanos: 100000000 }",
    ),
    "DeploymentService.WatchEvents": (
        'selectors { program: "$program" } kinds: DEPLOYMENT_EVENT_KIND_CREATED '
        "progress_interval { nanos: 100000000 }",
    ),
    "DeploymentService.ReportSidecarStatus": (
        'sidecar_id: "fuzz-pod" targets { program: "$program" environment: "$environment" version: "$version" '
        'digest: "$digest" result: APPLY_RESULT_ACK revision: 1 apply_time { seconds: 1700000000 } } '
        "heartbeat_interval { seconds: 10 } revision: 1",
    ),
    "DeploymentService.ReportMetrics": (
        'sidecar_id: "fuzz-pod" windows { program: "$program" environment: "$environment" version: "$version" '
        "start_time { seconds: 1700000000 } end_time { seconds: 1700000010 } request_count: 10 "
        "error_count: 1 latency { bounds_ms: 10 bounds_ms: 100 counts: 5 counts: 5 counts: 0 sum_ms: 300 } "
        "feedback_correct: 3 feedback_total: 4 }",
    ),
    "DeploymentService.ReportVersionCheck": (
        'program_version: "programs/$program/versions/$version" check: "integration_tests" '
        'state: CHECK_STATE_PASSED details_url: "https://ci.example/runs/1" summary: "120 passed"',
    ),
    "DeploymentService.CreateWebhook": (
        'webhook_id: "fuzz-new-hook" webhook { url: "http://127.0.0.1:9/fuzz" '
        'event_kinds: DEPLOYMENT_EVENT_KIND_CREATED selectors { program: "$program" } secret: "s" '
        'description: "d" }',
    ),
    "DeploymentService.ListWebhooks": ("page_size: 10",),
    "DeploymentService.AddWebhookSecret": ('parent: "webhooks/$webhook" secret: "fuzz-third-secret"',),
    "DeploymentService.RetireWebhookSecret": ('name: "$webhook_secret"',),
    "DeploymentService.DeleteWebhook": ('name: "webhooks/$webhook"',),
    "DeploymentService.ListWebhookDeliveries": (
        'parent: "webhooks/$webhook" page_size: 10 states: DELIVERY_STATE_PENDING states: DELIVERY_STATE_FAILED',
    ),
    "AccessService.WhoAmI": ("",),
    "AccessService.CreatePrincipal": (
        'principal_id: "fuzz-new" principal { type: PRINCIPAL_TYPE_SERVICE_ACCOUNT display_name: "d" '
        'team: "t" email: "a@example.com" certificate_subjects: "CN=fuzz-new" }',
    ),
    "AccessService.ListPrincipals": ('page_size: 10 team: "$team" include_disabled: true',),
    "AccessService.DisablePrincipal": ('name: "principals/$principal" reason: "fuzz" undo: true',),
    "AccessService.CreateToken": ('parent: "principals/$principal" description: "d" ttl { seconds: 3600 }',),
    "AccessService.ListTokens": ('parent: "principals/$principal" page_size: 10 include_inactive: true',),
    "AccessService.RevokeToken": ('name: "$token"',),
    "AccessService.GrantPermission": (
        'principal: "principals/$principal" action: ACTION_READ resource: "$program"',
    ),
    "AccessService.RevokePermission": ('name: "$permission"',),
    "AccessService.ListPermissions": (
        'page_size: 10 principal: "principals/$principal" action: ACTION_READ',
    ),
    "AccessService.CheckPermission": ('action: ACTION_READ resource: "$program"',),
    "AccessService.ListAuditEvents": (
        'page_size: 10 resource: "programs/$program" method: "/dspy_registry.v1.RegistryService/RegisterProgram" '
        "start_time { seconds: 0 } outcomes: AUDIT_OUTCOME_SUCCEEDED codes: 0",
    ),
}

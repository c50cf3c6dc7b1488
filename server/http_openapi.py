"""The OpenAPI 3.0 document of the REST routes (http_api.py), served at /api/openapi.json.

Hand-written: five routes do not need a generator. The nested messages
(program versions, deployments, targets) are protobuf's JSON of the gRPC
messages, described here by their main fields only; the proto files are
their full reference. int64 fields (revision) are strings, as json_format
writes them.
"""

from __future__ import annotations

from typing import Any

NAME_PATTERN = "^[a-z][a-z0-9_-]{0,62}$"
ID_PATTERN = "^[a-z0-9]{1,64}$"
_SEMVER_ID = "(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)"
VERSION_PATTERN = (
    "^(?:latest|(?:0|[1-9][0-9]{0,17})\\.(?:0|[1-9][0-9]{0,17})\\.(?:0|[1-9][0-9]{0,17})"
    f"(?:-{_SEMVER_ID}(?:\\.{_SEMVER_ID})*)?(?:\\+[0-9a-zA-Z-]+(?:\\.[0-9a-zA-Z-]+)*)?)?$"  # empty: latest
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = {"default": _json(_ref("Error"), "An error: the gRPC code's name, its message and details")}
_STRING = {"type": "string"}
_NAME_OR_EMPTY = {"type": "string", "pattern": "^(?:[a-z][a-z0-9_-]{0,62})?$"}
_VERSION = {"type": "string", "maxLength": 128, "pattern": VERSION_PATTERN}
_LABEL_VALUE = {"type": "string", "pattern": "^[A-Za-z0-9_.@:/-]{0,63}$"}
# Free text as the server takes it (names.check_text): bounded, no control characters but \n and \t
# (C0, DEL, C1), no bidi embeddings, overrides or isolates.
_TEXT = {
    "type": "string",
    "maxLength": 1024,
    "pattern": "^[^\\u0000-\\u0008\\u000b-\\u001f\\u007f-\\u009f\\u202a-\\u202e\\u2066-\\u2069]*$",
}
_REQUEST_ID = {"type": "string", "pattern": "^[\\x21-\\x7e]{1,128}$", "description": "Idempotency key"}
_STRINGS = {"type": "object", "additionalProperties": _STRING}
_NUMBERS = {"type": "object", "additionalProperties": {"type": "number"}}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "details"],
                "properties": {
                    "code": {"type": "string", "description": "The gRPC status code, e.g. NOT_FOUND"},
                    "message": _STRING,
                    "details": {
                        "type": "array",
                        "description": "google.rpc error details (ErrorInfo, BadRequest, "
                        "PreconditionFailure, ResourceInfo, QuotaFailure), each with its @type",
                        "items": {"type": "object", "properties": {"@type": _STRING}},
                    },
                },
            }
        },
    },
    "Program": {
        "type": "object",
        "description": "dspy_registry.v1.Program",
        "properties": {
            "name": _STRING,
            "latest_version": _STRING,
            "version_count": {"type": "integer"},
            "labels": _STRINGS,
            "signature": _STRING,
            "create_time": {"type": "string", "format": "date-time"},
            "update_time": {"type": "string", "format": "date-time"},
        },
    },
    "ProgramEnvironment": {
        "type": "object",
        "description": "dspy_registry.v1.ProgramEnvironment: what one environment serves of a program",
        "required": ["environment"],
        "properties": {
            "environment": _STRING,
            "target": {
                "type": "object",
                "description": "dspy_registry.v1.Target: stable {version, digest}, candidate {version, "
                "digest, weight_percent}, the deployment that last changed it; absent when nothing was "
                "ever deployed there",
            },
            "deployment": _ref("Deployment"),  # the one pending or in progress there, if any
            "update_time": {"type": "string", "format": "date-time"},
        },
    },
    "ProgramVersion": {
        "type": "object",
        "description": "dspy_registry.v1.ProgramVersion",
        "properties": {
            "name": _STRING,
            "program": _STRING,
            "version": _STRING,
            "signature": _STRING,
            "performance": _NUMBERS,
            "labels": _STRINGS,
            "yanked": {"type": "boolean"},
        },
    },
    "Deployment": {
        "type": "object",
        "description": "dspy_registry.v1.Deployment",
        "properties": {
            "name": _STRING,
            "program": _STRING,
            "environment": _STRING,
            "version": _STRING,
            "state": _STRING,
            "weight_percent": {"type": "integer"},
        },
    },
    "ProgramList": {
        "type": "object",
        "required": ["programs", "total", "page", "limit", "offset"],
        "properties": {
            "programs": {"type": "array", "items": _ref("Program")},
            "total": {"type": "integer", "description": "How many programs match, across all pages"},
            "page": {"type": "integer", "description": "offset / limit + 1"},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
        },
    },
    "ProgramDetail": {
        "type": "object",
        "required": ["name", "version", "signature", "performance", "deployments", "versions"],
        "properties": {
            "name": _STRING,
            "version": _STRING,
            "signature": _STRING,
            "performance": _NUMBERS,
            "labels": _STRINGS,
            "program_version": _ref("ProgramVersion"),
            "deployments": {
                "type": "array",
                "items": _ref("Deployment"),
                "description": "The program's newest deployments (at most 50), newest first",
            },
            "versions": {
                "type": "array",
                "items": _ref("ProgramVersion"),
                "description": "Every version, newest first, yanked ones included",
            },
            "environments": {
                "type": "array",
                "items": _ref("ProgramEnvironment"),
                "description": "Which versions are deployed where: one entry per environment, in "
                "promotion order (GetProgram's environments)",
            },
        },
    },
    "DeployRequest": {
        "type": "object",
        "description": "canary_percent goes with the canary strategy (or none: it implies canary)",
        "required": ["environment", "version"],
        "additionalProperties": False,
        "not": {
            "type": "object",
            "required": ["canary_percent", "strategy"],
            "properties": {"strategy": {"enum": ["replace", "blue_green"]}},
        },
        "properties": {
            "version": {**_VERSION, "minLength": 1, "description": "A SemVer version, or `latest`"},
            "environment": {"type": "string", "pattern": NAME_PATTERN},
            "strategy": {
                "type": "string",
                "enum": ["replace", "blue_green", "canary"],
                "description": "Unset: the environment's default strategy",
            },
            "canary_percent": {
                "type": "integer",
                "minimum": 1,
                "maximum": 100,
                "description": "A canary with one step at this weight",
            },
            "reason": _TEXT,
            "request_id": _REQUEST_ID,
            "supersede": {"type": "boolean"},
            "allow_breaking": {"type": "boolean"},
        },
    },
    "DeployResponse": {
        "type": "object",
        "required": ["deployment_id", "status", "monitor_url", "deployment"],
        "properties": {
            "deployment_id": _STRING,
            "status": {"type": "string", "enum": ["initiated"]},
            "monitor_url": _STRING,
            "deployment": _ref("Deployment"),
        },
    },
    "DeploymentStatus": {
        "type": "object",
        "required": ["deployment_id", "status", "deployment", "target", "verdict", "health", "sidecars"],
        "properties": {
            "deployment_id": _STRING,
            "status": {
                "type": "string",
                "description": "The deployment's state: pending_approval, pending_checks, in_progress, succeeded, "
                "failed, rolled_back, aborted or superseded",
            },
            "program": _STRING,
            "environment": _STRING,
            "version": _STRING,
            "weight_percent": {"type": "integer"},
            "deployment": _ref("Deployment"),
            "target": {"type": "object", "description": "dspy_registry.v1.Target"},
            "verdict": {"type": "string", "description": "HEALTH_VERDICT_*"},
            "health": {"type": "array", "items": {"type": "object"}},
            "sidecars": {"type": "array", "items": {"type": "object"}},
        },
    },
    "RollbackRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"reason": _TEXT, "request_id": _REQUEST_ID},
    },
    "RollbackResponse": {
        "type": "object",
        "required": [
            "rollback_deployment_id",
            "status",
            "reason",
            "monitor_url",
            "deployment",
            "rolled_back",
        ],
        "properties": {
            "rollback_deployment_id": _STRING,
            "status": {"type": "string", "enum": ["initiated"]},
            "reason": _STRING,
            "monitor_url": _STRING,
            "deployment": _ref("Deployment"),
            "rolled_back": _ref("Deployment"),
        },
    },
}


def _path_parameter(name: str, pattern: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "pattern": pattern},
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_PROGRAM = _path_parameter("name", NAME_PATTERN, "The program's short name")
_DEPLOYMENT = _path_parameter("id", ID_PATTERN, "The deployment id (deployments/{id})")

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "dspy-registry REST routes",
        "version": "1",
        "description": "The REST routes, served by the gRPC services (same tokens, "
        "permissions and errors). Errors carry the gRPC code: INVALID_ARGUMENT 400, "
        "UNAUTHENTICATED 401, PERMISSION_DENIED 403, NOT_FOUND 404, ALREADY_EXISTS, ABORTED and "
        "FAILED_PRECONDITION 409, RESOURCE_EXHAUSTED 429, CANCELLED 499, UNIMPLEMENTED 501, "
        "UNAVAILABLE 503, DEADLINE_EXCEEDED 504, others 500. Unknown query parameters and body "
        "fields are refused (400).",
    },
    "servers": [{"url": "/"}],
    "security": [{"bearerAuth": []}],
    "paths": {
        "/api/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document")},
            }
        },
        "/api/registry/programs": {
            "get": {
                "operationId": "listPrograms",
                "summary": "Programs, in name order, with the total count (ListPrograms)",
                "parameters": [
                    _query("environment", _NAME_OR_EMPTY, "Only programs deployed in this environment"),
                    _query("team", _LABEL_VALUE, "Only programs labelled team=<team>"),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
                        "Page size",
                    ),
                    _query(
                        "offset",
                        {"type": "integer", "minimum": 0, "maximum": 2**31 - 1, "default": 0},
                        "Programs skipped",
                    ),
                ],
                "responses": {"200": _json(_ref("ProgramList"), "One page of programs"), **_ERROR},
            }
        },
        "/api/registry/programs/{name}": {
            "get": {
                "operationId": "getProgram",
                "summary": "A program version with the program's versions and deployments",
                "parameters": [
                    _PROGRAM,
                    _query("version", _VERSION, "A SemVer version or `latest` (the default)"),
                    _query(
                        "environment",
                        _NAME_OR_EMPTY,
                        "Without `version`: the version this environment serves; with it, 404 unless "
                        "the environment serves that version",
                    ),
                ],
                "responses": {"200": _json(_ref("ProgramDetail"), "The program"), **_ERROR},
            }
        },
        "/api/registry/programs/{name}/deploy": {
            "post": {
                "operationId": "deployProgram",
                "summary": "Start a deployment (CreateDeployment)",
                "parameters": [_PROGRAM],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("DeployRequest")}},
                },
                "responses": {"201": _json(_ref("DeployResponse"), "The deployment started"), **_ERROR},
            }
        },
        "/api/registry/deployments/{id}/status": {
            "get": {
                "operationId": "deploymentStatus",
                "summary": "A deployment, its target, health and sidecars (GetDeploymentStatus)",
                "parameters": [_DEPLOYMENT],
                "responses": {"200": _json(_ref("DeploymentStatus"), "The deployment's status"), **_ERROR},
            }
        },
        "/api/registry/deployments/{id}/rollback": {
            "post": {
                "operationId": "rollbackDeployment",
                "summary": "Roll a deployment back to the previous version (RollbackDeployment)",
                "parameters": [_DEPLOYMENT],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("RollbackRequest")}},
                },
                "responses": {"201": _json(_ref("RollbackResponse"), "The rollback started"), **_ERROR},
            }
        },
    },
    "components": {
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        "schemas": _SCHEMAS,
    },
}

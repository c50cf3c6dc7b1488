"""The requests the benchmarks send: a signature, 10 KB program artifacts, reads, deployments."""

from __future__ import annotations

import json

from dspy_registry.v1 import deployment_pb2
from dspy_registry.v1 import registry_pb2 as pb

SIGNATURE = "bench_sig"
SIGNATURE_REF = f"signatures/{SIGNATURE}/versions/1.0.0"
PROGRAM = "p"
PRELOAD_VERSIONS = ("1.0.0", "1.1.0", "1.2.0", "1.3.0")
GET_NAME = f"programs/{PROGRAM}/versions/1.2.0"
GET_ENVIRONMENT = "development"  # where every registration auto-deploys: it serves the last one
ARTIFACT_BYTES = 10 * 1024
# The deployment figures: two versions of `p` with the same signature, deployed to staging
# (validation: signature compatibility; no approval), alternating so every call moves the stable version.
DEPLOY_VERSIONS = ("1.0.0", "1.1.0")
DEPLOY_ENVIRONMENT = "staging"

# Fixed width, so that every artifact has exactly ARTIFACT_BYTES bytes.
_MARK = b"@@@@@@@@@@@@"


def signature_request() -> pb.RegisterSignatureRequest:
    string = pb.FieldType(kind=pb.FieldType.KIND_STRING)
    return pb.RegisterSignatureRequest(
        signature=SIGNATURE,
        version="1.0.0",
        spec=pb.SignatureSpec(
            description="Classify the sentiment of a text.",
            instructions="Return positive, negative or neutral.",
            input_fields=[pb.SignatureField(name="text", type=string, description="the text")],
            output_fields=[pb.SignatureField(name="label", type=string, description="the label")],
        ),
    )


def _artifact_template() -> bytes:
    """DSPy program state JSON of exactly ARTIFACT_BYTES bytes with one `_MARK` in it."""

    def state(instructions: str) -> bytes:
        return json.dumps(
            {
                "predict": {
                    "signature": {"instructions": instructions, "fields": []},
                    "demos": [],
                    "traces": [],
                    "train": [],
                    "lm": None,
                },
                "metadata": {"dependency_versions": {}},
            }
        ).encode()

    head = _MARK.decode() + " Classify the sentiment of the text. "
    pad = ARTIFACT_BYTES - len(state(head))
    template = state(head + "x" * pad)
    assert len(template) == ARTIFACT_BYTES and template.count(_MARK) == 1
    return template


_TEMPLATE = _artifact_template()


def artifact(n: int) -> bytes:
    """The n-th distinct artifact: ARTIFACT_BYTES bytes, a distinct digest per n."""
    return _TEMPLATE.replace(_MARK, f"{n:0{len(_MARK)}d}".encode())


def register_request(version: str, n: int) -> pb.RegisterProgramRequest:
    return pb.RegisterProgramRequest(
        spec=pb.ProgramVersionSpec(program=PROGRAM, version=version, signature=SIGNATURE_REF),
        artifact=artifact(n),
    )


def get_request() -> pb.GetProgramVersionRequest:
    return pb.GetProgramVersionRequest(name=GET_NAME)


def get_by_environment_request() -> pb.GetProgramVersionRequest:
    return pb.GetProgramVersionRequest(name=f"programs/{PROGRAM}", environment=GET_ENVIRONMENT)


def deploy_request(version: str) -> deployment_pb2.CreateDeploymentRequest:
    """A REPLACE deployment of `version` of `p` to staging (it ends SUCCEEDED at once)."""
    return deployment_pb2.CreateDeploymentRequest(
        program=PROGRAM,
        version=version,
        environment=DEPLOY_ENVIRONMENT,
        strategy=deployment_pb2.DeploymentStrategy(strategy=deployment_pb2.STRATEGY_REPLACE),
    )


def status_request() -> deployment_pb2.GetDeploymentStatusRequest:
    return deployment_pb2.GetDeploymentStatusRequest(program=PROGRAM, environment=DEPLOY_ENVIRONMENT)

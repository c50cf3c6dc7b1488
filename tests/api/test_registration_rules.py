"""The registration rules over a real channel, on SQLite and on Postgres: the program semver guard,
`[versioning]`, the credential scan, metric ranges and re-registration."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from dspy_registry.server.domain.guard import GuardMode
from dspy_registry.server.errors import InvalidArgument
from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import access_pb2_grpc as apb_grpc
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import registry_pb2 as pb
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc
from tests.api.conftest import Running, details, register_signature, start, violations
from tests.calls import refusal
from tests.factories import dspy_state, spec_proto

Stub = pb_grpc.RegistryServiceStub
SENTIMENT = ("positive", "negative", "neutral")


def _request(
    program: str,
    version: str,
    signature_version: str = "1.0.0",
    *,
    change_type: int = 0,
    artifact: bytes | None = None,
    metadata: dict[str, Any] | None = None,
    performance: dict[str, float] | None = None,
    media_type: str = "",
) -> pb.RegisterProgramRequest:
    meta = struct_pb2.Struct()
    meta.update(metadata if metadata is not None else {"changelog": "better demos"})
    return pb.RegisterProgramRequest(
        spec=pb.ProgramVersionSpec(
            program=program,
            version=version,
            change_type=change_type,  # type: ignore[arg-type]
            signature=f"signatures/text_classifier/versions/{signature_version}",
            performance=performance if performance is not None else {"accuracy": 0.9},
            metadata=meta,
            media_type=media_type,
        ),
        artifact=artifact if artifact is not None else dspy_state(f"{program} {version} {change_type}"),
    )


async def _signatures(registry: Stub) -> None:
    """1.0.0; 1.0.1 changes only the instructions; 1.1.0 adds an enum value; 2.0.0 drops one."""
    await register_signature(registry, version="1.0.0")
    await register_signature(registry, version="1.0.1", instructions="Classify the sentiment.")
    await register_signature(registry, version="1.1.0", outputs=(*SENTIMENT, "mixed"))
    await register_signature(registry, version="2.0.0", outputs=("positive", "negative"))


# -- the program semver guard ---------------------------------------------------------------------

# The signature a new version implements (against 1.0.0 for the previous program version) × the
# version it proposes after 1.0.0: accepted or refused.
GUARD_TABLE = [
    ("2.0.0", "2.0.0", True),  # breaking × major
    ("2.0.0", "1.1.0", False),  # breaking × minor
    ("2.0.0", "1.0.1", False),  # breaking × patch
    ("2.0.0", "1.1.0-rc.1", False),  # breaking × pre-release of a minor
    ("2.0.0", "2.0.0-rc.1", True),  # breaking × pre-release of a major
    ("1.1.0", "2.0.0", True),  # additive × major
    ("1.1.0", "1.1.0", True),  # additive × minor
    ("1.1.0", "1.0.1", False),  # additive × patch
    ("1.1.0", "1.1.0-rc.1", True),  # additive × pre-release of a minor
    ("1.1.0", "1.0.1-rc.1", False),  # additive × pre-release of a patch
    ("1.0.1", "1.0.1", True),  # text only × patch
    ("1.0.0", "2.0.0", True),  # unchanged × major
    ("1.0.0", "1.1.0", True),  # unchanged × minor
    ("1.0.0", "1.0.1", True),  # unchanged × patch
    ("1.0.0", "1.0.1-rc.1", True),  # unchanged × pre-release
]


async def test_program_semver_guard_table(registry: Stub) -> None:
    await _signatures(registry)
    for i, (signature, version, accepted) in enumerate(GUARD_TABLE):
        program = f"guarded_{i}"
        await registry.RegisterProgram(_request(program, "1.0.0"))
        call = registry.RegisterProgram(_request(program, version, signature))
        if accepted:
            assert (await call).created, (signature, version)
            continue
        err = await refusal(call)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, (signature, version)
        failure = details(err)["PreconditionFailure"]
        assert [v.type for v in failure.violations] == ["SEMVER_GUARD"] * len(failure.violations)  # type: ignore[attr-defined]
        assert all(v.subject.startswith(f"programs/{program}:signature") for v in failure.violations)  # type: ignore[attr-defined]
        assert (err.details() or "").startswith(f"{version} is too small a bump from 1.0.0")
        versions = await registry.ListProgramVersions(
            pb.ListProgramVersionsRequest(parent=f"programs/{program}")
        )
        assert [v.version for v in versions.program_versions] == ["1.0.0"]  # nothing stored


async def test_the_issues_example_and_change_types(registry: Stub) -> None:
    await _signatures(registry)
    await registry.RegisterProgram(_request("sentiment_classifier", "1.0.0"))
    # 1.1.0 on a signature without `neutral` would change what `latest` answers callers with.
    err = await refusal(registry.RegisterProgram(_request("sentiment_classifier", "1.1.0", "2.0.0")))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "need a major bump" in (err.details() or "")
    minor = _request("sentiment_classifier", "", "2.0.0", change_type=pb.CHANGE_TYPE_MINOR)
    assert (await refusal(registry.RegisterProgram(minor))).code() == grpc.StatusCode.FAILED_PRECONDITION
    major = _request("sentiment_classifier", "", "2.0.0", change_type=pb.CHANGE_TYPE_MAJOR)
    assert (await registry.RegisterProgram(major)).program_version.version == "2.0.0"
    # Another signature altogether is breaking too: nothing can be assumed of it.
    await register_signature(registry, name="other")
    other = _request("sentiment_classifier", "2.1.0")
    other.spec.signature = "signatures/other/versions/1.0.0"
    assert (await refusal(registry.RegisterProgram(other))).code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_backport_is_judged_against_the_next_version_too(registry: Stub) -> None:
    await _signatures(registry)
    await register_signature(registry, version="1.2.0", outputs=(*SENTIMENT, "mixed", "sarcastic"))
    await registry.RegisterProgram(_request("backported", "1.0.0", "1.1.0"))
    await registry.RegisterProgram(_request("backported", "1.2.0", "1.1.0"))
    # 1.1.0 on a signature with one more value: fine after 1.0.0, but 1.1.0 -> 1.2.0 would drop it.
    err = await refusal(registry.RegisterProgram(_request("backported", "1.1.0", "1.2.0")))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "1.2.0" in (err.details() or "")
    # A backport onto the old major beside a breaking 2.0.0 is fine: 1.x -> 2.0.0 is a major step.
    await registry.RegisterProgram(_request("backported", "2.0.0", "2.0.0"))
    assert (await registry.RegisterProgram(_request("backported", "1.2.1", "1.1.0"))).created
    # It is still judged against the version below it: a new value needs a minor bump.
    err = await refusal(registry.RegisterProgram(_request("backported", "1.2.2", "1.2.0")))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "from 1.2.1" in (err.details() or "")


@pytest.mark.parametrize("mode", [GuardMode.WARN, GuardMode.OFF])
async def test_semver_guard_warn_and_off_let_a_program_through(
    database_url: str, mode: GuardMode, caplog: pytest.LogCaptureFixture
) -> None:
    running = await start(database_url, semver_guard=mode)
    try:
        await _signatures(running.registry)
        await running.registry.RegisterProgram(_request("loose", "1.0.0"))
        with caplog.at_level(logging.WARNING, logger="dspy_registry.registry"):
            created = await running.registry.RegisterProgram(_request("loose", "1.0.1", "2.0.0"))
        assert created.created and created.program_version.version == "1.0.1"
        warned = [r.getMessage() for r in caplog.records if r.name == "dspy_registry.registry"]
        if mode is GuardMode.WARN:
            assert any("programs/loose/versions/1.0.1" in m and "need a major bump" in m for m in warned)
        else:
            assert not warned
    finally:
        await running.channel.close(None)
        await running.app.stop(grace=0)


# -- [versioning] -----------------------------------------------------------------------------------


async def _configured(database_url: str, tmp_path: Path, text: str) -> Running:
    config = tmp_path / "registry.toml"
    config.write_text(text)
    return await start(database_url, config=str(config))


async def _stop(running: Running) -> None:
    await running.channel.close(None)
    await running.app.stop(grace=0)


def _signature_request(version: str, changelog: str | None, **kw: Any) -> pb.RegisterSignatureRequest:
    meta = struct_pb2.Struct()
    if changelog is not None:
        meta.update({"changelog": changelog})
    return pb.RegisterSignatureRequest(
        signature="text_classifier", version=version, spec=spec_proto(**kw), metadata=meta
    )


@pytest.mark.parametrize(
    ("setting", "first", "same", "additive", "breaking"),
    [
        ("patch", "0.0.1", "0.0.2", "0.1.0", "1.0.0"),
        ("minor", "0.1.0", "0.2.0", "0.3.0", "1.0.0"),
        ("major", "1.0.0", "2.0.0", "3.0.0", "4.0.0"),
    ],
)
async def test_auto_increment_numbers_a_version_given_neither_version_nor_change_type(
    database_url: str, tmp_path: Path, setting: str, first: str, same: str, additive: str, breaking: str
) -> None:
    running = await _configured(database_url, tmp_path, f'[versioning]\nauto_increment = "{setting}"\n')
    try:
        registry = running.registry
        await _signatures(registry)
        # The configured bump, or the bigger one the signature's change needs: never a guard refusal.
        for signature, expected in (
            ("1.0.0", first),
            ("1.0.0", same),
            ("1.1.0", additive),
            ("2.0.0", breaking),
        ):
            created = await registry.RegisterProgram(_request("auto", "", signature))
            assert created.program_version.version == expected, (setting, signature)
        assert created.program_version.previous_version == additive
        # A signature registered without a version: at least the configured bump, too.
        text_only = _signature_request("", None, instructions="Terser.", outputs=("positive", "negative"))
        sig = await registry.RegisterSignature(text_only)
        assert (
            sig.signature_version.version == {"patch": "2.0.1", "minor": "2.1.0", "major": "3.0.0"}[setting]
        )
        # A change type still wins over the setting; an explicit version is still taken as it is.
        change = _request("auto", "", "2.0.0", change_type=pb.CHANGE_TYPE_MINOR)
        assert (await registry.RegisterProgram(change)).program_version.change_type == pb.CHANGE_TYPE_MINOR
        assert (await registry.RegisterProgram(_request("auto", "9.0.0", "2.0.0"))).created
    finally:
        await _stop(running)


async def test_without_auto_increment_a_program_needs_a_version_or_a_change_type(registry: Stub) -> None:
    await _signatures(registry)
    err = await refusal(registry.RegisterProgram(_request("unnumbered", "")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and violations(err) == {"spec.version"}


async def test_require_changelog_refuses_a_version_without_one(database_url: str, tmp_path: Path) -> None:
    text = '[versioning]\nstrategy = "semantic"\nrequire_changelog = true\n'
    running = await _configured(database_url, tmp_path, text)
    try:
        registry = running.registry
        for changelog in (None, "", "   "):
            err = await refusal(registry.RegisterSignature(_signature_request("1.0.0", changelog)))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert violations(err) == {"metadata.changelog"}
        await registry.RegisterSignature(_signature_request("1.0.0", "First version"))
        for metadata in ({}, {"changelog": ""}, {"changelog": 3}, {"training": {"changelog": "nested"}}):
            err = await refusal(registry.RegisterProgram(_request("logged", "1.0.0", metadata=metadata)))
            assert violations(err) == {"spec.metadata.changelog"}, metadata
        created = await registry.RegisterProgram(_request("logged", "1.0.0", metadata={"changelog": "First"}))
        assert created.created
    finally:
        await _stop(running)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('[versioning]\nstrategy = "calendar"\n', "versioning.strategy"),
        ('[versioning]\nauto_increment = "build"\n', "versioning.auto_increment"),
        ('[versioning]\nrequire_changelog = "yes"\n', "versioning.require_changelog"),
    ],
)
async def test_a_bad_versioning_setting_stops_the_start(
    database_url: str, tmp_path: Path, text: str, field: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        await _configured(database_url, tmp_path, text)
    assert field in {v.field for v in err.value.violations}


# -- the credential scan ---------------------------------------------------------------------------

OPENAI = "sk-proj-" + "Fake0Key1For2Tests3Only4xYz5"  # never a real key: built for these tests
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYFAKEKEY123"


def _with_credentials() -> bytes:
    state = json.loads(dspy_state("Classify."))
    state["predict"]["lm"] = {"model": "openai/gpt-4o-mini", "max_tokens": 512, "api_key": OPENAI}
    state["predict"]["demos"][1]["text"] = f"AWS_SECRET_ACCESS_KEY={AWS_SECRET} leaked"
    return json.dumps(state).encode()


async def test_credentials_in_an_artifact_are_refused_by_path_never_echoed(
    server: Running, caplog: pytest.LogCaptureFixture
) -> None:
    registry = server.registry
    await _signatures(registry)
    with caplog.at_level(logging.DEBUG):
        err = await refusal(
            registry.RegisterProgram(_request("leaky", "1.0.0", artifact=_with_credentials()))
        )
        raw = _request(
            "leaky", "1.0.0", artifact=b"\x00bytes " + OPENAI.encode(), media_type="application/zip"
        )
        raw_err = await refusal(registry.RegisterProgram(raw))
        meta = _request(
            "leaky", "1.0.0", metadata={"changelog": "x", "deployment": {"token": "opaque-value"}}
        )
        meta_err = await refusal(registry.RegisterProgram(meta))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = details(err)["BadRequest"]
    found = sorted((v.field, v.description.split(";")[0]) for v in bad.field_violations)  # type: ignore[attr-defined]
    assert found == [
        ("artifact", "$.predict.demos[1].text: an AWS secret access key"),
        ("artifact", "$.predict.lm.api_key: an OpenAI API key"),
    ]
    raw_bad = details(raw_err)["BadRequest"]
    assert [(v.field, v.description.split(";")[0]) for v in raw_bad.field_violations] == [  # type: ignore[attr-defined]
        ("artifact", "byte 7: an OpenAI API key")
    ]
    assert violations(meta_err) == {"spec.metadata"} and "$.deployment.token" in (meta_err.details() or "")
    # Nothing of the secrets anywhere: the statuses, their details, the log, the audit.
    audit = await apb_grpc.AccessServiceStub(server.channel).ListAuditEvents(
        apb.ListAuditEventsRequest(resource="programs/leaky")
    )
    assert len(audit.audit_events) == 3
    said = [str(e.details()) + str(e.trailing_metadata()) for e in (err, raw_err, meta_err)]
    said += [f"{r.getMessage()} {r.__dict__}" for r in caplog.records]
    said += [str(event) for event in audit.audit_events]
    for secret in (OPENAI, AWS_SECRET, "opaque-value"):
        assert not [text for text in said if secret in text], secret
    gone = await refusal(registry.GetProgram(pb.GetProgramRequest(name="programs/leaky")))
    assert gone.code() == grpc.StatusCode.NOT_FOUND  # nothing stored


async def test_development_alone_may_turn_the_scan_off(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("staging", "production"):
        with pytest.raises(InvalidArgument) as err:
            await _configured(database_url, tmp_path, f"[environments.{name}]\nsecurity_scan = false\n")
        assert f"environments.{name}.policy.security_scan" in {v.field for v in err.value.violations}
    text = (
        "[environments.development]\nauto_deploy = true\nsecurity_scan = false\n"
        "[environments.staging]\n[environments.production]\n"
    )
    running = await _configured(database_url, tmp_path, text)
    try:
        await _signatures(running.registry)
        with caplog.at_level(logging.WARNING, logger="dspy_registry.registry"):
            created = await running.registry.RegisterProgram(
                _request("leaky", "1.0.0", artifact=_with_credentials())
            )
        assert created.created
        warned = " ".join(r.getMessage() for r in caplog.records if r.name == "dspy_registry.registry")
        assert "$.predict.lm.api_key: an OpenAI API key" in warned and OPENAI not in warned
        # Served in development, but it goes nowhere the scan is on: its stored artifact is scanned.
        for version, environment in (("1.0.0", "staging"), ("1.0.0", "production")):
            refused = await refusal(
                running.deployments.CreateDeployment(
                    dpb.CreateDeploymentRequest(
                        program="leaky",
                        version=version,
                        environment=environment,
                        strategy=dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE),
                    )
                )
            )
            assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
            failure = details(refused)["PreconditionFailure"]
            found = {(v.type, v.description) for v in failure.violations}  # type: ignore[attr-defined]
            assert ("SECURITY_SCAN", "$.predict.lm.api_key: an OpenAI API key") in found
            assert OPENAI not in str(refused.details()) + str(refused.trailing_metadata())
        await running.registry.RegisterProgram(_request("leaky", "1.0.1"))  # clean
        clean = await running.deployments.CreateDeployment(
            dpb.CreateDeploymentRequest(
                program="leaky",
                version="1.0.1",
                environment="staging",
                strategy=dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE),
            )
        )
        assert clean.deployment.state == dpb.DEPLOYMENT_STATE_SUCCEEDED
    finally:
        await _stop(running)


# -- impossible metrics ------------------------------------------------------------------------------


async def test_impossible_metrics_are_refused_at_registration(registry: Stub) -> None:
    await _signatures(registry)
    impossible = {"accuracy": 7.0, "f1": -5.0, "latency_p95_ms": -1.0, "cost_per_prediction": -0.01}
    err = await refusal(registry.RegisterProgram(_request("measured", "1.0.0", performance=impossible)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err) == {f"spec.performance[{name!r}]" for name in impossible}
    assert "between 0 and 1" in (err.details() or "")
    nan = await refusal(
        registry.RegisterProgram(_request("measured", "1.0.0", performance={"x": float("nan")}))
    )
    assert violations(nan) == {"spec.performance['x']"}
    possible = {"accuracy": 1.0, "f1": 0.0, "latency_p95_ms": 0.0, "improvement": -3.0}
    created = await registry.RegisterProgram(_request("measured", "1.0.0", performance=possible))
    assert dict(created.program_version.performance) == possible


# -- re-registration -------------------------------------------------------------------------------


async def test_re_registering_a_version_with_the_same_artifact(registry: Stub) -> None:
    await _signatures(registry)
    artifact = dspy_state("Classify. again")
    first = await registry.RegisterProgram(_request("again", "1.0.0", artifact=artifact))
    # The same artifact and the same spec: the first answer.
    same = await registry.RegisterProgram(_request("again", "1.0.0", artifact=artifact))
    assert not same.created and same.program_version == first.program_version
    latest = _request("again", "1.0.0", artifact=artifact)
    latest.spec.signature = "signatures/text_classifier/versions/1.0.0"
    assert (await registry.RegisterProgram(latest)).program_version == first.program_version
    # The same artifact and another spec: ALREADY_EXISTS naming each field that differs, values kept out.
    for change, fields in [
        ({"performance": {"accuracy": 0.95}}, {"spec.performance"}),
        ({"metadata": {"changelog": "better demos", "contact": "ml@example.com"}}, {"spec.metadata"}),
        ({"signature_version": "1.0.1"}, {"spec.signature"}),
        (
            {"performance": {"accuracy": 0.95}, "media_type": "application/json"},
            {"spec.performance", "spec.media_type"},
        ),
    ]:
        changed = _request("again", "1.0.0", artifact=artifact, **change)  # type: ignore[arg-type]
        err = await refusal(registry.RegisterProgram(changed))
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS, change
        assert violations(err) == fields, change
        assert details(err)["ResourceInfo"].resource_name == "programs/again/versions/1.0.0"  # type: ignore[attr-defined]
        assert "ml@example.com" not in str(err.trailing_metadata()) + (err.details() or "")
    labelled = _request("again", "1.0.0", artifact=artifact)
    labelled.spec.labels["team"] = "search"
    err = await refusal(registry.RegisterProgram(labelled))
    (named,) = details(err)["BadRequest"].field_violations  # type: ignore[attr-defined]
    assert named.field == "spec.labels" and "'team'" in named.description
    # Nothing changed: the stored version is the first one still.
    got = await registry.GetProgramVersion(pb.GetProgramVersionRequest(name="programs/again/versions/1.0.0"))
    assert got.program_version == first.program_version
    # Another artifact is ALREADY_EXISTS as before.
    other = await refusal(registry.RegisterProgram(_request("again", "1.0.0", artifact=dspy_state("other"))))
    assert other.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_a_streamed_upload_is_scanned_too(registry: Stub) -> None:
    await _signatures(registry)
    state = json.loads(dspy_state("big", pad=2 * 1024 * 1024))  # read and scanned off the event loop
    state["predict"]["demos"].append({"text": "ghp_" + "Fake0123456789abcdefFake0123456789ab"})
    data = json.dumps(state).encode()
    call = registry.UploadProgram()
    spec = _request("uploaded", "1.0.0").spec
    await call.write(pb.UploadProgramRequest(header=pb.UploadProgramHeader(spec=spec, size_bytes=len(data))))
    for i in range(0, len(data), 1 << 20):
        await call.write(pb.UploadProgramRequest(chunk=data[i : i + (1 << 20)]))
    await call.done_writing()
    err = await refusal(call)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    (found,) = details(err)["BadRequest"].field_violations  # type: ignore[attr-defined]
    assert (found.field, found.description.split(";")[0]) == (
        "artifact",
        "$.predict.demos[2].text: a GitHub token",
    )

"""RegistryService over a real channel, on SQLite and on Postgres."""

from __future__ import annotations

import asyncio
import hashlib
import json

import grpc
import pytest
from google.protobuf import struct_pb2

from dspy_registry.server.domain.guard import GuardMode
from dspy_registry.v1 import registry_pb2 as pb
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc
from tests.api.conftest import Running, details, register_signature, start, violations
from tests.calls import refusal
from tests.factories import dspy_state, spec_proto

Stub = pb_grpc.RegistryServiceStub
SIG = "signatures/text_classifier/versions/1.0.0"


def program_request(
    version: str = "2.1.0",
    *,
    name: str = "sentiment_classifier",
    artifact: bytes | None = None,
    performance: dict[str, float] | None = None,
    labels: dict[str, str] | None = None,
    request_id: str = "",
    change_type: int = 0,
    signature: str = SIG,
) -> pb.RegisterProgramRequest:
    metadata = struct_pb2.Struct()
    metadata.update({"optimization_method": "miprov2", "training_examples": 500, "changelog": "better demos"})
    return pb.RegisterProgramRequest(
        spec=pb.ProgramVersionSpec(
            program=name,
            version=version,
            change_type=change_type,  # type: ignore[arg-type]
            signature=signature,
            performance=performance if performance is not None else {"accuracy": 0.91, "latency_p95_ms": 150},
            labels=labels if labels is not None else {"team": "ml_platform", "domain": "customer_feedback"},
            metadata=metadata,
        ),
        artifact=artifact if artifact is not None else dspy_state(f"Classify. {version}"),
        request_id=request_id,
    )


# -- signatures ---------------------------------------------------------------------------


async def test_register_get_and_list_signatures(server: Running) -> None:
    registry = server.registry
    async with server.app.store.read() as tx:
        start = await tx.current_revision()  # the environments and the bootstrap came first
    sv = await register_signature(registry)
    assert sv.name == SIG and sv.revision == start + 1 and sv.creator == "principals/admin"
    got = await registry.GetSignature(pb.GetSignatureRequest(name="signatures/text_classifier"))
    assert got.signature_version == sv
    await register_signature(registry, version="1.1.0", outputs=("positive", "negative", "neutral", "mixed"))
    listed = await registry.ListSignatureVersions(
        pb.ListSignatureVersionsRequest(parent="signatures/text_classifier")
    )
    assert [v.version for v in listed.signature_versions] == ["1.1.0", "1.0.0"] and listed.total_size == 2
    assert listed.signature_versions[0].compatibility == pb.COMPATIBILITY_LEVEL_MINOR
    all_sigs = await registry.ListSignatures(pb.ListSignaturesRequest())
    assert [s.latest_version for s in all_sigs.signatures] == ["1.1.0"]


async def test_semver_guard_refuses_too_small_a_bump_and_names_each_breaking_change(registry: Stub) -> None:
    await register_signature(registry)
    narrower = spec_proto(outputs=("positive",))
    err = await refusal(
        registry.RegisterSignature(
            pb.RegisterSignatureRequest(signature="text_classifier", version="1.1.0", spec=narrower)
        )
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    failure = details(err)["PreconditionFailure"]
    assert [v.subject for v in failure.violations] == ["signatures/text_classifier:outputs.sentiment"] * 2  # type: ignore[attr-defined]
    message = err.details() or ""
    assert "'negative' removed" in message and "'neutral' removed" in message
    ok = await register_signature(registry, version="2.0.0", outputs=("positive",))
    assert ok.compatibility == pb.COMPATIBILITY_LEVEL_BREAKING


async def test_omitted_signature_version_takes_the_bump_the_changes_need(registry: Stub) -> None:
    await register_signature(registry)
    for outputs, expected in [
        (("positive", "negative", "neutral", "mixed"), "1.1.0"),
        (("positive", "negative"), "2.0.0"),
    ]:
        response = await registry.RegisterSignature(
            pb.RegisterSignatureRequest(signature="text_classifier", spec=spec_proto(outputs=outputs))
        )
        assert response.signature_version.version == expected
    patch = await registry.RegisterSignature(
        pb.RegisterSignatureRequest(
            signature="text_classifier",
            spec=spec_proto(outputs=("positive", "negative"), instructions="Terse."),
        )
    )
    assert patch.signature_version.version == "2.0.1"


async def test_check_compatibility_of_a_proposed_spec(registry: Stub) -> None:
    await register_signature(registry)
    response = await registry.CheckSignatureCompatibility(
        pb.CheckSignatureCompatibilityRequest(
            base=SIG, proposed=spec_proto(outputs=("positive", "negative")), proposed_version="1.0.1"
        )
    )
    assert response.compatibility.level == pb.COMPATIBILITY_LEVEL_BREAKING
    assert response.compatibility.required_change == pb.CHANGE_TYPE_MAJOR
    assert response.HasField("bump_sufficient") and not response.bump_sufficient


# -- programs -----------------------------------------------------------------------------


async def test_register_and_read_back_a_program_as_the_seed_does(registry: Stub) -> None:
    await register_signature(registry)
    created = await registry.RegisterProgram(program_request("2.1.0"))
    pv = created.program_version
    artifact = dspy_state("Classify. 2.1.0")
    assert created.created and pv.name == "programs/sentiment_classifier/versions/2.1.0"
    assert pv.artifact.digest == "sha256:" + hashlib.sha256(artifact).hexdigest()
    assert pv.artifact.size_bytes == len(artifact) and pv.signature == SIG
    assert pv.predictors[0].demo_count == 2 and pv.performance["accuracy"] == pytest.approx(0.91)
    assert pv.metadata["optimization_method"] == "miprov2" and pv.etag
    latest = await registry.GetProgramVersion(
        pb.GetProgramVersionRequest(name="programs/sentiment_classifier/versions/latest")
    )
    assert latest.program_version == pv
    program = await registry.GetProgram(pb.GetProgramRequest(name="programs/sentiment_classifier"))
    assert program.program.latest_version == "2.1.0" and program.program.version_count == 1
    assert program.program.labels["team"] == "ml_platform"


async def test_same_version_same_digest_is_a_no_op_other_digest_already_exists(registry: Stub) -> None:
    await register_signature(registry)
    first = await registry.RegisterProgram(program_request("1.0.0"))
    again = await registry.RegisterProgram(program_request("1.0.0"))
    assert not again.created and again.program_version == first.program_version
    err = await refusal(registry.RegisterProgram(program_request("1.0.0", artifact=dspy_state("different"))))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert details(err)["ResourceInfo"].resource_name == "programs/sentiment_classifier/versions/1.0.0"  # type: ignore[attr-defined]


async def test_auto_increment_records_the_previous_version(registry: Stub) -> None:
    await register_signature(registry)
    await registry.RegisterProgram(program_request("1.4.2"))
    for change, expected in [
        (pb.CHANGE_TYPE_PATCH, "1.4.3"),
        (pb.CHANGE_TYPE_MINOR, "1.5.0"),
        (pb.CHANGE_TYPE_MAJOR, "2.0.0"),
    ]:
        response = await registry.RegisterProgram(
            program_request("", change_type=change, artifact=dspy_state(f"auto {change}"))
        )
        assert response.program_version.version == expected
    assert response.program_version.previous_version == "1.5.0"
    assert response.program_version.change_type == pb.CHANGE_TYPE_MAJOR


async def test_bad_input_names_every_bad_field_and_writes_nothing(registry: Stub) -> None:
    await register_signature(registry)
    request = program_request(
        "1.0", name="Bad Name", performance={"accuracy": float("nan")}, labels={"Team": "x"}
    )
    request.spec.media_type = "not a media type"
    err = await refusal(registry.RegisterProgram(request))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err) == {
        "spec.program",
        "spec.version",
        "spec.media_type",
        "spec.labels['Team']",
        "spec.performance['accuracy']",
    }
    not_dspy = await refusal(registry.RegisterProgram(program_request("1.0.0", artifact=b'{"metadata": {}}')))
    assert violations(not_dspy) == {"artifact"}
    listed = await registry.ListPrograms(pb.ListProgramsRequest())
    assert listed.total_size == 0


async def test_unknown_signature_is_not_found_by_name(registry: Stub) -> None:
    err = await refusal(registry.RegisterProgram(program_request("1.0.0")))
    assert err.code() == grpc.StatusCode.NOT_FOUND and SIG in (err.details() or "")
    missing = await refusal(
        registry.GetProgramVersion(pb.GetProgramVersionRequest(name="programs/nope/versions/1.0.0"))
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert details(missing)["ResourceInfo"].resource_name == "programs/nope/versions/1.0.0"  # type: ignore[attr-defined]


async def test_the_same_request_id_eight_times_at_once_gives_one_version_and_identical_answers(
    registry: Stub,
) -> None:
    await register_signature(registry)
    request = program_request("", change_type=pb.CHANGE_TYPE_MINOR, request_id="retry-me")
    answers = await asyncio.gather(*(registry.RegisterProgram(request) for _ in range(8)))
    assert len({a.SerializeToString(deterministic=True) for a in answers}) == 1
    versions = await registry.ListProgramVersions(
        pb.ListProgramVersionsRequest(parent="programs/sentiment_classifier")
    )
    assert versions.total_size == 1
    reused = program_request("", change_type=pb.CHANGE_TYPE_MAJOR, request_id="retry-me")
    err = await refusal(registry.RegisterProgram(reused))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and violations(err) == {"request_id"}


async def test_list_programs_filters_pages_and_counts(registry: Stub) -> None:
    await register_signature(registry)
    for i in range(5):
        team = "ml_platform" if i < 3 else "search"
        await registry.RegisterProgram(program_request("1.0.0", name=f"sentiment_{i}", labels={"team": team}))
    first = await registry.ListPrograms(pb.ListProgramsRequest(page_size=2, labels={"team": "ml_platform"}))
    assert [p.name for p in first.programs] == ["programs/sentiment_0", "programs/sentiment_1"]
    assert first.total_size == 3 and first.next_page_token
    rest = await registry.ListPrograms(
        pb.ListProgramsRequest(page_size=2, labels={"team": "ml_platform"}, page_token=first.next_page_token)
    )
    assert [p.name for p in rest.programs] == ["programs/sentiment_2"] and rest.next_page_token == ""
    foreign = await refusal(registry.ListPrograms(pb.ListProgramsRequest(page_token=first.next_page_token)))
    assert violations(foreign) == {"page_token"}
    negative = await refusal(registry.ListPrograms(pb.ListProgramsRequest(page_size=-1)))
    assert violations(negative) == {"page_size"}


async def test_compare_versions_and_upgrade_path(database_url: str) -> None:
    # The guard off: the path must hold a breaking minor step (1.2.0) for GetUpgradePath to report.
    running = await start(database_url, semver_guard=GuardMode.OFF)
    try:
        await _compare_versions_and_upgrade_path(running.registry)
    finally:
        await running.channel.close(None)
        await running.app.stop(grace=0)


async def _compare_versions_and_upgrade_path(registry: Stub) -> None:
    await register_signature(registry)
    await register_signature(registry, version="1.1.0", outputs=("positive", "negative", "neutral", "mixed"))
    await registry.RegisterProgram(
        program_request("1.0.0", performance={"accuracy": 0.88, "latency_p95_ms": 200})
    )
    await registry.RegisterProgram(
        program_request(
            "1.1.0",
            performance={"accuracy": 0.92, "latency_p95_ms": 150},
            signature="signatures/text_classifier/versions/1.1.0",
        )
    )
    await registry.RegisterProgram(
        program_request("1.2.0", performance={"accuracy": 0.80, "latency_p95_ms": 150})
    )
    compared = await registry.CompareProgramVersions(
        pb.CompareProgramVersionsRequest(
            base="programs/sentiment_classifier/versions/1.0.0",
            target="programs/sentiment_classifier/versions/1.1.0",
        )
    )
    accuracy = next(d for d in compared.performance_diff if d.metric == "accuracy")
    assert accuracy.change == pytest.approx(0.04) and accuracy.change_percent == pytest.approx(4.55)
    assert compared.recommendation == pb.RECOMMENDATION_UPGRADE
    assert compared.compatibility.level == pb.COMPATIBILITY_LEVEL_MINOR
    assert "signature" in [c.path for c in compared.configuration_diff]
    path = await registry.GetUpgradePath(
        pb.GetUpgradePathRequest(
            program="programs/sentiment_classifier", from_version="1.0.0", to_version="latest"
        )
    )
    assert [(s.from_version, s.to_version) for s in path.steps] == [("1.0.0", "1.1.0"), ("1.1.0", "1.2.0")]
    # 1.2.0 went back to signature 1.0.0, dropping the enum value `mixed`: breaking.
    assert path.steps[1].compatibility.level == pb.COMPATIBILITY_LEVEL_BREAKING
    assert path.steps[1].breaking_changes == ["outputs.sentiment: enum value 'mixed' removed"]
    assert any("accuracy regression" in t for t in path.steps[1].recommended_tests)
    backwards = await refusal(
        registry.GetUpgradePath(
            pb.GetUpgradePathRequest(
                program="programs/sentiment_classifier", from_version="1.2.0", to_version="1.0.0"
            )
        )
    )
    assert violations(backwards) == {"from_version"}


async def test_yank_keeps_the_version_moves_latest_and_checks_the_etag(registry: Stub) -> None:
    await register_signature(registry)
    await registry.RegisterProgram(program_request("1.0.0"))
    second = (await registry.RegisterProgram(program_request("1.1.0"))).program_version
    stale = await refusal(
        registry.YankProgramVersion(
            pb.YankProgramVersionRequest(name=second.name, reason="regressed", etag="rev-1")
        )
    )
    assert stale.code() == grpc.StatusCode.ABORTED
    latest_name = "programs/sentiment_classifier/versions/latest"
    before = await registry.GetProgramVersion(pb.GetProgramVersionRequest(name=latest_name))
    assert before.program_version.version == "1.1.0"  # now cached by the server
    yanked = await registry.YankProgramVersion(
        pb.YankProgramVersionRequest(name=second.name, reason="regressed", etag=second.etag)
    )
    exact = await registry.GetProgramVersion(pb.GetProgramVersionRequest(name=second.name))
    assert exact.program_version.yanked
    assert yanked.program_version.yanked and yanked.program_version.etag != second.etag
    latest = await registry.GetProgramVersion(
        pb.GetProgramVersionRequest(name="programs/sentiment_classifier/versions/latest")
    )
    assert latest.program_version.version == "1.0.0"
    listed = await registry.ListProgramVersions(
        pb.ListProgramVersionsRequest(parent="programs/sentiment_classifier")
    )
    assert [(v.version, v.yanked) for v in listed.program_versions] == [("1.1.0", True), ("1.0.0", False)]
    no_reason = await refusal(registry.YankProgramVersion(pb.YankProgramVersionRequest(name=second.name)))
    assert violations(no_reason) == {"reason"}


async def _upload(
    registry: Stub, data: bytes, version: str, chunk: int = 1 << 20
) -> pb.UploadProgramResponse:
    async def messages() -> object:
        yield pb.UploadProgramRequest(
            header=pb.UploadProgramHeader(
                spec=program_request(version).spec,
                expected_digest="sha256:" + hashlib.sha256(data).hexdigest(),
                size_bytes=len(data),
            )
        )
        for i in range(0, len(data), chunk):
            yield pb.UploadProgramRequest(chunk=data[i : i + chunk])

    response: pb.UploadProgramResponse = await registry.UploadProgram(messages())
    return response


async def test_upload_a_large_artifact_and_stream_it_back_in_chunks(registry: Stub) -> None:
    await register_signature(registry)
    data = dspy_state("big", pad=5 * 1024 * 1024)  # above the 4 MiB unary limit
    too_big = await refusal(registry.RegisterProgram(program_request("3.0.0", artifact=data)))
    assert too_big.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    uploaded = await _upload(registry, data, "3.0.0")
    digest = uploaded.program_version.artifact.digest
    received = b""
    sizes = []
    async for message in registry.GetArtifact(
        pb.GetArtifactRequest(program="programs/sentiment_classifier", digest=digest)
    ):
        if not received:
            assert message.artifact.size_bytes == len(data)
        assert message.offset == len(received)
        sizes.append(len(message.data))
        received += message.data
    assert received == data and max(sizes) <= 1 << 20 and len(sizes) == 6
    assert "sha256:" + hashlib.sha256(received).hexdigest() == digest
    elsewhere = registry.GetArtifact(pb.GetArtifactRequest(program="programs/other", digest=digest))
    err = await refusal(elsewhere.read())
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_upload_beyond_the_limit_is_refused_and_stores_nothing(database_url: str) -> None:
    running: Running = await start(database_url, upload_limit=256 * 1024)
    try:
        await register_signature(running.registry)
        data = dspy_state("big", pad=300 * 1024)
        err = await refusal(_upload(running.registry, data, "1.0.0", chunk=64 * 1024))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        listed = await running.registry.ListPrograms(pb.ListProgramsRequest())
        assert listed.total_size == 0
        wrong = data[:1000]
        bad_digest = await refusal(_upload(running.registry, wrong + b" ", "1.0.0"))
        assert bad_digest.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await running.channel.close(None)
        await running.app.stop(grace=0)


async def test_an_environment_that_serves_nothing_is_not_found(registry: Stub) -> None:
    err = await refusal(
        registry.GetProgramVersion(pb.GetProgramVersionRequest(name="programs/x", environment="production"))
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND and "serves no version" in (err.details() or "")


async def test_sixteen_clients_at_once_explicit_and_auto_increment(server: Running) -> None:
    registry = server.registry
    async with server.app.store.read() as tx:
        start = await tx.current_revision()  # the environments and the bootstrap came first
    await register_signature(registry)
    await registry.RegisterProgram(program_request("1.0.0"))  # the base every auto-increment starts from
    explicit = [program_request(f"1.0.{i}", artifact=dspy_state(f"e{i}")) for i in range(1, 9)]
    auto = [
        program_request("", change_type=pb.CHANGE_TYPE_MINOR, artifact=dspy_state(f"a{i}")) for i in range(8)
    ]
    answers = await asyncio.gather(*(registry.RegisterProgram(r) for r in explicit + auto))
    got = [a.program_version.version for a in answers]
    assert len(set(got)) == 16
    assert sorted(v for v in got if not v.startswith("1.0.")) == [f"1.{m}.0" for m in range(1, 9)]
    async with server.app.store.read() as tx:
        revisions = [e.revision for e in await tx.events_after(start)]
    # One revision per registration (its auto-deploy to development shares it), no gaps, in order.
    assert sorted(set(revisions)) == list(range(start + 1, start + 19)) and revisions == sorted(revisions)


async def test_semver_guard_and_prereleases_and_backports(registry: Stub) -> None:
    await register_signature(registry)  # 1.0.0: positive, negative, neutral
    narrower = ("positive", "negative")
    # A pre-release of the next major may break; so may its final release and later rcs.
    for version in ("2.0.0-rc.1", "2.0.0-rc.2", "2.0.0"):
        ok = await register_signature(registry, version=version, outputs=narrower)
        assert ok.previous_version == "1.0.0" and ok.compatibility == pb.COMPATIBILITY_LEVEL_BREAKING
    # A pre-release of a minor may not.
    err = await refusal(
        registry.RegisterSignature(
            pb.RegisterSignatureRequest(
                signature="text_classifier", version="1.1.0-rc.1", spec=spec_proto(outputs=narrower)
            )
        )
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    # A backport 1.0.1 that adds an output 2.0.0 lacks is fine against 2.0.0 (a major step) …
    await register_signature(registry, version="1.0.1", instructions="Terser.")
    # … but 1.1.0 adding an enum value would make 1.1.0 -> 1.2.0 breaking once 1.2.0 exists.
    await register_signature(registry, version="1.2.0", outputs=("positive", "negative", "neutral", "mixed"))
    backport = await refusal(
        registry.RegisterSignature(
            pb.RegisterSignatureRequest(
                signature="text_classifier",
                version="1.1.0",
                spec=spec_proto(outputs=("positive", "negative", "neutral", "mixed", "sarcastic")),
            )
        )
    )
    assert backport.code() == grpc.StatusCode.FAILED_PRECONDITION and "1.2.0" in (backport.details() or "")


async def test_odd_input_is_invalid_argument_never_internal(registry: Stub) -> None:
    import base64

    await register_signature(registry)
    newline = program_request("1.0.0", name="abc\n")
    assert violations(await refusal(registry.RegisterProgram(newline))) == {"spec.program"}
    nan = program_request("1.0.0")
    nan.spec.metadata.update({"score": float("nan")})
    assert violations(await refusal(registry.RegisterProgram(nan))) == {"spec.metadata"}
    deep = program_request("1.0.0", artifact=b"[" * 100_000)
    assert violations(await refusal(registry.RegisterProgram(deep))) == {"artifact"}
    long_number = program_request("1.0.0", artifact=b'{"n": ' + b"9" * 5000 + b"}")  # beyond int()'s digits
    assert violations(await refusal(registry.RegisterProgram(long_number))) == {"artifact"}
    spaced = program_request("1.0.0", request_id="has space")
    assert violations(await refusal(registry.RegisterProgram(spaced))) == {"request_id"}
    upper = pb.ListProgramsRequest(name_prefix="SENT")
    assert violations(await refusal(registry.ListPrograms(upper))) == {"name_prefix"}
    await registry.RegisterProgram(program_request("1.0.0"))
    await registry.RegisterProgram(program_request("1.0.1"))
    first = await registry.ListProgramVersions(
        pb.ListProgramVersionsRequest(parent="programs/sentiment_classifier", page_size=1)
    )
    fingerprint = json.loads(base64.urlsafe_b64decode(first.next_page_token + "=="))["q"]
    for forged_after in ("not json", "[1, 2]", "[" * 5000):
        raw = json.dumps({"a": forged_after, "q": fingerprint}).encode()
        token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        forged = pb.ListProgramVersionsRequest(parent="programs/sentiment_classifier", page_token=token)
        assert violations(await refusal(registry.ListProgramVersions(forged))) == {"page_token"}
    control = pb.YankProgramVersionRequest(
        name="programs/sentiment_classifier/versions/1.0.0", reason="bad\x00"
    )
    assert violations(await refusal(registry.YankProgramVersion(control))) == {"reason"}

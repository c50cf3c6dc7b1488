"""The seed's code blocks (shared/seed/registry-and-versions.md), translated one for one to this client,
on SQLite and Postgres: one test per block, in the seed's order, named after its section. The REST API
block runs against a real `serve --http-listen` process: tests/e2e/test_seed_rest.py.

The seed is Ruby; the translation keeps its names (ClassifyText, text_classifier,
sentiment_classifier_v2, the versions and metadata keys) and calls the client's methods in its words.
Where a line does not translate word for word, a comment quotes it and says what stands for it here.
No language model is configured: where the seed calls a program, the test goes as far as dspy goes
without one (the prompt the program would send), and checks that the call stops there.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dspy
import pytest
from google.protobuf import json_format

from dspy_registry.client import (
    AccessDeniedError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    Registry,
)
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import registry_pb2 as pb
from tests.api.conftest import Running, start
from tests.eventually import until

F = pb.FieldType
PROGRAM = "sentiment_classifier_v2"  # the seed's name in its register and load blocks


class ClassifyText(dspy.Signature):  # type: ignore[misc]
    """Classify text sentiment with confidence scoring"""

    # The seed's `class Sentiment < T::Enum`: a str-valued Enum, registered as an enum of its values.
    class Sentiment(enum.Enum):
        POSITIVE = "positive"
        NEGATIVE = "negative"
        NEUTRAL = "neutral"

    text: str = dspy.InputField()
    sentiment: Sentiment = dspy.OutputField()
    confidence: float = dspy.OutputField()


class ClassifyTextWithoutNeutral(dspy.Signature):  # type: ignore[misc]
    """Classify text sentiment with confidence scoring"""

    # Removing an enum value breaks callers that expect it: a major signature version (2.0.0).
    class Sentiment(enum.Enum):
        POSITIVE = "positive"
        NEGATIVE = "negative"

    text: str = dspy.InputField()
    sentiment: Sentiment = dspy.OutputField()
    confidence: float = dspy.OutputField()


def example(text: str, sentiment: str, confidence: float) -> dspy.Example:
    return dspy.Example(text=text, sentiment=sentiment, confidence=confidence).with_inputs("text")


TRAINING_EXAMPLES = [
    example("This product is amazing!", "positive", 0.97),
    example("Broke after a day.", "negative", 0.93),
    example("It arrived on Tuesday.", "neutral", 0.81),
]


def optimize(examples: list[dspy.Example]) -> dspy.Predict:
    """The seed's `optimizer.optimize(examples: training_examples).best_predictor`, without a language model.

    MIPROv2 proposes instructions and scores candidates with an LM; LabeledFewShot is dspy's optimizer
    that needs none: it puts the labelled examples into the predictor as its few-shot demos.
    """
    optimizer = dspy.LabeledFewShot(k=len(examples))
    best_predictor: dspy.Predict = optimizer.compile(dspy.Predict(ClassifyText), trainset=examples)
    return best_predictor


def sentiment_predictor() -> dspy.Predict:
    """What a loaded program's state goes into: dspy saves state, not the program's structure."""
    return dspy.Predict(ClassifyText)


def demo_texts(program: dspy.Predict) -> list[str]:
    return sorted(demo["text"] for demo in program.demos)


@pytest.fixture(autouse=True)
def no_language_model() -> Any:
    # Nothing in these tests may reach a language model: none is configured, before or after.
    assert dspy.settings.lm is None
    yield
    assert dspy.settings.lm is None


@pytest.fixture
async def registry(server: Running) -> AsyncIterator[Registry]:
    """The client as the bootstrap admin (here `registry` is the client, as in the seed, not the stub
    tests/api/conftest.py's fixture of that name gives)."""
    async with Registry.connect(server.target, token=server.admin_token) as client:
        yield client


async def register_classify_text(registry: Registry) -> None:
    await registry.register_signature(name="text_classifier", signature=ClassifyText, version="1.0.0")


async def register_version(
    registry: Registry,
    version: str,
    examples: list[dspy.Example],
    performance: dict[str, float],
    signature_version: str = "1.0.0",
) -> pb.ProgramVersion:
    return await registry.register_program(
        name=PROGRAM,
        program=optimize(examples),
        signature_name="text_classifier",
        signature_version=signature_version,
        version=version,
        performance=performance,
    )


async def approver(registry: Registry, server: Running) -> Registry:
    """A client for carol, who may approve: production needs one approval, not the requester's."""
    await registry.create_principal("carol", team="ml_platform")
    await registry.grant_permission("carol", action="approve", resource=PROGRAM)
    token = (await registry.create_token("carol", description="approvals")).secret
    return Registry.connect(server.target, token=token)


# -- Basic Usage


async def test_registering_signatures(registry: Registry) -> None:
    registered = await registry.register_signature(
        name="text_classifier",
        signature=ClassifyText,
        version="1.0.0",
        metadata={
            "description": "Production sentiment classifier",
            "team": "ml_platform",
            "domain": "customer_feedback",
        },
    )
    fetched = await registry.get_signature("text_classifier", "1.0.0")

    assert registered.name == "signatures/text_classifier/versions/1.0.0"
    assert fetched.name == registered.name
    # `description "Classify text sentiment with confidence scoring"`: dspy's docstring, the instructions.
    assert fetched.spec.instructions == "Classify text sentiment with confidence scoring"
    assert [(f.name, f.type.kind, f.required) for f in fetched.spec.input_fields] == [
        ("text", F.KIND_STRING, True)
    ]
    sentiment, confidence = fetched.spec.output_fields
    assert (sentiment.name, sentiment.type.kind) == ("sentiment", F.KIND_ENUM)
    assert list(sentiment.type.enum_values) == ["positive", "negative", "neutral"]
    assert (confidence.name, confidence.type.kind) == ("confidence", F.KIND_FLOAT)
    assert json_format.MessageToDict(fetched.metadata) == {
        "description": "Production sentiment classifier",
        "team": "ml_platform",
        "domain": "customer_feedback",
    }
    assert [s.name async for s in registry.list_signatures()] == ["signatures/text_classifier"]


async def test_registering_optimized_programs(registry: Registry) -> None:
    await register_classify_text(registry)
    training_examples = TRAINING_EXAMPLES
    # `result = optimizer.optimize(examples: training_examples)`; `result.best_score` is the accuracy an
    # optimizer measured on its validation set (0.92: the figure of the seed's metadata example).
    best_predictor, best_score = optimize(training_examples), 0.92

    registered = await registry.register_program(
        name="sentiment_classifier_v2",
        program=best_predictor,
        signature_name="text_classifier",
        version="2.1.0",
        metadata={
            "optimization_method": "miprov2",
            "training_examples": len(training_examples),
            "deployment_target": "production",
        },
        # The seed's `metadata: { performance: {...} }`: metrics have a field of their own, a map of
        # numbers the registry compares, validates and analyses (see Version Comparison).
        performance={"accuracy": best_score, "validation_score": 0.91, "test_score": 0.89},
    )
    fetched = await registry.get_program_version("sentiment_classifier_v2", "2.1.0")

    assert fetched == registered
    assert fetched.name == "programs/sentiment_classifier_v2/versions/2.1.0"
    # `signature_name: 'text_classifier'`, no version given: the latest, resolved and kept.
    assert fetched.signature == "signatures/text_classifier/versions/1.0.0"
    assert dict(fetched.performance) == {"accuracy": 0.92, "validation_score": 0.91, "test_score": 0.89}
    assert json_format.MessageToDict(fetched.metadata) == {
        "optimization_method": "miprov2",
        "training_examples": 3,
        "deployment_target": "production",
    }
    # The program itself is the optimized predictor's saved state: its demos are the training examples.
    assert [(p.name, p.demo_count) for p in fetched.predictors] == [("self", 3)]
    loaded = await registry.load_program("sentiment_classifier_v2", "2.1.0")
    assert loaded.state == best_predictor.dump_state() | {"metadata": loaded.state["metadata"]}
    assert loaded.state["metadata"]["dependency_versions"]["dspy"] == dspy.__version__


async def test_loading_programs_from_registry(registry: Registry, server: Running) -> None:
    await register_classify_text(registry)
    await register_version(registry, "1.5.0", TRAINING_EXAMPLES[:1], {"accuracy": 0.88})
    await register_version(registry, "2.1.0", TRAINING_EXAMPLES, {"accuracy": 0.92})
    # Production serves 1.5.0 (through staging, approved by someone else), while 2.1.0 is the latest.
    await registry.create_deployment(PROGRAM, "1.5.0", "staging", strategy="replace")
    pending = await registry.create_deployment(PROGRAM, "1.5.0", "production", strategy="replace")
    async with await approver(registry, server) as carol:
        await carol.approve_deployment(pending.name, comment="looks good")

    # `classifier = DSPy::Registry.load_program('sentiment_classifier_v2')`: the latest version. dspy
    # saves a program's state, not its structure, so the caller says what to load it into.
    classifier = await registry.load_program("sentiment_classifier_v2", module=sentiment_predictor)
    assert isinstance(classifier, dspy.Predict)
    assert classifier.dump_state() == optimize(TRAINING_EXAMPLES).dump_state()
    # `result = classifier.call(text: "This product is amazing!")` would ask a language model. Without
    # one, the loaded program still builds its prompt, with 2.1.0's demos, then stops at the LM call.
    messages = dspy.ChatAdapter().format(
        classifier.signature, classifier.demos, {"text": "This product is amazing!"}
    )
    prompt = "\n".join(str(m["content"]) for m in messages)
    assert "Broke after a day." in prompt and "It arrived on Tuesday." in prompt
    assert messages[-1]["content"].startswith("[[ ## text ## ]]\nThis product is amazing!")
    with pytest.raises(ValueError, match="No LM is loaded"):
        classifier(text="This product is amazing!")

    # `classifier_v1 = DSPy::Registry.load_program('sentiment_classifier_v2', version: '1.5.0')`
    classifier_v1 = await registry.load_program(
        "sentiment_classifier_v2", version="1.5.0", module=sentiment_predictor
    )
    assert demo_texts(classifier_v1) == ["This product is amazing!"]

    # `production_classifier = DSPy::Registry.load_program('sentiment_classifier_v2', environment: 'production')`
    production_classifier = await registry.load_program(
        "sentiment_classifier_v2", environment="production", module=sentiment_predictor
    )
    assert production_classifier.dump_state() == classifier_v1.dump_state()
    # Without `module=`, the same calls give the version record with its artifact and parsed state.
    assert (await registry.load_program("sentiment_classifier_v2")).version == "2.1.0"
    assert (
        await registry.load_program("sentiment_classifier_v2", environment="production")
    ).version == "1.5.0"
    with pytest.raises(NotFoundError):
        await registry.load_program("sentiment_classifier_v2", version="1.4.0")


# -- Version Management


async def test_version_management_semantic_versioning(registry: Registry, server: Running) -> None:
    await register_classify_text(registry)
    await register_version(registry, "2.1.0", TRAINING_EXAMPLES[:1], {"accuracy": 0.90})

    # VersionManager#create_version: the registry reads the latest version, increments it by the change
    # type and records `previous_version` and `change_type` (and the time) on the new version.
    created: dict[str, pb.ProgramVersion] = {}
    for change_type, examples, accuracy in (
        ("patch", TRAINING_EXAMPLES[:2], 0.91),
        ("minor", TRAINING_EXAMPLES[1:], 0.80),
        ("major", TRAINING_EXAMPLES, 0.95),
    ):
        current_version = (await registry.get_latest_version(PROGRAM)).version
        new_version = await registry.register_program(
            name=PROGRAM,
            program=optimize(examples),
            signature_name="text_classifier",
            change_type=change_type,
            performance={"accuracy": accuracy},
        )
        assert new_version.previous_version == current_version
        assert new_version.create_time.seconds > 0
        created[change_type] = new_version
    # increment_version: "#{major}.#{minor}.#{patch + 1}", "#{major}.#{minor + 1}.0", "#{major + 1}.0.0".
    assert {kind: v.version for kind, v in created.items()} == {
        "patch": "2.1.1",
        "minor": "2.2.0",
        "major": "3.0.0",
    }
    assert [v.change_type for v in created.values()] == [
        pb.CHANGE_TYPE_PATCH,
        pb.CHANGE_TYPE_MINOR,
        pb.CHANGE_TYPE_MAJOR,
    ]

    # VersionManager#promote_version(program_name, version, target_environment): a deployment, which the
    # server validates against the environment's policy (the seed's validate_for_environment). The seed
    # updates the environment at once, so `replace` rather than the environment's default strategy.
    staged = await registry.promote_version(PROGRAM, "2.2.0", "staging", strategy="replace")
    assert staged.state == dpb.DEPLOYMENT_STATE_SUCCEEDED  # StagingValidator: no accuracy floor
    # `raise "Validation failed: #{validation_result.errors}" unless validation_result.valid?`:
    # ProductionValidator wants accuracy >= 0.85, and 2.2.0 registered 0.80.
    with pytest.raises(FailedPreconditionError) as refused:
        await registry.promote_version(PROGRAM, "2.2.0", "production", strategy="replace")
    assert any("accuracy" in description for _, _, description in refused.value.precondition_violations), (
        refused.value.precondition_violations
    )
    assert [d.environment async for d in registry.list_deployments(PROGRAM, "production")] == []

    # A valid version goes to staging, then to production, where it waits for an approval.
    await registry.promote_version(PROGRAM, "3.0.0", "staging", strategy="replace")
    promoted = await registry.promote_version(PROGRAM, "3.0.0", "production", strategy="replace")
    assert promoted.state == dpb.DEPLOYMENT_STATE_PENDING_APPROVAL
    async with await approver(registry, server) as carol:
        approved = await carol.approve_deployment(promoted.name)
    # `@registry.update_deployment(... deployed_at: Time.current)` and `create_deployment_record`.
    assert approved.state == dpb.DEPLOYMENT_STATE_SUCCEEDED and approved.end_time.seconds > 0
    assert (await registry.load_program(PROGRAM, environment="production")).version == "3.0.0"
    assert (await registry.load_program(PROGRAM, environment="staging")).version == "3.0.0"


async def test_version_comparison(registry: Registry) -> None:
    await register_classify_text(registry)
    await registry.register_signature(
        name="text_classifier", signature=ClassifyTextWithoutNeutral, version="2.0.0"
    )
    await register_version(registry, "1.5.0", TRAINING_EXAMPLES[:1], {"accuracy": 0.85})
    await register_version(
        registry, "2.0.0", TRAINING_EXAMPLES[:1], {"accuracy": 0.90, "latency_p95_ms": 160}
    )
    await register_version(
        registry,
        "2.1.0",
        TRAINING_EXAMPLES[:2],
        {"accuracy": 0.92, "latency_p95_ms": 150, "validation_score": 0.91},
    )
    await register_version(
        registry, "2.2.0", TRAINING_EXAMPLES, {"accuracy": 0.94, "latency_p95_ms": 140, "test_score": 0.90}
    )
    await register_version(
        registry, "3.0.0", TRAINING_EXAMPLES, {"accuracy": 0.95}, signature_version="2.0.0"
    )

    # VersionComparator#compare_versions(program_name, version1, version2)
    comparison = await registry.compare_program_versions(PROGRAM, "2.1.0", "2.2.0")
    # compare_performance: only `common_metrics = metrics1.keys & metrics2.keys`; for each, the two
    # values, `change` and `change_percent` (change / version1's value * 100, `.round(2)`).
    by_metric = {d.metric: d for d in comparison.performance_diff}
    assert set(by_metric) == {"accuracy", "latency_p95_ms"}
    accuracy, latency = by_metric["accuracy"], by_metric["latency_p95_ms"]
    assert (accuracy.base_value, accuracy.target_value) == (0.92, 0.94)
    assert accuracy.change == pytest.approx(0.02) and accuracy.change_percent == 2.17
    assert (latency.base_value, latency.target_value, latency.change) == (150, 140, -10)
    assert latency.change_percent == -6.67
    # configuration_diff: 2.2.0 carries one more demo; compatibility: the same signature.
    assert ("predictors.self.demo_count", "2", "3") in [
        (c.path, c.base_value, c.target_value) for c in comparison.configuration_diff
    ]
    assert comparison.compatibility.level == pb.COMPATIBILITY_LEVEL_IDENTICAL
    # generate_recommendation: compatible, accuracy up and latency down.
    assert comparison.recommendation == pb.RECOMMENDATION_UPGRADE

    breaking = await registry.compare_program_versions(PROGRAM, "2.2.0", "3.0.0")
    assert breaking.compatibility.level == pb.COMPATIBILITY_LEVEL_BREAKING
    assert breaking.recommendation == pb.RECOMMENDATION_BREAKING
    assert "signature" in [c.path for c in breaking.configuration_diff]

    # VersionComparator#generate_upgrade_path: `@registry.list_versions(program_name)` ...
    versions = [v.version async for v in registry.list_program_versions(PROGRAM)]
    assert versions == ["3.0.0", "2.2.0", "2.1.0", "2.0.0", "1.5.0"]  # newest first; the seed sorts after
    # ... `.select { |v| version_between?(v, from_version, to_version) }.sort`, then `each_cons(2)`.
    steps = await registry.get_upgrade_path(PROGRAM, "2.0.0", "3.0.0")
    assert [(s.from_version, s.to_version) for s in steps] == [
        ("2.0.0", "2.1.0"),
        ("2.1.0", "2.2.0"),
        ("2.2.0", "3.0.0"),
    ]
    assert [s.compatibility.level for s in steps] == [
        pb.COMPATIBILITY_LEVEL_IDENTICAL,
        pb.COMPATIBILITY_LEVEL_IDENTICAL,
        pb.COMPATIBILITY_LEVEL_BREAKING,
    ]
    # identify_breaking_changes: none until the signature drops 'neutral'.
    assert [list(s.breaking_changes) for s in steps[:2]] == [[], []]
    assert any("neutral" in change for change in steps[2].breaking_changes), steps[2].breaking_changes
    # generate_test_recommendations: something to run before each step.
    assert all(s.recommended_tests for s in steps)


# -- Deployment Management


async def test_deployment_tracking(registry: Registry) -> None:
    await register_classify_text(registry)
    for version, examples, accuracy in (
        ("2.0.0", TRAINING_EXAMPLES[:1], 0.90),
        ("2.1.0", TRAINING_EXAMPLES[:2], 0.92),
        ("2.2.0", TRAINING_EXAMPLES, 0.94),
    ):
        await register_version(registry, version, examples, {"accuracy": accuracy})

    # DeploymentTracker#deploy: `strategy: options[:strategy] || :replace` (the client's
    # `create_deployment` takes the environment's default, blue-green in staging, so the seed's is spelt out).
    standard = await registry.create_deployment(PROGRAM, "2.0.0", "staging", strategy="replace")
    assert standard.state == dpb.DEPLOYMENT_STATE_SUCCEEDED
    # DeploymentTracker#rollback: `raise "No previous version to rollback to" unless previous_version`.
    with pytest.raises(FailedPreconditionError):
        await registry.rollback_deployment(standard.name, reason="nothing before it")

    # `when :blue_green then execute_blue_green_deployment`: green staged, validated, traffic switched,
    # `update_deployment_status(deployment_id, :completed)`.
    blue_green = await registry.create_deployment(PROGRAM, "2.1.0", "staging", strategy="blue_green")
    assert blue_green.strategy.strategy == dpb.STRATEGY_BLUE_GREEN

    async def switched() -> bool:
        return (await registry.get_deployment(blue_green.name)).state == dpb.DEPLOYMENT_STATE_SUCCEEDED

    await until(switched, "the blue-green deployment switched to green")
    assert (await registry.load_program(PROGRAM, environment="staging")).version == "2.1.0"

    # `when :canary then execute_canary_deployment(deployment_id, options[:canary_percent] || 10)`:
    # `route_traffic_percentage(deployment, canary_percent)`, then the canary is monitored (held here).
    canary = await registry.create_deployment(
        PROGRAM, "2.2.0", "staging", strategy="canary", canary_percent=10, pause=3600
    )
    assert (canary.state, canary.weight_percent) == (dpb.DEPLOYMENT_STATE_IN_PROGRESS, 10)
    during = await registry.get_deployment_status(PROGRAM, "staging")
    assert (during.target.stable.version, during.target.candidate.version) == ("2.1.0", "2.2.0")
    assert during.target.candidate.weight_percent == 10

    # `rollback(deployment_id, reason:)`: the previous version deployed at once (`strategy: :immediate`,
    # `rollback_from: deployment_id`), the original `:rolled_back` with the reason.
    reason = "Accuracy dropped by 0.14 (threshold: 0.1)"
    rolled = await registry.rollback_deployment(canary.name, reason=reason)
    rollback_deployment_id = rolled.deployment.name
    assert rolled.deployment.version == "2.1.0"
    assert rolled.deployment.strategy.strategy == dpb.STRATEGY_REPLACE
    assert rolled.deployment.rolled_back_deployment == canary.name
    assert rolled.deployment.reason == reason
    original = await registry.get_deployment(canary.name)
    assert original.state == dpb.DEPLOYMENT_STATE_ROLLED_BACK
    assert original.rollback_deployment == rollback_deployment_id
    assert reason in [t.reason for t in original.timeline]

    # get_deployment_status(program_name, environment): the newest deployment of the pair.
    status = await registry.get_deployment_status(PROGRAM, "staging")
    current = status.current_deployment
    assert current.name == rollback_deployment_id  # deployment_id
    assert current.version == status.target.stable.version == "2.1.0"  # version
    assert current.state == dpb.DEPLOYMENT_STATE_SUCCEEDED  # status
    assert current.create_time.seconds > 0  # deployed_at
    assert not status.target.HasField("candidate")
    # health and performance: per serving version, its verdict and its registered metrics (no pod
    # reported live figures here, so there is nothing to judge yet).
    (stable,) = [h for h in status.health if h.role == dpb.TRAFFIC_ROLE_STABLE]
    assert stable.version == "2.1.0" and dict(stable.registered_performance) == {"accuracy": 0.92}
    assert (stable.verdict, stable.request_count) == (dpb.HEALTH_VERDICT_INCONCLUSIVE, 0)


# -- Registry Configuration

# The seed's `DSPy.configure` block as the TOML file `serve --config` reads (backend and connection:
# `--database`).
SEED_CONFIGURATION = """
[environments.development]
auto_deploy = true
validation_required = false
rollback_enabled = true

[environments.staging]
auto_deploy = false
validation_required = true
approval_required = false
rollback_enabled = true

[environments.production]
auto_deploy = false
validation_required = true
approval_required = true
rollback_enabled = true
monitoring_required = true

[versioning]
strategy = "semantic"
auto_increment = "patch"
require_changelog = true

[deployment]
default_strategy = "blue_green"
auto_rollback = true
monitoring_window = "10m"
"""


async def test_multi_environment_setup(database_url: str, tmp_path: Path) -> None:
    config = tmp_path / "registry.toml"
    config.write_text(SEED_CONFIGURATION)
    server = await start(database_url, config=str(config))
    try:
        async with Registry.connect(server.target, token=server.admin_token) as registry:
            environments = {e.name.split("/")[-1]: e async for e in registry.list_environments()}
            assert list(environments) == ["development", "staging", "production"]
            assert environments["development"].policy.auto_deploy
            assert environments["production"].policy.approval_required
            assert environments["staging"].policy.default_strategy.strategy == dpb.STRATEGY_BLUE_GREEN
            await registry.register_signature(
                name="text_classifier",
                signature=ClassifyText,
                version="1.0.0",
                metadata={"changelog": "First version"},
            )
            # `require_changelog = true`: a version that does not say what changed is refused.
            with pytest.raises(InvalidArgumentError) as refused:
                await registry.register_program(
                    name=PROGRAM, program=optimize(TRAINING_EXAMPLES), signature_name="text_classifier"
                )
            assert "spec.metadata.changelog" in str(refused.value)
            # `auto_increment = :patch`: neither a version nor a change type, the next patch.
            for changelog, expected in (("First version", "0.0.1"), ("More demos", "0.0.2")):
                registered = await registry.register_program(
                    name=PROGRAM,
                    program=optimize(TRAINING_EXAMPLES[:2] if expected == "0.0.1" else TRAINING_EXAMPLES),
                    signature_name="text_classifier",
                    metadata={"changelog": changelog},
                )
                assert registered.version == expected
    finally:
        await server.channel.close(None)
        await server.app.stop(grace=0)


async def test_access_control(registry: Registry, server: Running) -> None:
    await register_classify_text(registry)
    program = "sentiment_classifier"  # the seed's name in this block
    await registry.register_program(
        program, program=optimize(TRAINING_EXAMPLES[:1]), signature_name="text_classifier", version="1.0.0"
    )

    # `grant_permission(user, program_name, permissions)`: one grant per action. `admin` is the
    # principal the server created at its first start (admin on `*`); the others are created here.
    for user in ("alice", "bob"):
        await registry.create_principal(user, team="ml_platform")
    grants = {"alice": ["read", "register"], "bob": ["read", "deploy", "rollback"], "admin": ["admin"]}
    for user, permissions in grants.items():
        for action in permissions:
            await registry.grant_permission(user, action=action, resource=program)

    # check_permission(user, program_name, action): the action granted, or admin.
    actions = ["read", "register", "deploy", "rollback", "admin"]
    allowed = {
        user: [
            action
            for action in actions
            if (await registry.check_permission(program, action=action, principal=user)).allowed
        ]
        for user in grants
    }
    assert allowed == {
        "alice": ["read", "register"],
        "bob": ["read", "deploy", "rollback"],
        "admin": ["read", "register", "deploy", "rollback", "admin"],
    }
    # `user_permissions = @permissions[user] || {}`: a grant on one program says nothing about another.
    assert not (await registry.check_permission("ranker", action="read", principal="alice")).allowed
    # `@permissions[user] || {}` for a user never granted anything: no, for every action. Users are
    # principals here, which must exist: asking about one nobody created is NOT_FOUND, not `false`.
    with pytest.raises(NotFoundError):
        await registry.check_permission(program, action="read", principal="mallory")
    await registry.create_principal("mallory")
    assert not any(
        [(await registry.check_permission(program, action=a, principal="mallory")).allowed for a in actions]
    )

    # `deploy_program(user, ...)`: `access_control.authorize!(user, program_name, :deploy)`, then deploy.
    # Here the server authorizes each call from the caller's token; AccessDeniedError as in the seed.
    tokens = {
        user: (await registry.create_token(user, description="seed")).secret for user in ("alice", "bob")
    }
    async with (
        Registry.connect(server.target, token=tokens["alice"]) as alice,
        Registry.connect(server.target, token=tokens["bob"]) as bob,
    ):
        with pytest.raises(AccessDeniedError):
            await alice.create_deployment(program, "1.0.0", "staging", strategy="replace")
        deployed = await bob.create_deployment(program, "1.0.0", "staging", strategy="replace")
        assert deployed.state == dpb.DEPLOYMENT_STATE_SUCCEEDED
        assert deployed.creator == "principals/bob"

        # Alice may register a version; Bob may not. Both may read.
        newer = await alice.register_program(
            program, program=optimize(TRAINING_EXAMPLES), signature_name="text_classifier", version="1.1.0"
        )
        assert newer.creator == "principals/alice"
        with pytest.raises(AccessDeniedError):
            await bob.register_program(
                program,
                program=optimize(TRAINING_EXAMPLES),
                signature_name="text_classifier",
                version="1.2.0",
            )
        assert (await bob.get_latest_version(program)).version == "1.1.0"

        # Bob may roll back; Alice may not.
        second = await bob.create_deployment(program, "1.1.0", "staging", strategy="replace")
        with pytest.raises(AccessDeniedError):
            await alice.rollback_deployment(second.name, reason="not hers to do")
        rolled = await bob.rollback_deployment(second.name, reason="holding 1.1.0 back")
        assert rolled.deployment.version == "1.0.0"
        # Nobody holds a grant on another program: refused, whether it exists or not.
        with pytest.raises(AccessDeniedError):
            await bob.load_program("ranker")
    assert (await registry.load_program(program, environment="staging")).version == "1.0.0"


# -- Best Practices


async def test_comprehensive_metadata_and_automated_testing_and_validation(
    registry: Registry, server: Running
) -> None:
    await register_classify_text(registry)
    # The seed's metadata hash, its keys as they are (the registry stores metadata as JSON: durations in
    # seconds, times as strings). `deployment.requirements` is read, not free: see validate_for_registration.
    metadata = {
        "training": {
            "optimization_method": "miprov2",
            "examples_count": 5000,
            "training_time": 2700,
            "validation_score": 0.89,
        },
        "deployment": {
            "requirements": ["ruby >= 3.0", "memory >= 1GB"],
            "environments": ["staging", "production"],
            "max_concurrency": 100,
        },
        "team": "ml_platform",
        "project": "customer_experience",
        "contact": "ml-team@company.com",
        "changelog": "Improved accuracy by 3% with better few-shot examples",
        "documentation_url": "https://docs.company.com/ml/sentiment-classifier",
    }
    performance = {
        "accuracy": 0.92,
        "precision": 0.89,
        "recall": 0.94,
        "f1_score": 0.91,
        "latency_p95": 150,
        "cost_per_prediction": 0.001,
    }

    async def register(version: str, requirements: list[str]) -> pb.ProgramVersion:
        return await registry.register_program(
            name=PROGRAM,
            program=optimize(TRAINING_EXAMPLES),
            signature_name="text_classifier",
            version=version,
            performance=performance,
            metadata={**metadata, "deployment": {**metadata["deployment"], "requirements": requirements}},  # type: ignore[dict-item]
        )

    # `validate_for_registration`: validate_resource_requirements(metadata[:deployment]) is the server's
    # own, at registration: each requirement must read NAME OP QUANTITY, else INVALID_ARGUMENT names it.
    with pytest.raises(InvalidArgumentError) as refused:
        await register("1.0.0", ["ruby >= 3.0", "memory: plenty"])
    assert [f for f, _ in refused.value.field_violations] == ["spec.metadata.deployment.requirements[1]"]
    version = await register("1.0.0", ["ruby >= 3.0", "memory >= 1GB"])
    assert json_format.MessageToDict(version.metadata)["deployment"]["requirements"] == [
        "ruby >= 3.0",
        "memory >= 1GB",
    ]

    # `validate_for_deployment(program, 'production')`: the performance threshold (min accuracy 0.85) is
    # production's policy; load testing and the security scan are checks CI runs and reports (required
    # checks); what the program needs is checked against what the environment offers (its capacity).
    # Staging's `validate_integration_tests` is a required check there.
    for name, checks, capacity in (
        ("staging", ["integration_tests"], {"ruby": "3.3", "memory": "4GiB"}),
        ("production", ["load_testing", "security_scan"], {"ruby": "3.3", "memory": "512MiB"}),
    ):
        current = await registry.get_environment(name)
        await registry.update_environment(
            {"name": name, "policy": {"requiredChecks": checks, "capacity": capacity}},
            update_mask=["policy.required_checks", "policy.capacity"],
            etag=current.etag,
        )
    staged = await registry.create_deployment(PROGRAM, "1.0.0", "staging", strategy="replace")
    assert staged.state == dpb.DEPLOYMENT_STATE_PENDING_CHECKS  # validate_integration_tests: not run yet
    await registry.report_version_check(PROGRAM, "1.0.0", "integration_tests", state="passed")
    assert (await registry.get_deployment(staged.name)).state == dpb.DEPLOYMENT_STATE_SUCCEEDED
    # Production: 512 MiB is less than the 1GB the program requires; a failed load test refuses it too.
    await registry.report_version_check(PROGRAM, "1.0.0", "load_testing", state="failed", summary="p95 2.4 s")
    with pytest.raises(FailedPreconditionError) as not_fit:
        await registry.create_deployment(PROGRAM, "1.0.0", "production", strategy="replace")
    assert {(t, d) for t, _, d in not_fit.value.precondition_violations} == {
        ("REQUIRED_CHECK", "required check load_testing FAILED: p95 2.4 s"),
        ("CAPACITY", "requires memory >= 1GB; production offers memory = 512MiB"),
    }

"""The client with real dspy objects, on SQLite and Postgres: a dspy.Signature class registers as its
spec, a dspy.Module as its saved state, `load_program(module=...)` and the watcher hand out live
modules. No language model is configured, so any call to one would fail the test."""

from __future__ import annotations

import enum
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import dspy
import pytest

from dspy_registry.client import Registry
from dspy_registry.client.watcher import ProgramWatcher, dspy_module_loader
from dspy_registry.v1 import registry_pb2 as pb
from tests import docs
from tests.api.conftest import Running

F = pb.FieldType


class Tone(enum.Enum):
    FORMAL = "formal"
    CASUAL = "casual"


class Priority(enum.IntEnum):  # not string values: the member names are the enum values
    LOW = 1
    HIGH = 2


class ClassifyText(dspy.Signature):  # type: ignore[misc]
    """Classify the sentiment of the text, with a confidence between 0 and 1."""

    text: str = dspy.InputField(desc="the text to classify")
    sentiment: Literal["positive", "negative", "neutral"] = dspy.OutputField()
    confidence: float = dspy.OutputField()


class Triage(dspy.Signature):  # type: ignore[misc]
    """Triage a support ticket."""

    ticket: str = dspy.InputField()
    tone: Tone = dspy.InputField(desc="how the customer writes")
    history: list[str] | None = dspy.InputField()
    attempts: int = dspy.InputField(default=0)
    priority: Priority = dspy.OutputField()
    escalate: bool = dspy.OutputField()
    labels: list[list[str]] = dspy.OutputField()
    details: dict[str, Any] = dspy.OutputField()


class Classifier(dspy.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.classify = dspy.ChainOfThought(ClassifyText)

    def forward(self, text: str) -> Any:
        return self.classify(text=text)


def trained(*examples: tuple[str, str]) -> Classifier:
    """A Classifier whose demos are set by hand, as an optimizer would set them (no LM call)."""
    program = Classifier()
    program.classify.predict.demos = [
        dspy.Example(text=text, reasoning=f"It reads {label}.", sentiment=label, confidence=0.9)
        for text, label in examples
    ]
    return program


def field(name: str, type: pb.FieldType, description: str = "", required: bool = True) -> pb.SignatureField:
    """As the server returns it: `required` always set."""
    return pb.SignatureField(name=name, type=type, description=description, required=required)


def demos(program: Classifier) -> list[dict[str, Any]]:
    return [dict(demo) for demo in program.classify.predict.demos]


@pytest.fixture(autouse=True)
def no_language_model() -> Any:
    assert dspy.settings.lm is None
    yield
    assert dspy.settings.lm is None


def test_importing_the_client_does_not_import_dspy() -> None:
    code = "import sys, dspy_registry.client, dspy_registry.client.watcher; print('dspy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


async def test_a_dspy_signature_registers_as_its_spec(server: Running) -> None:
    async with Registry.connect(server.target, token=server.admin_token) as registry:
        await registry.register_signature(name="text_classifier", signature=ClassifyText, version="1.0.0")
        await registry.register_signature(name="triage", signature=Triage, version="1.0.0")
        seed = await registry.get_signature("text_classifier", "1.0.0")
        triage = await registry.get_signature("triage")

    assert seed.spec == pb.SignatureSpec(
        instructions="Classify the sentiment of the text, with a confidence between 0 and 1.",
        input_fields=[field(name="text", type=F(kind=F.KIND_STRING), description="the text to classify")],
        output_fields=[
            field(
                name="sentiment",
                type=F(kind=F.KIND_ENUM, enum_values=["positive", "negative", "neutral"]),
            ),
            field(name="confidence", type=F(kind=F.KIND_FLOAT)),
        ],
    )
    assert triage.spec == pb.SignatureSpec(
        instructions="Triage a support ticket.",
        input_fields=[
            field(name="ticket", type=F(kind=F.KIND_STRING)),
            field(
                name="tone",
                type=F(kind=F.KIND_ENUM, enum_values=["formal", "casual"]),
                description="how the customer writes",
            ),
            field(name="history", type=F(kind=F.KIND_LIST, item_type=F(kind=F.KIND_STRING)), required=False),
            field(name="attempts", type=F(kind=F.KIND_INTEGER), required=False),
        ],
        output_fields=[
            field(name="priority", type=F(kind=F.KIND_ENUM, enum_values=["LOW", "HIGH"])),
            field(name="escalate", type=F(kind=F.KIND_BOOLEAN)),
            field(
                name="labels",
                type=F(kind=F.KIND_LIST, item_type=F(kind=F.KIND_LIST, item_type=F(kind=F.KIND_STRING))),
            ),
            field(name="details", type=F(kind=F.KIND_JSON)),
        ],
    )


async def test_a_signature_change_is_judged_from_the_dspy_classes(server: Running) -> None:
    class ClassifyTextWithMixed(dspy.Signature):  # type: ignore[misc]
        """Classify the sentiment of the text, with a confidence between 0 and 1."""

        text: str = dspy.InputField(desc="the text to classify")
        sentiment: Literal["positive", "negative", "neutral", "mixed"] = dspy.OutputField()
        confidence: float = dspy.OutputField()

    async with Registry.connect(server.target, token=server.admin_token) as registry:
        await registry.register_signature(name="text_classifier", signature=ClassifyText, version="1.0.0")
        check = await registry.check_signature_compatibility(
            "text_classifier", proposed=ClassifyTextWithMixed
        )
        assert check.compatibility.level == pb.COMPATIBILITY_LEVEL_MINOR
        assert [c.description for c in check.compatibility.changes] == ["enum value 'mixed' added"]
        bumped = await registry.register_signature(name="text_classifier", signature=ClassifyTextWithMixed)
        assert bumped.version == "1.1.0"


@pytest.mark.parametrize(
    ("annotation", "words"),
    [
        (tuple[str, int], "tuple"),
        (int | str, "only Optional[X]"),
        (Literal[1, 2], "Literal values must be strings"),
        (set[str], "set"),
    ],
)
async def test_an_annotation_without_a_registry_type_is_refused_client_side(
    server: Running, annotation: Any, words: str
) -> None:
    odd = dspy.Signature({"text": (str, dspy.InputField()), "odd": (annotation, dspy.OutputField())}, "Odd.")
    async with Registry.connect(server.target, token=server.admin_token) as registry:
        with pytest.raises(TypeError, match="field 'odd'") as raised:
            await registry.register_signature(name="odd", signature=odd, version="1.0.0")
        assert words in str(raised.value)
        assert [s.name async for s in registry.list_signatures()] == []  # nothing was sent


async def test_a_dspy_module_registers_and_loads_with_its_state(server: Running) -> None:
    target, admin_token = server.target, server.admin_token
    optimized = trained(("This product is amazing!", "positive"), ("Broke after a day.", "negative"))
    # docs/client.md's "DSPy objects" example is this block, line for line (test_readme_shows_the_dspy_example).
    async with Registry.connect(target, token=admin_token) as registry:
        await registry.register_signature(name="text_classifier", signature=ClassifyText, version="1.0.0")
        await registry.register_program(
            name="sentiment", program=optimized, signature_name="text_classifier", version="1.0.0"
        )  # optimized: a Classifier after, say, dspy.MIPROv2(...).compile(Classifier(), trainset=...)
        live = await registry.load_program("sentiment", version="1.0.0", module=Classifier)
        assert live.dump_state() == optimized.dump_state()

    assert isinstance(live, Classifier)
    assert demos(live) == demos(optimized)
    assert [demo["sentiment"] for demo in demos(live)] == ["positive", "negative"]
    async with Registry.connect(target, token=admin_token) as registry:
        loaded = await registry.load_program("sentiment", version="1.0.0")  # no module: the bytes and JSON
    # The artifact is what module.save("program.json") writes: state and dependency versions.
    assert loaded.state["classify.predict"]["demos"][0]["text"] == "This product is amazing!"
    assert loaded.state["metadata"]["dependency_versions"]["dspy"] == dspy.__version__


def test_readme_shows_the_dspy_example() -> None:
    example = docs.block(
        "<!-- same code as tests/api/test_client_dspy.py::test_a_dspy_module_registers_and_loads_with_its_state -->",
        "python",
    )
    client_part = example[example.index("async with") :]  # the classes above it are this module's
    test = inspect.getsource(test_a_dspy_module_registers_and_loads_with_its_state)
    assert "\n".join(line.strip() for line in client_part.splitlines()) in "\n".join(
        line.strip() for line in test.splitlines()
    )
    signature = inspect.getsource(ClassifyText).replace("  # type: ignore[misc]", "")
    assert signature in example


async def test_a_module_built_from_a_signature_loads_through_a_factory(server: Running) -> None:
    predict = dspy.Predict(ClassifyText)
    predict.demos = [dspy.Example(text="Love it.", sentiment="positive", confidence=0.8)]
    async with Registry.connect(server.target, token=server.admin_token) as registry:
        await registry.register_signature(name="text_classifier", signature=ClassifyText, version="1.0.0")
        await registry.register_program(
            "quick", program=predict, signature_name="text_classifier", version="1.0.0"
        )
        # Registered, so auto-deployed to development; a zero-argument factory works as well as a class.
        live = await registry.load_program(
            "quick", environment="development", module=lambda: dspy.Predict(ClassifyText)
        )
    assert isinstance(live, dspy.Predict)
    assert [dict(demo) for demo in live.demos] == [
        {"text": "Love it.", "sentiment": "positive", "confidence": 0.8}
    ]
    assert live.dump_state() == predict.dump_state()


async def test_load_program_refuses_a_module_that_is_not_a_dspy_module(server: Running) -> None:
    async with Registry.connect(server.target, token=server.admin_token) as registry:
        await registry.register_signature(name="text_classifier", signature=ClassifyText, version="1.0.0")
        await registry.register_program(
            "sentiment", program=trained(), signature_name="text_classifier", version="1.0.0"
        )
        with pytest.raises(TypeError, match="must make a dspy.Module, not dict"):
            await registry.load_program("sentiment", "1.0.0", module=dict)


@pytest.mark.parametrize("cache", [False, True], ids=["temporary-file", "directory"])
async def test_the_watcher_hands_out_live_modules(server: Running, tmp_path: Path, cache: bool) -> None:
    async with Registry.connect(server.target, token=server.admin_token) as registry:
        await registry.register_signature(name="text_classifier", signature=ClassifyText, version="1.0.0")
        # Registered, so auto-deployed to development.
        await registry.register_program(
            "sentiment",
            program=trained(("Great!", "positive")),
            signature_name="text_classifier",
            version="1.0.0",
        )
        directory = tmp_path / "modules"
        directory.mkdir()
        loader = dspy_module_loader(Classifier, directory if cache else None)
        watcher = ProgramWatcher(
            server.channel, [("sentiment", "development")], sidecar_id="pod-1", loader=loader
        )
        await watcher.start()
        try:
            await watcher.wait_for(lambda w: w.serving("sentiment").stable is not None)
            first = watcher.get("sentiment")
            assert isinstance(first.value, Classifier)
            assert demos(first.value)[0]["text"] == "Great!"

            better = trained(("Great!", "positive"), ("Meh.", "neutral"))
            await registry.register_program(
                "sentiment", program=better, signature_name="text_classifier", change_type="minor"
            )
            await watcher.wait_for(lambda w: watcher.get("sentiment").version == "1.1.0")
            second = watcher.get("sentiment").value
            assert isinstance(second, Classifier) and second is not first.value
            assert second.dump_state() == better.dump_state()
        finally:
            await watcher.stop()
    assert sorted(p.suffix for p in directory.iterdir()) == ([".json", ".json"] if cache else [])

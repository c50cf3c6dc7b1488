"""Small builders of valid inputs, shared by the tests."""

from __future__ import annotations

import json
from typing import Any

from dspy_registry.server.domain.signatures import FieldType, Kind, SignatureField, SignatureSpec
from dspy_registry.v1 import registry_pb2 as pb

SENTIMENT = ("positive", "negative", "neutral")


def spec(*, outputs: tuple[str, ...] = SENTIMENT, instructions: str = "Classify sentiment.") -> SignatureSpec:
    return SignatureSpec(
        description="Classify text sentiment with confidence scoring",
        instructions=instructions,
        inputs=(SignatureField(name="text", type=FieldType(Kind.STRING)),),
        outputs=(
            SignatureField(name="sentiment", type=FieldType(Kind.ENUM, outputs)),
            SignatureField(name="confidence", type=FieldType(Kind.FLOAT)),
        ),
    )


def spec_proto(
    *, outputs: tuple[str, ...] = SENTIMENT, instructions: str = "Classify sentiment."
) -> pb.SignatureSpec:
    return pb.SignatureSpec(
        description="Classify text sentiment with confidence scoring",
        instructions=instructions,
        input_fields=[pb.SignatureField(name="text", type=pb.FieldType(kind=pb.FieldType.KIND_STRING))],
        output_fields=[
            pb.SignatureField(
                name="sentiment", type=pb.FieldType(kind=pb.FieldType.KIND_ENUM, enum_values=list(outputs))
            ),
            pb.SignatureField(name="confidence", type=pb.FieldType(kind=pb.FieldType.KIND_FLOAT)),
        ],
    )


def dspy_state(instructions: str = "Classify sentiment.", demos: int = 2, pad: int = 0) -> bytes:
    """Bytes in the shape dspy.Module.save(path.json) writes."""
    state: dict[str, Any] = {
        "predict": {
            "traces": [],
            "train": [],
            "demos": [{"text": f"example {i}", "sentiment": "positive"} for i in range(demos)],
            "signature": {
                "instructions": instructions + ("x" * pad),
                "fields": [
                    {"prefix": "Text:", "description": "${text}"},
                    {"prefix": "Sentiment:", "description": "${sentiment}"},
                ],
            },
            "lm": None,
        },
        "metadata": {"dependency_versions": {"python": "3.11", "dspy": "2.6.27"}},
    }
    return json.dumps(state).encode()

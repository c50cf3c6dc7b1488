"""The demo's program: a sentiment classifier that runs on a DSPy saved state, with no language model.

A DSPy program's optimizer output is its predictors' demos and instructions;
`dspy.Module.save("program.json")` writes them, and that file is what the
registry stores. This program keeps the shape of DSPy.rb's ClassifyText
predictor (`text` in; `sentiment` and `confidence` out) but, instead of
prompting a model with its demos, learns a word lexicon from them: a word
seen in positive demos pulls towards positive, in negative ones towards
negative, in neutral ones towards neither. So the registered artifact *is*
the program's parameters: better demos make a better version, and demos with
wrong labels make a worse one, measurably, on real inputs.

The labelled data lives here too: a training pool the demos are drawn from,
a dev set a version is scored on before it is registered (its `accuracy`),
and the live traffic the serving pods replay, whose labels are the users'
feedback.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

PROGRAM = "sentiment_classifier"
SIGNATURE = "text_classifier"
LABELS = ("positive", "negative", "neutral")

# DSPy.rb's ClassifyText signature, as a SignatureSpec in proto3 JSON.
CLASSIFY_TEXT: dict[str, Any] = {
    "description": "Classify text sentiment with confidence scoring",
    "instructions": "Classify the sentiment of the text, with a confidence between 0 and 1.",
    "inputFields": [{"name": "text", "type": {"kind": "KIND_STRING"}, "description": "the text to classify"}],
    "outputFields": [
        {"name": "sentiment", "type": {"kind": "KIND_ENUM", "enumValues": list(LABELS)}},
        {"name": "confidence", "type": {"kind": "KIND_FLOAT"}},
    ],
}

Example = tuple[str, str]  # (text, sentiment)

# The pool an optimizer draws demos from.
TRAIN: tuple[Example, ...] = (
    ("I love this product, it works great", "positive"),
    ("Terrible quality, it arrived broken", "negative"),
    ("The package was delivered on Tuesday", "neutral"),
    ("Excellent support, the agent was very helpful", "positive"),
    ("Awful experience, I want a refund", "negative"),
    ("I changed the shipping address on my account", "neutral"),
    ("Amazing value, I would recommend it to friends", "positive"),
    ("The app is slow and crashed twice", "negative"),
    ("The box contains two cables and a manual", "neutral"),
    ("Setup was easy and fast", "positive"),
    ("Worst purchase ever, a complete waste of money", "negative"),
    ("I ordered the blue one in medium", "neutral"),
    ("Friendly staff and a smooth checkout", "positive"),
    ("The courier was rude and the parcel came late", "negative"),
    ("My order number is in the email", "neutral"),
    ("Perfect fit, I am very happy with it", "positive"),
    ("Poor battery life, really disappointed", "negative"),
    ("The store opens at nine on weekdays", "neutral"),
    ("Best headphones I have owned, wonderful sound", "positive"),
    ("Useless instructions and an annoying noise", "negative"),
    ("The invoice lists the model and the colour", "neutral"),
    ("Great price and excellent build quality", "positive"),
    ("The screen is damaged and support is useless", "negative"),
    ("I read the reviews before I ordered", "neutral"),
)

# Scored before registering: a version's `accuracy`.
DEV: tuple[Example, ...] = (
    ("Great product, I love it", "positive"),
    ("Broken on arrival, terrible", "negative"),
    ("The parcel was delivered to my address", "neutral"),
    ("Very helpful support and a fast reply", "positive"),
    ("It crashed again, what a waste", "negative"),
    ("I ordered it on Tuesday", "neutral"),
    ("Easy to use and works perfectly", "positive"),
    ("Awful quality and slow shipping", "negative"),
    ("The manual is in the box", "neutral"),
    ("Wonderful, I would recommend it", "positive"),
    ("Rude staff and a late delivery", "negative"),
    ("The email has my order number", "neutral"),
    ("Amazing sound and a smooth setup", "positive"),
    ("Disappointed, poor battery and damaged case", "negative"),
    ("It comes in blue and in medium", "neutral"),
    ("Happy with it, excellent value", "positive"),
    ("Useless and annoying, I want a refund", "negative"),
    ("The store opens on weekdays", "neutral"),
    ("Friendly courier and a perfect fit", "positive"),
    ("The worst app, slow and broken", "negative"),
)

# What the serving pods replay as users' requests; the label is the user's feedback.
TRAFFIC: tuple[Example, ...] = (
    ("I love how fast it works", "positive"),
    ("The charger arrived broken and support was useless", "negative"),
    ("The package was delivered to the front desk", "neutral"),
    ("Excellent quality, I would recommend it", "positive"),
    ("Terrible, it crashed after an hour", "negative"),
    ("I ordered a second cable on Tuesday", "neutral"),
    ("The staff were friendly and very helpful", "positive"),
    ("Slow delivery and a rude courier", "negative"),
    ("The manual and two cables are in the box", "neutral"),
    ("Amazing, setup was easy", "positive"),
    ("What a waste of money, I want a refund", "negative"),
    ("My address is on the invoice", "neutral"),
    ("Great sound and a perfect fit", "positive"),
    ("Poor quality, really disappointed", "negative"),
    ("It comes in blue and in black", "neutral"),
    ("Wonderful value, very happy with it", "positive"),
    ("The screen is damaged and the app is slow", "negative"),
    ("The email lists my order number", "neutral"),
    ("Best purchase this year, works great", "positive"),
    ("Awful battery life and an annoying noise", "negative"),
    ("The store opens at nine", "neutral"),
    ("Smooth checkout and fast shipping", "positive"),
    ("The worst support, the parcel came late", "negative"),
    ("I changed the colour on my order", "neutral"),
    ("Not bad at all, I love it", "positive"),
    ("Not great, it arrived damaged", "negative"),
    ("I read the manual on Tuesday", "neutral"),
    ("Helpful agent and an excellent refund process", "positive"),
    ("Broken again, terrible build quality", "negative"),
    ("The model number is on the box", "neutral"),
    ("Happy with the easy setup", "positive"),
    ("Disappointed, the app crashed twice", "negative"),
    ("It was delivered at noon", "neutral"),
    ("I would recommend this store to friends", "positive"),
    ("Useless instructions and poor support", "negative"),
    ("I ordered the medium size", "neutral"),
    ("Perfect, it works great", "positive"),
    ("Rude and useless, never again", "negative"),
    ("The invoice is attached to the email", "neutral"),
    ("Amazing headphones, wonderful sound", "positive"),
)

_WORD = re.compile(r"[a-z']+")
_STOPWORDS = frozenset(
    "a an and the it is was were are i my me to of on in at by for with this that what its be "
    "has have had very two".split()
)
_NEGATIONS = frozenset({"not", "never", "no"})
_MARGIN = 0.5  # a score closer to 0 than this is neutral


def _words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS]


@dataclass(frozen=True)
class Prediction:
    sentiment: str
    confidence: float


class SentimentProgram:
    """A lexicon learned from a DSPy predictor's demos; called like a dspy.Predict: program(text=...)."""

    def __init__(self, demos: Sequence[Example], instructions: str) -> None:
        self.instructions = instructions
        self.demo_count = len(demos)
        seen: dict[str, Counter[str]] = {label: Counter() for label in LABELS}
        for text, label in demos:
            if label not in seen:
                raise ValueError(f"demo label {label!r} is not one of {LABELS}")
            seen[label].update(set(_words(text)))
        words = set().union(*seen.values())
        # In [-1, 1]: +1 only in positive demos, -1 only in negative ones, towards 0 the more neutral.
        self.weights = {
            w: (seen["positive"][w] - seen["negative"][w]) / sum(seen[label][w] for label in LABELS)
            for w in words
        }

    @classmethod
    def from_state(cls, state: Any) -> SentimentProgram:
        """The program a saved state describes; ValueError (or KeyError) when it is not one."""
        predictor = state["classify"]
        demos = [(str(d["text"]), str(d["sentiment"])) for d in predictor["demos"]]
        if not demos:
            raise ValueError("the classify predictor has no demos to learn from")
        return cls(demos, str(predictor["signature"]["instructions"]))

    @classmethod
    def from_artifact(cls, data: bytes) -> SentimentProgram:
        return cls.from_state(json.loads(data))

    def __call__(self, text: str) -> Prediction:
        score = 0.0
        negate = False
        for word in _words(text):
            if word in _NEGATIONS:
                negate = True
                continue
            weight = self.weights.get(word, 0.0)
            score += -weight if negate else weight
            negate = False
        if abs(score) < _MARGIN:
            return Prediction("neutral", round(1 - abs(score) / _MARGIN / 2, 3))
        return Prediction("positive" if score > 0 else "negative", round(min(0.99, 0.5 + abs(score) / 4), 3))


def accuracy(program: SentimentProgram, examples: Iterable[Example]) -> float:
    results = [program(text).sentiment == label for text, label in examples]
    return sum(results) / len(results)


def saved_state(demos: Sequence[Example], instructions: str) -> bytes:
    """The JSON `dspy.Module.save()` writes for a module whose one predictor is `classify`."""
    state = {
        "classify": {
            "traces": [],
            "train": [],
            "demos": [{"augmented": True, "text": t, "sentiment": s} for t, s in demos],
            "signature": {
                "instructions": instructions,
                "fields": [
                    {"prefix": "Text:", "description": "the text to classify"},
                    {"prefix": "Sentiment:", "description": "${sentiment}"},
                    {"prefix": "Confidence:", "description": "${confidence}"},
                ],
            },
            "lm": None,
        },
        "metadata": {"dependency_versions": {"python": "3.11", "dspy": "3.4.1", "cloudpickle": "3.1"}},
    }
    return json.dumps(state, indent=1).encode()


def swapped(examples: Iterable[Example]) -> tuple[Example, ...]:
    """The examples with positive and negative exchanged: what a labelling export with its two
    classes mapped the wrong way round hands back."""
    swap = {"positive": "negative", "negative": "positive", "neutral": "neutral"}
    return tuple((text, swap[label]) for text, label in examples)

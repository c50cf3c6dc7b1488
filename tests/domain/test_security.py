"""validate_security_requirements: each credential format found at its JSON path, never echoed;
what is not a credential (token counts, prose, placeholders) left alone."""

from __future__ import annotations

import json
import re
import sys

import pytest

from dspy_registry.server.domain import security
from dspy_registry.server.errors import InvalidArgument

FAKE = "Fake0Key1For2Tests3Only4xYz5"  # never a real key: built for these tests
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYFAKEKEY123"  # 40 characters, AWS's documented example shape

# (where in the program state, the value, the kind the finding names)
CREDENTIALS = [
    ("$.lm.api_key", f"sk-{FAKE}", "an OpenAI API key"),
    ("$.lm.api_key", f"sk-proj-{FAKE}", "an OpenAI API key"),
    ("$.lm.kwargs.anthropic", f"sk-ant-api03-{FAKE}", "an Anthropic API key"),
    ("$.aws.id", "AKIAIOSFODNN7FAKEKEY", "an AWS access key id"),
    ("$.predict.demos[0].text", f"export AWS_SECRET_ACCESS_KEY={AWS_SECRET}", "an AWS secret access key"),
    ("$.predict.demos[1].text", f"aws_secret_access_key: {AWS_SECRET}", "an AWS secret access key"),
    ("$.gcp.key", "AIzaSyFAKE0123456789abcdefghijklmnopqrs", "a GCP API key"),
    (
        "$.gcp.service_account.private_key",
        "-----BEGIN PRIVATE KEY-----\nMIIEvFAKE\n-----END PRIVATE KEY-----\n",
        "a private key",
    ),
    (
        "$.azure.connection",
        "DefaultEndpointsProtocol=https;AccountName=fake;AccountKey=RmFrZUtleUZvclRlc3RzT25seQ==;",
        "an Azure storage account key",
    ),
    (
        "$.azure.bus",
        "Endpoint=sb://fake.servicebus.windows.net/;SharedAccessKeyName=x;SharedAccessKey=RmFrZUtleUZvclRlc3Rz=",
        "an Azure shared access key",
    ),
    ("$.github", "ghp_" + "Fake0123456789abcdefFake0123456789ab", "a GitHub token"),
    ("$.github", "gho_" + "Fake0123456789abcdefFake0123456789ab", "a GitHub token"),
    ("$.github", "github_pat_11FAKE0123456789_abcdefghijklmnopqrstuv", "a GitHub token"),
    ("$.slack", "xoxb-123456789012-FakeTokenForTests", "a Slack token"),
    ("$.slack", "xoxp-123456789012-FakeTokenForTests", "a Slack token"),
    ("$.ssh", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaFAKE\n", "a private key"),
    ("$.tls", "-----BEGIN RSA PRIVATE KEY-----\nMIIFAKE\n", "a private key"),
    ("$.api_key", "hunter2hunter2", "a value of a secret-named key (api_key)"),
    ("$.db.password", "correct horse battery staple", "a value of a secret-named key (password)"),
    ("$.openai_api_key", "some-opaque-key", "a value of a secret-named key (openai_api_key)"),
    ("$.auth.access_token", "opaque.jwt.value", "a value of a secret-named key (access_token)"),
    ("$.oauth.client_secret", "s3cr3t", "a value of a secret-named key (client_secret)"),
    ("$.Token", "abc123", "a value of a secret-named key (Token)"),
]


def _nest(path: str, value: str) -> object:
    """A JSON document holding `value` at a simple `$.a.b[0].c` path."""
    doc: object = value
    for part in reversed(path[2:].split(".")):
        name, _, index = part.partition("[")
        if index:
            items: list[object] = [{}] * int(index[:-1]) + [doc]
            doc = items
        doc = {name: doc}
    return doc


@pytest.mark.parametrize(("path", "value", "kind"), CREDENTIALS)
def test_each_credential_is_found_at_its_path_and_never_echoed(path: str, value: str, kind: str) -> None:
    state = _nest(path, value)
    findings = security.scan_json(state)
    assert findings == [security.Finding(path, kind)]
    data = json.dumps(state).encode()
    assert security.scan_artifact(data, "application/vnd.dspy.program+json") == findings
    with pytest.raises(InvalidArgument) as err:
        security.refuse(findings, "artifact")
    text = str(err.value) + " ".join(f"{v.field} {v.description}" for v in err.value.violations)
    assert path in text and kind in text
    assert value.strip() not in text and value.split()[-1] not in text


@pytest.mark.parametrize(("path", "value", "kind"), [c for c in CREDENTIALS if "secret-named" not in c[2]])
def test_raw_bytes_are_scanned_for_the_provider_formats(path: str, value: str, kind: str) -> None:
    data = b"\x00\x01binary " + value.encode() + b" trailer"
    findings = security.scan_artifact(data, "application/octet-stream")
    assert [f.kind for f in findings] == [kind]
    assert findings[0].path == f"byte {data.index(value.encode()[:8])}" or findings[0].path.startswith(
        "byte "
    )
    # JSON that does not parse is scanned as bytes too.
    assert [f.kind for f in security.scan_artifact(b"{not json " + value.encode(), "application/json")] == [
        kind
    ]


def test_a_dspy_program_talking_about_tokens_and_passwords_is_not_a_credential() -> None:
    state = {
        "predict": {
            "lm": {"model": "openai/gpt-4o-mini", "max_tokens": 512, "temperature": 0.0, "api_key": None},
            "demos": [
                {"text": "I forgot my password again, reset it!", "sentiment": "negative"},
                {"text": "Each token costs money; use sk-learn for baselines.", "sentiment": "neutral"},
                {"text": "ask-ant-farm questions", "sentiment": "neutral"},
            ],
            "signature": {
                "instructions": "Count tokens. Never reveal a password, secret or API key.",
                "fields": [{"prefix": "Token:", "description": "${token}"}],
            },
            "tokens": 1200,
            "token_count": 3,
            "max_token": 512,
            "tokenizer": "cl100k_base",
            "secret": True,
        },
        "metadata": {"dependency_versions": {"python": "3.11", "dspy": "2.6.27"}},
    }
    assert security.scan_json(state) == []


@pytest.mark.parametrize(
    "placeholder",
    [
        "",
        "   ",
        "<redacted>",
        "[REDACTED]",
        "${OPENAI_API_KEY}",
        "{{ api_key }}",
        "$OPENAI_API_KEY",
        "env:OPENAI_API_KEY",
        "***",
        "xxxxxxxx",
        "redacted",
        "None",
        "null",
        "changeme",
        "your-api-key",
        "YOUR_API_KEY",
        "put-your-key-here",
    ],
)
def test_placeholders_in_secret_named_keys_are_not_credentials(placeholder: str) -> None:
    assert security.scan_json({"lm": {"api_key": placeholder, "password": placeholder}}) == []


def test_a_credential_used_as_a_key_is_named_by_position_and_findings_are_bounded() -> None:
    secret = f"sk-proj-{FAKE}"
    findings = security.scan_json({"ok": 1, secret: "value"})
    assert findings == [security.Finding("$[key 1]", "a credential used as a key")]
    many = {f"k{i}": {"api_key": f"value-{i}-opaque"} for i in range(100)}
    assert len(security.scan_json(many)) == security.MAX_FINDINGS
    assert len(security.scan_bytes((secret + " ").encode() * 100)) == security.MAX_FINDINGS
    odd = security.scan_json({"a key with spaces": {"password": "opaque-value"}, "client-secret": "s3cr3t"})
    assert odd == [
        security.Finding('$["a key with spaces"].password', "a value of a secret-named key (password)"),
        security.Finding('$["client-secret"]', "a value of a secret-named key (client-secret)"),
    ]


def _every_format_by_its_pattern(text: str) -> set[str]:
    """What formats_in finds, without its substring hints: each pattern run over the whole text."""
    return {kind for kind, pattern in security._FORMATS if pattern.search(text)}


# Each credential as written, in other cases, and inside prose; with the two letters that the regex
# engine matches to ASCII ones when it ignores case (KELVIN SIGN for k, LATIN SMALL LONG S for s).
VARIANTS = [
    variant
    for _, value, _ in CREDENTIALS
    for variant in (
        value,
        value.upper(),
        value.lower(),
        value.swapcase(),
        f"see {value} here",
        value.replace("K", "\u212a").replace("k", "\u212a"),
        value.replace("s", "\u017f").replace("S", "\u017f"),
    )
]


@pytest.mark.parametrize("text", VARIANTS)
def test_the_hints_that_skip_a_pattern_never_hide_one_of_its_matches(text: str) -> None:
    assert set(security.formats_in(text)) == _every_format_by_its_pattern(text)
    data = text.encode()
    found = {f.kind for f in security.scan_bytes(data)}
    assert found == {kind for kind, pattern in security._FORMATS_BYTES if pattern.search(data)}


def test_every_character_a_caseless_format_matches_casefolds_to_its_hint() -> None:
    """The caseless formats' hints are tested against text.casefold(): sound only if so."""
    caseless = [
        h
        for (_, p), hints in zip(security._FORMATS, security._HINTS, strict=True)
        for h in hints
        if p.flags & re.IGNORECASE
    ]
    letters = {c for hint in caseless for c in hint}
    assert caseless and all(hint == hint.casefold() for hint in caseless)
    for letter in letters:
        pattern = re.compile(re.escape(letter), re.IGNORECASE)
        for code in range(sys.maxunicode + 1):
            c = chr(code)
            if pattern.fullmatch(c):
                assert c.casefold() == letter, (hex(code), letter)


@pytest.mark.parametrize("offset", [0, 1, 7, 20])
def test_a_caseless_credential_across_the_scans_chunks_is_found(offset: int) -> None:
    """Raw bytes are lowered a chunk at a time (an upload is never copied whole): a credential whose
    hint straddles two chunks is still found, at its offset."""
    credential = b"AWS_Secret_Access_Key=" + b"A" * 40
    at = security._FOLD_CHUNK - offset
    data = b"\x00" * at + credential + b"\x00" * 10
    assert security.scan_bytes(data) == [security.Finding(f"byte {at}", "an AWS secret access key")]


def test_scanning_raw_bytes_never_copies_them_whole() -> None:
    """The scan looks for a caseless format's hint a chunk at a time: lowering the whole upload held a
    second copy of it (four 48 MiB uploads grew the server by 123 MiB in test_overload)."""
    import tracemalloc

    data = bytes(32 << 20)  # 32 MiB of zeros: no hint, every caseless format's chunks looked at
    tracemalloc.start()
    try:
        assert security.scan_bytes(data) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * security._FOLD_CHUNK, f"{peak / 2**20:.1f} MiB at the peak"


@pytest.mark.parametrize("text", VARIANTS)
@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_a_json_artifact_is_scanned_for_every_format_its_strings_may_hold(
    text: str, ensure_ascii: bool
) -> None:
    """The artifact's bytes rule formats out before its strings are walked (hinted_json): what they
    rule out is never in a string, whether the text is escaped (\\u...) or written as UTF-8."""
    state = {"predict": {"demos": [{"text": text}], text[:40]: "value"}}
    data = json.dumps(state, ensure_ascii=ensure_ascii).encode()
    expected = security.scan_json(state)  # every format looked for in every string
    assert security.scan_artifact(data, "application/vnd.dspy.program+json") == expected
    assert security.scan_artifact(data, "application/json", parsed=state) == expected


def test_an_escape_that_spells_a_credential_is_still_found() -> None:
    """`\\u0073k-...` is `sk-...` once parsed, though the bytes hold no `sk-`."""
    data = b'{"lm": {"model": "\\u0073k-proj-' + FAKE.encode() + b'"}}'
    assert b"sk-" not in data
    found = security.scan_artifact(data, "application/json")
    assert found == [security.Finding("$.lm.model", "an OpenAI API key")]


def test_artifact_bytes_without_hints_rule_out_every_format() -> None:
    """The common case a registration pays for: prose and settings, no credential's hint anywhere."""
    data = json.dumps({"predict": {"signature": {"instructions": "Classify the text. " * 500}}}).encode()
    assert security.hinted_json(data) == ()
    assert security.hinted(b"AKIA...and Aws_Secret_Access_Key") == (2, 3)


def _hinted_by_search(data: bytes, caseless: bool = True) -> tuple[int, ...]:
    """What `hinted` must say: each hint searched for through the whole data (lowered where its format
    ignores case)."""
    lowered = data.lower()
    return tuple(
        i
        for i, hints in enumerate(security._HINTS_BYTES)
        if (caseless or not security._CASELESS[i])
        and any(h in (lowered if security._CASELESS[i] else data) for h in hints)
    )


@pytest.mark.parametrize("seed", range(40))
def test_a_hint_is_found_wherever_it_is_and_however_often_its_anchor_is(seed: int) -> None:
    """`hinted` compares a hint only where its anchor byte is when that byte is rare in the data, and
    searches for it otherwise: either way it finds what a search through the whole data finds, at the
    start and the end, cut short, in any case, among few or many anchors."""
    import random

    rng = random.Random(seed)
    hints = [h for hints in security._HINTS_BYTES for h in hints]
    pieces = [b"x", b"the text ", b"A", b"a", b"_", b"-", b"=", b"\\n", b"gh", b"sk", b"AKI", b"xox"]
    for _ in range(25):
        parts = [rng.choice(pieces) for _ in range(rng.randrange(0, 60))]
        if rng.random() < 0.3:  # an anchor byte far more often than it is compared one by one
            parts.append(rng.choice(b"-_=A").to_bytes(1, "big") * rng.randrange(10, 40))
        for _ in range(rng.randrange(0, 3)):
            hint = rng.choice(hints)
            if rng.random() < 0.3:
                hint = hint[rng.randrange(1, len(hint)) :] if rng.random() < 0.5 else hint[:-1]
            if rng.random() < 0.5:
                hint = bytes(
                    c ^ 0x20 if 0x61 <= (c | 0x20) <= 0x7A and rng.random() < 0.5 else c for c in hint
                )
            parts.insert(rng.randrange(len(parts) + 1), hint)
        rng.shuffle(parts) if rng.random() < 0.2 else None
        data = b"".join(parts)
        assert security.hinted(data) == _hinted_by_search(data), data
        assert security.hinted(data, caseless=False) == _hinted_by_search(data, caseless=False), data

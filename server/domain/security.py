"""validate_security_requirements: credentials found in an artifact refuse its registration.

Anyone with `read` on a program can download its artifacts, so a key left in
program state (an `lm` block's `api_key`, an `AWS_SECRET_ACCESS_KEY=...` in a
demo) would be handed out. Every artifact is scanned at registration: a JSON
artifact (DSPy program state, or any `json` media type) is walked value by
value, so that each finding is named by its JSON path (`$.lm.api_key`,
`$.predict.demos[3].text`); any other artifact, or JSON that does not parse,
is scanned as raw bytes and a finding is named by its byte offset. A
registration's metadata is walked the same way, since `read` shows it too.

What counts as a credential (the false-positive rule):
    - a string that has the shape of a provider's key, wherever it appears
      (also inside a longer text): OpenAI `sk-...`/`sk-proj-...`, Anthropic
      `sk-ant-...`, an AWS access key id `AKIA...`/`ASIA...` (16 more
      characters), `aws_secret_access_key = ...` with a 40-character value,
      a GCP API key `AIza...` (35 more characters), an Azure storage
      `AccountKey=...` or `SharedAccessKey=...` of a connection string, a
      GitHub token (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`, `github_pat_`),
      a Slack token (`xoxb-`, `xoxa-`, `xoxp-`, `xoxr-`, `xoxs-`), or a
      private-key PEM block (`-----BEGIN ... PRIVATE KEY-----`, which is
      also what a GCP service-account file's `private_key` holds);
    - the value of a key whose name says it is secret (api_key, apikey,
      secret, client_secret, password, passwd, token, access_token,
      private_key ..., alone or as the end of a longer name such as
      `openai_api_key` or `db_password`, in any case, with `-` for `_`)
      when that value is a non-empty string that is not an obvious
      placeholder: blank, `<redacted>` or anything in angle or square
      brackets, `${ENV}`, `{{ var }}`, `$VAR`, `env:VAR`, a run of one
      character (`***`, `xxxx`), or a word such as `redacted`, `none`,
      `null`, `changeme`, `your-api-key`.
Only string values can be credentials: `max_tokens: 512`, `"tokens": 1200`
or a `token_count` are numbers or other names and never match, and words
such as "token" or "password" in a prompt or a demo's text are prose, not
keys. A finding is reported by path and kind only: the value is never
echoed (not in the error, nor the log, nor the audit); a key that itself
has the shape of a credential is shown by its position, not its text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument, PreconditionViolation, Violations

MAX_FINDINGS = 20  # an artifact full of keys is refused with the first ones, not thousands


@dataclass(frozen=True)
class Finding:
    path: str  # a JSON path ($.lm.api_key) or a byte offset
    kind: str  # what it looks like: "an OpenAI API key"


# Each provider's format, as its keys are issued; (?<![...]) keeps a match from starting inside a word.
_FORMATS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("an Anthropic API key", re.compile(r"(?<![A-Za-z0-9_-])sk-ant-[A-Za-z0-9_-]{20,}")),
    (
        "an OpenAI API key",
        re.compile(r"(?<![A-Za-z0-9_-])sk-(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}"),
    ),
    ("an AWS access key id", re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])")),
    (
        "an AWS secret access key",
        re.compile(r"(?i)aws_secret_access_key[\"']?\s*[=:]\s*[\"']?[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])"),
    ),
    ("a GCP API key", re.compile(r"(?<![A-Za-z0-9_-])AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])")),
    ("an Azure storage account key", re.compile(r"(?i)AccountKey=[A-Za-z0-9+/]{20,}={0,2}")),
    ("an Azure shared access key", re.compile(r"(?i)SharedAccessKey=[A-Za-z0-9+/]{20,}={0,2}")),
    ("a GitHub token", re.compile(r"(?<![A-Za-z0-9_])gh[pousr]_[A-Za-z0-9]{36,}")),
    ("a GitHub token", re.compile(r"(?<![A-Za-z0-9_])github_pat_[A-Za-z0-9_]{22,}")),
    ("a Slack token", re.compile(r"(?<![A-Za-z0-9_])xox[baprs]-[A-Za-z0-9-]{10,}")),
    ("a private key", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY( BLOCK)?-----")),
)
_FORMATS_BYTES = tuple((kind, re.compile(p.pattern.encode(), p.flags & ~re.UNICODE)) for kind, p in _FORMATS)
# Per format, literal text that every match holds (casefolded where the format ignores case). Each
# pattern costs a pass over the text, position by position (their look-behinds defeat the regex
# engine's literal search), some 0.2 ms per 10 KB; a substring test is a fast search, so a text
# holding none of a format's hints skips its pattern (most of a registration's time went there).
_HINTS: tuple[tuple[str, ...], ...] = (
    ("sk-ant-",),
    ("sk-",),
    ("AKIA", "ASIA"),
    ("aws_secret_access_key",),
    ("AIza",),
    ("accountkey=",),
    ("sharedaccesskey=",),
    ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
    ("github_pat_",),
    ("xoxb-", "xoxa-", "xoxp-", "xoxr-", "xoxs-"),
    ("-----BEGIN ",),
)
assert len(_HINTS) == len(_FORMATS)
# Whether each format ignores case, looked up once: a flag test per format and string (an enum
# operation) cost more than the substring tests themselves on a DSPy state's short keys.
_CASELESS = tuple(bool(p.flags & re.IGNORECASE) for _, p in _FORMATS)
_HINTS_BYTES = tuple(tuple(h.encode() for h in hints) for hints in _HINTS)
# Some of the formats, as their indexes into _FORMATS in ascending order.
Formats = tuple[int, ...]
EVERY_FORMAT: Formats = tuple(range(len(_FORMATS)))

_SECRET_NAMES = (
    "api_key",
    "apikey",
    "secret",
    "secret_key",
    "client_secret",
    "password",
    "passwd",
    "token",
    "access_token",
    "auth_token",
    "bearer_token",
    "refresh_token",
    "private_key",
    "access_key",
    "secret_access_key",
)
_SECRET_KEY_RE = re.compile(r"(?:^|_)(?:" + "|".join(_SECRET_NAMES) + r")$")
_PLACEHOLDER_RE = re.compile(
    r"""^(?:
        <[^<>]*> | \[[^\[\]]*\] | \$\{[^{}]*\} | \{\{[^{}]*\}\} | \$[A-Za-z_][A-Za-z0-9_]* |
        env:[A-Za-z_][A-Za-z0-9_]* | (.)\1* |
        redacted | none | null | nil | changeme | change_me | placeholder | todo | tbd | example |
        your[-_ ].* | .*[-_ ]here
    )$""",
    re.IGNORECASE | re.VERBOSE,
)
_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def secret_named(key: str) -> bool:
    """Whether a JSON key's name says its value is a credential (api_key, db_password, token ...)."""
    return bool(_SECRET_KEY_RE.search(key.lower().replace("-", "_")))


def placeholder(value: str) -> bool:
    """An obvious stand-in for a credential: "", "<redacted>", "${ENV}", "***", "your-api-key" ..."""
    stripped = value.strip()
    return not stripped or bool(_PLACEHOLDER_RE.match(stripped))


def formats_in(text: str, among: Formats = EVERY_FORMAT) -> Iterator[str]:
    """The kinds of provider-shaped credentials `text` holds (each kind once), of the formats `among`."""
    seen: set[str] = set()
    folded = None  # text.casefold(), made the first time a format that ignores case needs it
    for index in among:
        kind, pattern = _FORMATS[index]
        if kind in seen:
            continue
        if _CASELESS[index]:
            folded = text.casefold() if folded is None else folded
            haystack = folded
        else:
            haystack = text
        for hint in _HINTS[index]:
            if hint in haystack:
                break
        else:
            continue
        if pattern.search(text):
            seen.add(kind)
            yield kind


def scan_json(value: Any, path: str = "$", among: Formats = EVERY_FORMAT) -> list[Finding]:
    """Every credential in a parsed JSON value, by JSON path (the first MAX_FINDINGS).

    `among`: the formats that may be in it (`hinted_json` of the bytes it was parsed from); the
    others are not looked for. Secret-named keys are looked at whatever `among` says.
    """
    found: list[Finding] = []
    # An explicit stack, not recursion: JSON nests as deep as its parser allowed.
    stack: list[tuple[str, Any, str | None]] = [(path, value, None)]
    while stack and len(found) < MAX_FINDINGS:
        where, item, key = stack.pop()
        if isinstance(item, str):
            kinds = list(formats_in(item, among)) if among else []
            if kinds:
                found += [Finding(where, kind) for kind in kinds]
            elif key is not None and secret_named(key) and not placeholder(item):
                found.append(Finding(where, f"a value of a secret-named key ({_key_name(key)})"))
        elif isinstance(item, dict):
            children: list[tuple[str, Any, str | None]] = []
            for i, (k, child) in enumerate(item.items()):
                key_text = str(k)
                if among and next(formats_in(key_text, among), None) is not None:
                    found.append(Finding(f"{where}[key {i}]", "a credential used as a key"))
                    children.append((f"{where}[key {i}]", child, None))
                    continue
                children.append((_child(where, key_text), child, key_text))
            stack += reversed(children)
        elif isinstance(item, list):
            stack += reversed([(f"{where}[{i}]", child, None) for i, child in enumerate(item)])
    return found[:MAX_FINDINGS]


# How much of an artifact is lowered at once to look for a hint that ignores case: the scan already
# holds the upload once (read whole, one upload at a time); lowering it whole would hold it twice.
_FOLD_CHUNK = 1 << 20
# Each hint is looked for through one of its bytes, its anchor: where the data holds that byte only a
# few times, the hint can only be at those places, and is compared there (a memchr per anchor, then a
# few short slices) rather than searched for through the whole data (some 5 µs per 10 KB for each of
# the 20 hints, most of a registration's scan). The anchor is a byte that prose seldom holds (`-`, `_`,
# `=`), else the hint's first; a caseless hint's is never a letter, whose other case would be missed.
_RARE = b"-_="
# Up to this many places of an anchor are compared one by one; with more, the hint is searched for.
_FEW_ANCHORS = 16


def _anchor(hint: bytes, caseless: bool) -> int:
    """The offset in `hint` of its anchor byte."""
    for offset, byte in enumerate(hint):
        if byte in _RARE:
            return offset
    assert not caseless, f"a caseless hint needs a byte that is no letter: {hint!r}"
    return 0


# (format index, its hints and their anchors' offsets), the formats that ignore case and the others.
_ANCHORED = tuple(
    (i, _CASELESS[i], tuple((h, _anchor(h, _CASELESS[i])) for h in hints))
    for i, hints in enumerate(_HINTS_BYTES)
)
_OVERLAP = max(len(h) for hints in _HINTS_BYTES for h in hints) - 1


def hinted(data: bytes, *, caseless: bool = True) -> Formats:
    """The formats (indexes into _FORMATS) whose hints raw `data` holds: the only ones its bytes may match.

    The hints of the formats that ignore case are looked for in `data` lowered (ASCII, as the bytes
    patterns ignore case): at their anchors' few places, else through `data` lowered a chunk at a
    time and all of them in each chunk, never a second copy of the upload; `caseless=False` leaves
    those formats out.
    """
    places: dict[int, list[int] | None] = {}  # anchor byte -> where it is (None: too often to compare)

    def where(byte: int) -> list[int] | None:
        if byte not in places:
            spots: list[int] = []
            at = data.find(byte)
            while at >= 0 and len(spots) <= _FEW_ANCHORS:
                spots.append(at)
                at = data.find(byte, at + 1)
            places[byte] = spots if len(spots) <= _FEW_ANCHORS else None
        return places[byte]

    found: set[int] = set()
    searched: list[tuple[int, bool, bytes]] = []  # hints whose anchor is too common: searched for
    for i, folded, hints in _ANCHORED:
        if folded and not caseless:
            continue
        for hint, offset in hints:
            at = where(hint[offset])
            if at is None:
                searched.append((i, folded, hint))
                continue
            starts = [p - offset for p in at if p >= offset]
            if folded:
                size = len(hint)
                hit = any(data[s : s + size].lower() == hint for s in starts)
            else:
                hit = any(data.startswith(hint, s) for s in starts)
            if hit:
                found.add(i)
                break
    # The hints left: searched for, the formats already found skipped.
    wanted: dict[int, list[bytes]] = {}
    for i, folded, hint in searched:
        if i in found:
            continue
        if not folded:
            if hint in data:
                found.add(i)
        else:
            wanted.setdefault(i, []).append(hint)
    view = memoryview(data)
    for start in range(0, len(data), _FOLD_CHUNK) if wanted else ():
        # A hint across two chunks is found in the second: each chunk starts a hint's length early.
        chunk = bytes(view[max(0, start - _OVERLAP) : start + _FOLD_CHUNK]).lower()
        for i in [i for i, left in wanted.items() if any(h in chunk for h in left)]:
            found.add(i)
            del wanted[i]
        if not wanted:
            break
    return tuple(sorted(found))


def hinted_json(data: bytes) -> Formats:
    """The formats that the strings of the JSON text `data` may hold (see scan_json's `among`).

    A hint in a decoded string is in the bytes too when they are UTF-8 (what json.loads reads them
    as when they start without a byte-order mark or a NUL) and hold no `\\u` escape, which could
    spell one: every hint is ASCII, and no other escape yields a character of one. A format that
    ignores case is not ruled out this way unless the bytes are ASCII: the str patterns match some
    other letters to ASCII ones (KELVIN SIGN to k), which ASCII lowering does not.
    """
    if b"\\u" in data or json.detect_encoding(data) != "utf-8":
        return EVERY_FORMAT
    if data.isascii():
        return hinted(data)
    return tuple(sorted({*hinted(data, caseless=False), *(i for i, folded, _ in _ANCHORED if folded)}))


def scan_bytes(data: bytes) -> list[Finding]:
    """Every provider-shaped credential in raw bytes, by byte offset (the first MAX_FINDINGS)."""
    found: list[Finding] = []
    for index in hinted(data):
        kind, pattern = _FORMATS_BYTES[index]
        for match in pattern.finditer(data):
            found.append(Finding(f"byte {match.start()}", kind))
            if len(found) >= MAX_FINDINGS:
                break
    found.sort(key=lambda f: int(f.path.split()[1]))
    return found[:MAX_FINDINGS]


def is_json_media_type(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


_UNPARSED: Any = object()


def scan_artifact(data: bytes, media_type: str, parsed: Any = _UNPARSED) -> list[Finding]:
    """The credentials in an artifact: walked as JSON when its media type says JSON and it parses.

    `parsed`: `data` already parsed as JSON (the registration reads DSPy state once for its
    predictors and for this).
    """
    if is_json_media_type(media_type):
        if parsed is _UNPARSED:
            try:
                parsed = json.loads(data)
            except (ValueError, RecursionError):  # not JSON after all: its bytes are still scanned
                return scan_bytes(data)
        return scan_json(parsed, among=hinted_json(data))
    return scan_bytes(data)


def validate_security_requirements(findings: list[Finding], field: str, v: Violations) -> None:
    """One field violation per finding: `field`, then the path and the kind, never the value."""
    for f in findings:
        v.add(field, f"{f.path}: {f.kind}; remove it (pass credentials at run time, not in the program)")


def refuse(findings: list[Finding], field: str) -> None:
    """INVALID_ARGUMENT naming each finding, if there is any."""
    v = Violations()
    validate_security_requirements(findings, field, v)
    if v:
        raise InvalidArgument(list(v.items), more=v.more)


def scan_version(data: bytes, media_type: str, metadata: dict[str, Any]) -> list[Finding]:
    """The credentials in a stored version: its artifact's, then its metadata's (paths `metadata$...`)."""
    found = scan_artifact(data, media_type)
    found += [Finding("metadata" + f.path, f.kind) for f in scan_json(metadata)]
    return found[:MAX_FINDINGS]


def deployment_violations(findings: list[Finding], subject: str) -> list[PreconditionViolation]:
    """Why a version registered unscanned (development's policy) may go nowhere the scan is on."""
    return [PreconditionViolation("SECURITY_SCAN", subject, f"{f.path}: {f.kind}") for f in findings]


def _child(where: str, key: str) -> str:
    if _IDENTIFIER_RE.fullmatch(key):
        return f"{where}.{key}"
    shown = key if len(key) <= 64 else key[:63] + "…"
    return f"{where}[{json.dumps(shown, ensure_ascii=True)}]"


def _key_name(key: str) -> str:
    return key if len(key) <= 64 else key[:63] + "…"

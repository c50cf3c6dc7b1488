"""The strings, bytes and page-token cursors the fuzzer (fuzz.py) sends, by name.

None of them names a sentinel of test_fuzz_grpc.py (a test checks it): a change to a
sentinel can then only come from a defect, never from a call that was allowed to make it.
"""

from __future__ import annotations

# Strings, for string and bytes fields alike.
TEXT: list[tuple[str, str]] = [
    ("empty", ""),
    ("bidi override", "\u202egnp.exe\u202c"),
    ("zero-width", "sen\u200btiment\u200c\u200d\ufeff"),
    ("NUL", "sentiment\x00"),
    ("controls", "a\r\nb\x1b[31m\x7f\t"),
    ("combining marks", "e" + "\u0301" * 500),
    ("astral", "\U0001d54f\U0001f600\U00010000\U0010ffff"),
    ("noncharacters", "\ufffe\uffff\ufdd0"),
    ("right-to-left", "\u05e9\u05dc\u05d5\u05dd abc \u0645\u0631\u062d\u0628\u0627"),
    ("fullwidth", "\uff50\uff52\uff4f\uff47\uff52\uff41\uff4d\uff53\uff0fx"),
    ("homoglyph", "s\u0435ntiment"),
    ("non-breaking space", "\u00a0sentiment\u2028"),
    ("upper case", "SENTIMENT"),
    ("spaces", " sentiment "),
    ("path ../", "../../etc/passwd"),
    ("path /", "/"),
    ("path //", "programs//keep"),
    ("path %2F", "programs%2Fkeep"),
    ("path ..", ".."),
    ("path .", "."),
    ("path *", "*"),
    ("path **", "**"),
    ("path glob", "sentiment_*"),
    ("path -", "-"),
    ("path traversal", "programs/keep/../fuzzed"),
    ("path traversal version", "programs/keep/versions/../../fuzzed/versions/1.0.0"),
    ("path trailing /", "programs/keep/"),
    ("path backslash", "programs\\keep"),
    ("path many segments", "a/" * 2000),
    ("path long segment", "programs/" + "a" * 5000),
    ("path absolute", "/programs/keep"),
    ("path url", "http://127.0.0.1:9/x?y=%00#z"),
    ("path file url", "file:///etc/passwd"),
    ("path metadata url", "http://169.254.169.254/latest/meta-data/"),
    ("path ipv6 url", "http://[::1]:9/"),
    ("sql", "' OR '1'='1' --"),
    ("format", "%s%n%x{0}${x}{{}}"),
    ("json", '{"a":' * 1000),
    ("semver huge", "999999999999999999999999.0.0"),
    ("semver prerelease", "1.0.0-" + "a." * 100 + "a"),
    ("semver leading zero", "01.0.0"),
    ("semver build", "1.0.0+" + "b" * 300),
    ("digest-like", "sha256:" + "0" * 64),
    ("digest bad", "sha256:../../" + "g" * 60),
    ("long 10k", "x" * 10_000),
    ("long 64k", "\u00e9" * 32_768),
]
# A MiB each: sent now and then (Fuzzer.huge_share), two at a time (test_fuzz_grpc.HEAVY_LANES).
HUGE_TEXT: list[tuple[str, str]] = [
    ("huge 1 MiB", "a" * (1 << 20)),
    ("huge 1 MiB astral", "\U0001f600" * (1 << 18)),
]
# Not UTF-8: what a proto3 string must not carry. Python's encoder cannot make these.
NOT_UTF8: list[tuple[str, bytes]] = [
    ("invalid UTF-8 ff", b"\xff\xfe"),
    ("invalid UTF-8 truncated", b"sentiment\xc3"),
    ("invalid UTF-8 continuation", b"\x80sentiment"),
    ("invalid UTF-8 surrogate", b"\xed\xa0\x80"),
    ("invalid UTF-8 overlong /", b"programs\xc0\xafkeep"),
    ("invalid UTF-8 beyond U+10FFFF", b"\xf4\x90\x80\x80"),
]
# For bytes fields (an artifact is DSPy state, JSON, when its media type says so).
BYTES: list[tuple[str, bytes]] = [
    ("json nested 100k", b"[" * 100_000 + b"]" * 100_000),
    ("json object nested 50k", b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
    ("json NaN", b'{"predict": NaN, "x": Infinity}'),
    ("json huge number", b'{"predict": 1e999999, "n": ' + b"9" * 5000 + b"}"),
    ("json null", b"null"),
    ("json array", b"[]"),
    ("json wrong shape", b'{"predict": {"demos": 7, "signature": []}}'),
    ("json duplicate keys", b'{"predict": {}, "predict": 1}'),
    ("json invalid", b'{"predict": '),
    ("json BOM", b"\xef\xbb\xbf{}"),
    ("zero bytes", b"\x00" * 1024),
]

# A page token is opaque to a client but not sealed: base64 of {"a": cursor, "q": the query's
# fingerprint}. A client can read one and send it back with another cursor, which then reaches
# the store's keyset queries; these are the cursors it might write.
CURSORS: list[tuple[str, str]] = [
    ("superscript digit", "\u00b2"),
    ("Arabic-Indic digits", "\u0661\u0662"),
    ("fullwidth digits", "\uff11\uff12"),
    ("20 digits", "9" * 20),
    ("300 digits", "9" * 300),
    ("20 digits:id", "99999999999999999999:abc"),
    ("superscript:id", "\u00b2:x"),
    ("time:superscript", "1:\u00b2"),
    ("negative", "-1"),
    ("negative:id", "-1:x"),
    ("time:", "1:"),
    ("colon", ":"),
    ("empty", ""),
    ("NUL", "\x00"),
    ("lone surrogate", "\ud800"),
    ("long", "x" * 1000),
    ("JSON pair of numbers", "[1, 2]"),
    ("JSON one string", '["a"]'),
    ("JSON pair, long key", '["' + "a" * 900 + '", "1.0.0"]'),
    ("JSON pair, surrogate", '["\\ud800", "1.0.0"]'),
    ("JSON null", "null"),
    ("JSON huge number", "1e400"),
    ("LIKE wildcard", "%"),
    ("quote", "a' OR '1'='1"),
]

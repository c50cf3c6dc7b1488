"""The REST routes (`serve --http-listen`) fuzzed: schemathesis from the OpenAPI document with every
one of its checks, then hostile requests made by hand, against a real server process.

Every answer must be one of the statuses the routes document (docs/api.md, REST routes: the gRPC codes'
statuses, and aiohttp's own 404, 405, 413, 414 and 415), never a 500; every refusal the routes'
JSON error, `{"error": {"code", "message", "details"}}`, with a gRPC code's name; and the server's
log must hold no error (a traceback there is an unhandled path). Hostile requests a gateway is
known to take silently must be refused: JSON with a key twice, a query parameter twice, a body
that is not `application/json`, a deploy that names no version (gRPC refuses one).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.core.parameters import ParameterLocation

from dspy_registry.server.http_openapi import OPENAPI
from tests.e2e.conftest import ServerProcess, free_port
from tests.reliability.conftest import Tally, budget, soaking

SECONDS = budget(15, 0.05)
# Examples per operation: a short run's share of about 15 s, the soak's of its minutes.
EXAMPLES = 30 if not soaking() else 600
# The statuses of the REST table in docs/api.md, and those aiohttp answers before a route runs: no such
# route 404, a method the route lacks 405, a body above the limit 413, a request line or header
# too long 414/431, a body that is not JSON 415.
DOCUMENTED = frozenset({200, 201, 400, 401, 403, 404, 405, 409, 413, 414, 415, 429, 431, 501, 503, 504})
GRPC_CODES = frozenset(
    "CANCELLED UNKNOWN INVALID_ARGUMENT DEADLINE_EXCEEDED NOT_FOUND ALREADY_EXISTS PERMISSION_DENIED "
    "RESOURCE_EXHAUSTED FAILED_PRECONDITION ABORTED OUT_OF_RANGE UNIMPLEMENTED UNAVAILABLE "
    "UNAUTHENTICATED".split()
)  # every code but OK, INTERNAL and DATA_LOSS, which no refusal may carry

load_all_checks()
ALL_CHECKS = list(CHECKS.get_all())

pytestmark = pytest.mark.timeout(SECONDS + 240)


@dataclass
class Rest:
    server: ServerProcess
    base: str  # http://127.0.0.1:port
    token: str
    address: tuple[str, int]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
def rest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rest]:
    folder = tmp_path_factory.mktemp("fuzz-rest")
    port = free_port()
    server = ServerProcess(
        f"sqlite:///{folder / 'r.db'}",
        folder / "server.log",
        extra_args=["--http-listen", f"127.0.0.1:{port}"],
    ).start()
    try:
        server.register("sentiment", ["1.0.0", "1.1.0"], labels={"team": "ml"}, performance={"accuracy": 0.9})
        yield Rest(
            server, f"http://127.0.0.1:{port}", server.token_file.read_text().strip(), ("127.0.0.1", port)
        )
    finally:
        if server.process is not None and server.process.poll() is None:
            server.stop()


# -- schemathesis, every check ------------------------------------------------------------------

schema = schemathesis.openapi.from_dict(OPENAPI)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_the_routes_pass_every_schemathesis_check(case: Any, rest: Rest, tally: Tally) -> None:
    tally.operations += 1
    tally.bad_inputs += 1
    response = case.call_and_validate(
        base_url=rest.base, headers=_auth(case, rest), checks=ALL_CHECKS, timeout=30
    )
    tally.codes[str(response.status_code)] += 1


def _auth(case: Any, rest: Rest) -> dict[str, str] | None:
    """The token, unless the case's headers are the point of it (generated as negative data: the
    Authorization header left out or mangled). Headers given here override the case's, so such a
    case would carry a good token, be answered 200 and fail schemathesis's negative-data check
    (schemathesis/schemathesis#2898)."""
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER):
        return None
    return rest.auth


# -- hostile requests, by hand ----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Hostile:
    """One request: what it is, and the statuses it may get (empty: any documented one)."""

    what: str
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    expect: frozenset[int] = frozenset()


DEPLOY = "/api/registry/programs/sentiment/deploy"
JSON = {"Content-Type": "application/json"}


def _nested(depth: int) -> bytes:
    return b'{"version":' * depth + b"1" + b"}" * depth


def hostile_requests() -> list[Hostile]:
    refused = frozenset({400})
    return [
        # Bodies.
        Hostile(
            what="JSON nested 50 000 deep (arrays)",
            method="POST",
            path=DEPLOY,
            body=b"[" * 50_000 + b"]" * 50_000,
            headers=JSON,
            expect=refused,
        ),
        Hostile(
            what="JSON nested 50 000 deep (objects)",
            method="POST",
            path=DEPLOY,
            body=_nested(50_000),
            headers=JSON,
            expect=refused,
        ),
        Hostile(
            what="a 10 MiB body",
            method="POST",
            path=DEPLOY,
            body=b'{"reason": "' + b"a" * (10 << 20) + b'"}',
            headers=JSON,
            expect=frozenset({413}),
        ),
        Hostile(
            what="a 900 KiB reason",
            method="POST",
            path=DEPLOY,
            body=b'{"reason": "' + b"a" * (900 << 10) + b'"}',
            headers=JSON,
            expect=refused,
        ),
        Hostile(
            what="invalid UTF-8",
            method="POST",
            path=DEPLOY,
            body=b'{"version": "1.0.0", "reason": "\xff\xfe"}',
            headers=JSON,
            expect=refused,
        ),
        Hostile(
            what="a lone surrogate, escaped",
            method="POST",
            path=DEPLOY,
            body=b'{"version": "1.0.0", "reason": "\\ud800"}',
            headers=JSON,
            expect=refused,
        ),
        Hostile(
            what="NUL in a string",
            method="POST",
            path=DEPLOY,
            body=b'{"version": "1.0.0", "reason": "a\\u0000b"}',
            headers=JSON,
            expect=refused,
        ),
        Hostile(
            what="a key twice",
            method="POST",
            path=DEPLOY,
            body=b'{"version": "1.0.0", "version": "1.1.0", "environment": "staging"}',
            headers=JSON,
            expect=refused,
        ),
        Hostile(
            what="NaN",
            method="POST",
            path=DEPLOY,
            body=b'{"version": "1.0.0", "canary_percent": NaN}',
            headers=JSON,
            expect=refused,
        ),
        Hostile(
            what="a number of 5 000 digits",
            method="POST",
            path=DEPLOY,
            body=b'{"canary_percent": ' + b"9" * 5000 + b"}",
            headers=JSON,
            expect=refused,
        ),
        Hostile(what="a JSON array", method="POST", path=DEPLOY, body=b"[]", headers=JSON, expect=refused),
        Hostile(
            what="a JSON string", method="POST", path=DEPLOY, body=b'"1.0.0"', headers=JSON, expect=refused
        ),
        Hostile(what="JSON null", method="POST", path=DEPLOY, body=b"null", headers=JSON, expect=refused),
        Hostile(
            what="a BOM first",
            method="POST",
            path=DEPLOY,
            body=b'\xef\xbb\xbf{"version": "1.0.0"}',
            headers=JSON,
            expect=refused,
        ),
        Hostile(
            what="a truncated body",
            method="POST",
            path=DEPLOY,
            body=b'{"version": "1.0',
            headers=JSON,
            expect=refused,
        ),
        Hostile(
            what="no version: gRPC refuses a deploy without one",
            method="POST",
            path=DEPLOY,
            body=b'{"environment": "staging"}',
            headers=JSON,
            expect=refused,
        ),
        Hostile(
            what="version as a number",
            method="POST",
            path=DEPLOY,
            body=b'{"version": 1}',
            headers=JSON,
            expect=refused,
        ),
        Hostile(
            what="a version path",
            method="POST",
            path=DEPLOY,
            body=b'{"version": "../../keep/versions/1.0.0"}',
            headers=JSON,
            expect=refused,
        ),
        # Content types.
        Hostile(
            what="text/plain",
            method="POST",
            path=DEPLOY,
            body=b'{"version": "1.0.0"}',
            headers={"Content-Type": "text/plain"},
            expect=frozenset({415}),
        ),
        Hostile(
            what="application/xml",
            method="POST",
            path=DEPLOY,
            body=b"<deploy><version>1.0.0</version></deploy>",
            headers={"Content-Type": "application/xml"},
            expect=frozenset({415}),
        ),
        # curl -d sends this type (the REST block in docs/api.md does): a gateway may read it as JSON or refuse it.
        Hostile(
            what="no content type",
            method="POST",
            path=DEPLOY,
            body=b'{"version": "1.0.0"}',
            headers={"Content-Type": ""},
        ),
        Hostile(
            what="a form",
            method="POST",
            path=DEPLOY,
            body=b"version=1.0.0",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        Hostile(
            what="JSON in latin-1",
            method="POST",
            path=DEPLOY,
            body='{"reason": "caf\u00e9"}'.encode("latin-1"),
            headers={"Content-Type": "application/json; charset=latin-1"},
            expect=frozenset({400, 415}),
        ),
        # Queries.
        Hostile(
            what="a query parameter twice",
            method="GET",
            path="/api/registry/programs?limit=1&limit=2",
            expect=refused,
        ),
        Hostile(
            what="team twice", method="GET", path="/api/registry/programs?team=ml&team=other", expect=refused
        ),
        Hostile(
            what="a limit of 20 digits",
            method="GET",
            path="/api/registry/programs?limit=" + "9" * 20,
            expect=refused,
        ),
        Hostile(what="a limit of 1e3", method="GET", path="/api/registry/programs?limit=1e3", expect=refused),
        Hostile(
            what="a limit in Arabic-Indic digits",
            method="GET",
            path="/api/registry/programs?limit=%D9%A1",
            expect=refused,
        ),
        Hostile(
            what="invalid UTF-8 in a query",
            method="GET",
            path="/api/registry/programs?environment=%ff",
            expect=refused,
        ),
        Hostile(what="NUL in a query", method="GET", path="/api/registry/programs?team=%00", expect=refused),
        Hostile(
            what="an unknown query parameter",
            method="GET",
            path="/api/registry/programs?lmit=1",
            expect=refused,
        ),
        Hostile(
            what="a query on deploy",
            method="POST",
            path=DEPLOY + "?dry_run=1",
            body=b'{"version": "1.0.0"}',
            headers=JSON,
            expect=refused,
        ),
        # URLs and path segments.
        Hostile(
            what="a URL of 9 000 characters",
            method="GET",
            path="/api/registry/programs/" + "a" * 9000,
            expect=frozenset({400, 414}),
        ),
        Hostile(
            what="a query of 9 000 characters",
            method="GET",
            path="/api/registry/programs?team=" + "a" * 9000,
            expect=frozenset({400, 414}),
        ),
        Hostile(
            what="a name of 300 characters",
            method="GET",
            path="/api/registry/programs/" + "a" * 300,
            expect=refused,
        ),
        Hostile(what="%2e%2e", method="GET", path="/api/registry/programs/%2e%2e"),
        Hostile(what="..%2f..%2f", method="GET", path="/api/registry/programs/..%2f..%2fdeployments"),
        Hostile(what="%2F inside a name", method="GET", path="/api/registry/programs/sentiment%2Fversions"),
        Hostile(what="%00", method="GET", path="/api/registry/programs/%00", expect=refused),
        Hostile(what="%ff", method="GET", path="/api/registry/programs/%ff", expect=refused),
        Hostile(
            what="an astral character",
            method="GET",
            path="/api/registry/programs/%F0%9F%98%80",
            expect=refused,
        ),
        Hostile(
            what="bidi override", method="GET", path="/api/registry/programs/%E2%80%AEabc", expect=refused
        ),
        Hostile(what="upper case", method="GET", path="/api/registry/programs/SENTIMENT", expect=refused),
        Hostile(what="a trailing slash", method="GET", path="/api/registry/programs/sentiment/"),
        Hostile(what="a doubled slash", method="GET", path="//api/registry/programs"),
        Hostile(
            what="one segment too many",
            method="POST",
            path=DEPLOY + "/now",
            body=b"{}",
            headers=JSON,
            expect=frozenset({404, 405}),
        ),
        Hostile(
            what="a deployment id of spaces",
            method="GET",
            path="/api/registry/deployments/%20%20/status",
            expect=refused,
        ),
        Hostile(
            what="a deployment id of dots",
            method="POST",
            path="/api/registry/deployments/../rollback",
            body=b"{}",
            headers=JSON,
        ),
        Hostile(
            what="a glob for a name", method="GET", path="/api/registry/programs/sentiment_*", expect=refused
        ),
        # Methods.
        *(
            Hostile(what=f"{method} {path}", method=method, path=path, expect=frozenset({405}))
            for path in ("/api/registry/programs", "/api/registry/programs/sentiment", "/api/openapi.json")
            for method in ("POST", "PUT", "DELETE", "PATCH")
        ),
        *(
            Hostile(what=f"{method} {path}", method=method, path=path, expect=frozenset({405}))
            for path in (DEPLOY, "/api/registry/deployments/abc/rollback")
            for method in ("GET", "PUT", "DELETE", "PATCH")
        ),
        Hostile(
            what="a made-up method",
            method="BREW",
            path="/api/registry/programs",
            expect=frozenset({400, 405, 501}),
        ),
    ]


@dataclass(frozen=True, kw_only=True)
class Answer:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str]


def send(rest: Rest, h: Hostile, *, token: bool = True) -> Answer:
    """The request as written (no client normalizes its path, query or body): a raw HTTP/1.1 exchange."""
    headers = {"Host": f"{rest.address[0]}:{rest.address[1]}", "Connection": "close"}
    if token:
        headers.update(rest.auth)
    headers.update(h.headers)
    if h.body is not None:
        headers["Content-Length"] = str(len(h.body))
    head = (
        f"{h.method} {h.path} HTTP/1.1\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items() if v)
        + "\r\n"
    )
    with socket.create_connection(rest.address, timeout=30) as conn:
        conn.sendall(head.encode() + (h.body or b""))
        received = b""
        while chunk := conn.recv(1 << 16):
            received += chunk
    raw_head, _, body = received.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    answer_headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if answer_headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return Answer(
        status=status, content_type=answer_headers.get("content-type", ""), body=body, headers=answer_headers
    )


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


def problem(h: Hostile, answer: Answer) -> str | None:
    """What is wrong with the answer to `h`, if anything."""
    expected = h.expect or DOCUMENTED
    shown = f"{answer.status} {answer.content_type} {answer.body[:300]!r}"
    if answer.status not in expected:
        return f"{h.what}: {shown}, expected {sorted(expected)}"
    if answer.status < 400:
        return None
    if not answer.content_type.startswith("application/json"):
        return f"{h.what}: not the JSON error format: {shown}"
    try:
        error = json.loads(answer.body)["error"]
        well_formed = (
            error["code"] in GRPC_CODES
            and isinstance(error["message"], str)
            and isinstance(error["details"], list)
        )
    except (ValueError, KeyError, TypeError):
        well_formed = False
    if not well_formed:
        return f"{h.what}: not the JSON error format: {shown}"
    if answer.status == 405 and not answer.headers.get("allow"):
        return f"{h.what}: 405 without an Allow header"
    return None


def test_hostile_requests_get_a_documented_status_and_the_json_error(rest: Rest, tally: Tally) -> None:
    problems: list[str] = []
    deadline = time.monotonic() + SECONDS
    rounds = 0
    while not rounds or time.monotonic() < deadline and soaking():  # the soak repeats them for its share
        rounds += 1
        for h in hostile_requests():
            for token in (True, False):  # as the admin, and with no token (401 first, as gRPC)
                answer = send(rest, h, token=token)
                tally.operations += 1
                tally.bad_inputs += 1
                tally.codes[str(answer.status)] += 1
                found = problem(h if token else _anonymous(h), answer)
                if found and rounds == 1:
                    problems.append(("" if token else "(no token) ") + found)
    errors = [
        line for line in rest.server.log().splitlines() if '"level": "error"' in line or "Traceback" in line
    ]
    if errors:
        problems.append(f"{len(errors)} errors in the server log, the first: {errors[0][:2000]}")
    assert not problems, f"{len(problems)} bad answers:\n" + "\n".join(problems)


def _anonymous(h: Hostile) -> Hostile:
    """Without a token a route answers 401 before it reads the request; aiohttp's own answers
    (no such route, a method the route lacks, a request it cannot parse) come before any route."""
    before_routes = {404, 405, 413, 414, 415, 431}
    return Hostile(
        what=h.what,
        method=h.method,
        path=h.path,
        body=h.body,
        headers=h.headers,
        expect=frozenset({401} | (before_routes & (h.expect or DOCUMENTED)) | {400}),
    )


def test_the_openapi_document_is_served_to_anyone(rest: Rest) -> None:
    answer = requests.get(f"{rest.base}/api/openapi.json", timeout=10)
    assert answer.status_code == 200 and answer.json()["openapi"].startswith("3.")

"""Every RPC of the three services fuzzed from its descriptor, against a real `serve` process.

Hostile requests (tests/reliability/fuzz.py) go out as raw bytes through
generic methods, from several callers at once, with enough calls in flight
to pass 100 000 requests in the soak's share. Each answer must carry a code
the protos document for that RPC (never INTERNAL or UNKNOWN) and a status
(message and details) under 4 KiB, and come within 30 s.

The store must not change because of a refused call. Callers that may write
make that hard to see, since their calls that pass do change it; so after a
warm-up with every caller, the run goes in phases, each ending with a
snapshot of what matters (every program with its versions, deployments and
targets, signatures, principals with their tokens and grants, environments,
webhooks, and the store revision), taken once the store is quiet:

    phase      callers                                  what may change
    refused    anonymous, bad tokens, a reader (read    nothing at all, revision included: every
               on `*`)                                  mutation is refused
    scoped     a principal with register, deploy,       the program `sentiment` alone: anything
               rollback and approve on `sentiment`      else would be reached through its grant
    admin      the bootstrap admin                      only what a call that passed named in its
                                                        request; never the sentinels, which no
                                                        seed and no hostile value names

Server memory (RSS) is read at the end of the warm-up and at the end (see
MEMORY_TOLERANCE). Then the server must answer a normal call and say SERVING;
its access log must hold no INTERNAL or UNKNOWN, its log no error (a
traceback there is an unhandled path) and no line of hostile input copied
whole. Every problem found is reported together, and every bad answer with a
call that got it in build/reliability/fuzz_grpc.txt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dspy_registry.server.api.permissions import RULES
from dspy_registry.v1 import registry_pb2 as rpb
from tests.e2e.conftest import ServerProcess
from tests.reliability.conftest import ROOT, Tally, budget, rss_mib, soaking
from tests.reliability.fuzz import Fuzzer, Hostile, documented_codes, rpcs
from tests.reliability.fuzz_seeds import SEEDS
from tests.reliability.fuzz_store import (
    CALL_SECONDS,
    SENTINEL,
    Admin,
    Setup,
    Snapshot,
    named,
    page_tokens,
    set_up,
)
from tests.reliability.fuzz_values import CURSORS, HUGE_TEXT, TEXT

FUZZ_SECONDS = budget(22, 0.3)  # the fuzzing itself; set-up and snapshots come on top
# The warm-up is long under soak: the server's memory climbs to its working size over the first
# minutes of fuzzing (a 9-minute run: 88 MiB at the start, 105-120 from the fifth minute on, flat
# after), and the bar is growth beyond that.
SHARES = {"warm-up": 0.5, "refused": 0.15, "scoped": 0.1, "admin": 0.25}
CONCURRENCY = 48  # calls in flight: 1 300 to 1 500 answers a second on this 2-core machine
STREAM_LINGER = 0.2  # seconds a watch is listened to after its first message
STATUS_LIMIT = 4096  # bytes of message + details a refusal may carry
# The soak's bar: server memory within 10 % from the end of the warm-up to the end of the run. A
# short run ends before the server's memory reaches its working size (measured with reader and
# anonymous calls alone: RSS climbs from 97 to 140 MiB over the first 30 000 calls, then holds), so
# there it is a guard against gross growth only: the retention of refused requests that took a
# server to 1.6 GiB in 200 calls of 100 000 items would trip it.
MEMORY_TOLERANCE = 0.10 if soaking() else 2.0
# Calls that cost the server tens of MiB for a moment (100 000 items to check, a MiB to quote) go
# two at a time: with 48 at once the server's peak, and so what its allocator keeps of it, would
# be a matter of chance, and its RSS would measure that chance rather than what it holds.
HEAVY_BYTES = 256 << 10
HEAVY_LANES = 2
LOG_LINE_LIMIT = 16 << 10  # hostile input must not be copied into the log whole
# Codes every RPC may answer (docs/api.md, Errors): bad input anywhere, no or a bad token, no grant,
# the database out of reach. The rest must be named in the RPC's comment or its service's.
ANY_RPC = frozenset({"OK", "INVALID_ARGUMENT", "UNAUTHENTICATED", "PERMISSION_DENIED", "UNAVAILABLE"})
# The client takes any status and any answer, so that it can measure them, not refuse them.
CLIENT_OPTIONS = [
    ("grpc.max_metadata_size", 32 << 20),
    ("grpc.absolute_max_metadata_size", 32 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
]
REPORT = ROOT / "build" / "reliability" / "fuzz_grpc.txt"  # every bad answer, with a call that got it
# RPCs that change the store when they pass: the mutations of the permission table, and the
# sidecars' reports (a NACK ends a blue-green deployment; metrics roll back a canary).
WRITERS = frozenset(
    path
    for path, rule in RULES.items()
    if rule.mutation or path.endswith(("/ReportSidecarStatus", "/ReportMetrics"))
)

# grpc's asyncio client, writing a client stream that the server has already answered (a refused
# UploadProgram), can replace the status it received with this one of its own (set_internal_error
# in grpc/_cython/_cygrpc/aio/call.pyx.pxi); the server's access log has the real code, which
# the test checks instead.
CLIENT_LOST_STATUS = "Internal error from Core"
LOST = "(lost by the client)"
EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # what read() gives at a stream's end

pytestmark = pytest.mark.timeout(FUZZ_SECONDS + 180)

Metadata = tuple[tuple[str, str], ...]


# -- calling with raw bytes -----------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    code: str
    message: str = ""
    status_bytes: int = 0


async def send(channel: grpc.aio.Channel, metadata: Metadata, h: Hostile) -> Outcome:
    """Send `h` as it is (no serializer) and say how the server answered."""
    path = h.rpc.path
    try:
        if h.rpc.client_streaming:
            upload: Any = channel.stream_unary(path, request_serializer=None, response_deserializer=None)
            call: Any = upload(metadata=metadata, timeout=CALL_SECONDS)  # written message by message
            try:
                for part in h.messages:
                    await call.write(part)
                await call.done_writing()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                pass  # the server answered before the stream ended: its status follows
            await call
        elif h.rpc.server_streaming:
            stream = channel.unary_stream(path, request_serializer=None, response_deserializer=None)
            call = stream(h.messages[0], metadata=metadata, timeout=CALL_SECONDS)
            # A watch never ends by itself: its first message is the answer, and a moment more
            # shows an error that comes after it (a progress interval out of range); then hang up.
            if await call.read() is EOF:
                status = await call.code()
                if status != grpc.StatusCode.OK:
                    return Outcome(status.name, await call.details() or "")
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(call.read(), STREAM_LINGER)
            call.cancel()
        else:
            unary = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
            await unary(h.messages[0], metadata=metadata, timeout=CALL_SECONDS)
        return Outcome("OK")
    except grpc.aio.AioRpcError as err:
        details_: Any = err.details()  # a str (grpc-stubs says bytes)
        text: str = details_ or ""
        trailers: Any = err.trailing_metadata() or ()
        details = sum(len(v) for k, v in trailers if k == "grpc-status-details-bin")
        code = err.code().name
        if h.rpc.client_streaming and code == "INTERNAL" and text == CLIENT_LOST_STATUS:
            code = LOST  # the server answered (its access log says what); grpc's client lost it
        too_big = re.search(r"received metadata size exceeds .* \(value length (\d+)", text)
        if code == "RESOURCE_EXHAUSTED" and too_big:  # a status beyond even this client's 16 MiB
            return Outcome(code, text, int(too_big.group(1)))
        return Outcome(code, text, len(text.encode(errors="replace")) + details)


# -- what a run saw ---------------------------------------------------------------------------


@dataclass
class Anomaly:
    """One kind of bad answer: how often, from which RPCs, and the first call of each RPC that got it."""

    count: int = 0
    examples: dict[str, str] = field(default_factory=dict)  # RPC -> the call and the answer


@dataclass
class Caller:
    name: str
    metadata: Metadata
    fuzzer: Fuzzer
    explains: Callable[[Hostile], set[str]] | None = None  # names its passed writes account for
    also: frozenset[str] = frozenset()  # codes its credentials earn besides the RPC's


@dataclass
class Run:
    tally: Tally
    anomalies: dict[str, Anomaly] = field(default_factory=dict)
    explained: set[str] = field(default_factory=set)  # names the admin's passed writes named
    owners: dict[str, str] = field(default_factory=dict)  # deployments/x -> its program …

    def record(self, caller: Caller, h: Hostile, outcome: Outcome) -> None:
        self.tally.operations += 1
        self.tally.bad_inputs += 1
        self.tally.codes[outcome.code] += 1
        problem = verdict(h, outcome, caller.also)
        if problem is not None:
            anomaly = self.anomalies.setdefault(problem, Anomaly())
            anomaly.count += 1
            if h.rpc.name not in anomaly.examples:
                answer = f"{outcome.code} ({outcome.status_bytes} bytes): {outcome.message[:300]!r}"
                anomaly.examples[h.rpc.name] = f"{caller.name}: {h.reproducer()}\n      got {answer}"
        if outcome.code == "OK" and h.rpc.path in WRITERS and caller.explains is not None:
            self.explained |= caller.explains(h)

    def problems(self) -> list[str]:
        return [self.report(examples=2)] if self.anomalies else []

    def report(self, examples: int) -> str:
        out = []
        for problem, a in sorted(self.anomalies.items(), key=lambda kv: -kv[1].count):
            rpcs_ = ", ".join(sorted(a.examples))
            out.append(f"{a.count} × {problem}, from {len(a.examples)} RPCs: {rpcs_}")
            out += [f"    {example}" for example in list(a.examples.values())[:examples]]
        return "\n".join(out)


def verdict(h: Hostile, outcome: Outcome, also: frozenset[str] = frozenset()) -> str | None:
    """What is wrong with this answer to this call, if anything."""
    allowed = ANY_RPC | documented_codes(h.rpc) | also | {LOST}
    if h.kind == "oversize":
        allowed |= {"RESOURCE_EXHAUSTED"}  # gRPC's own answer above the receive limit
    if outcome.code == "DEADLINE_EXCEEDED":
        return f"no answer in {CALL_SECONDS:.0f} s"
    if outcome.status_bytes >= STATUS_LIMIT:
        return f"status over {STATUS_LIMIT} bytes ({h.kind})"
    if outcome.code not in allowed:
        kind = "corrupt" if h.kind == "corrupt" else "well-formed"
        return f"{outcome.code} (not documented), {kind} request"
    return None


async def fuzz(channel: grpc.aio.Channel, callers: list[Caller], seconds: float, run: Run) -> None:
    """CONCURRENCY workers, each sending hostile calls of a random caller until `seconds` pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    heavy = asyncio.Semaphore(HEAVY_LANES)

    async def worker(index: int) -> None:
        pick = random.Random(index)
        while loop.time() < deadline:
            caller = pick.choice(callers)
            h = caller.fuzzer.hostile()
            if h.size > HEAVY_BYTES or h.kind == "many":
                async with heavy:
                    outcome = await send(channel, caller.metadata, h)
            else:
                outcome = await send(channel, caller.metadata, h)
            run.record(caller, h, outcome)

    await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))


def _bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


# -- the test ---------------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(
        f"sqlite:///{tmp_path / 'fuzz.db'}",
        tmp_path / "server.log",
        extra_args=["--webhook-allow", "127.0.0.1/32"],  # webhooks to a closed local port: they fail fast
    ).start()
    try:
        yield process
    finally:
        if process.process is not None and process.process.poll() is None:
            process.stop()


def test_every_rpc_has_a_seed_and_no_value_names_a_sentinel() -> None:
    """A new RPC needs a seed here before it can be fuzzed; the sentinels stay out of every value."""
    assert sorted(SEEDS) == sorted(rpc.name for rpc in rpcs())
    assert not [label for label, value in TEXT + HUGE_TEXT + CURSORS if SENTINEL in value]
    assert not [name for name, templates in SEEDS.items() if any(SENTINEL in t for t in templates)]


async def test_every_rpc_answers_hostile_requests_with_a_documented_code(
    server: ServerProcess, tally: Tally
) -> None:
    assert server.process is not None
    pid = server.process.pid
    run = Run(tally)
    async with grpc.aio.insecure_channel(server.address, options=CLIENT_OPTIONS) as channel:
        admin = Admin(channel, server.token_file.read_text().strip(), tally)
        setup = await set_up(admin)
        as_admin, scoped, refused = await _callers(channel, admin, setup, run)

        started = time.monotonic()
        await fuzz(channel, [as_admin, scoped, *refused], FUZZ_SECONDS * SHARES["warm-up"], run)
        tally.memory_before_mib = await settled_rss(pid)
        before = await admin.quiet_snapshot()
        await fuzz(channel, refused, FUZZ_SECONDS * SHARES["refused"], run)
        after_refused = await admin.quiet_snapshot()
        await fuzz(channel, [scoped], FUZZ_SECONDS * SHARES["scoped"], run)
        after_scoped = await admin.quiet_snapshot()
        run.owners.update(after_scoped.owners)
        await fuzz(channel, [as_admin], FUZZ_SECONDS * SHARES["admin"], run)
        after_admin = await admin.quiet_snapshot()
        tally.memory_after_mib = await settled_rss(pid)
        seconds = time.monotonic() - started

        # Still serving: a normal call, and health.
        found = await admin(
            admin.registry.GetProgramVersion,
            rpb.GetProgramVersionRequest(name=f"programs/{SENTINEL}/versions/latest"),
        )
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert found.program_version.version == "1.1.0"
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert server.process.poll() is None

    problems = [
        *run.problems(),
        *_store_problems(before, after_refused, after_scoped, after_admin, run.explained),
        *_log_problems(server.log()),
        *_memory_problems(tally.memory_before_mib, tally.memory_after_mib),
    ]
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n\n".join([run.report(examples=1000), *problems[len(run.problems()) :]]) + "\n")
    print(f"\n{tally.bad_inputs} hostile calls in {seconds:.0f} s ({tally.bad_inputs / seconds:.0f}/s)")
    assert not problems, f"(every bad answer, with a call that got it: {REPORT})\n\n" + "\n\n".join(problems)


async def _callers(
    channel: grpc.aio.Channel, admin: Admin, setup: Setup, run: Run
) -> tuple[Caller, Caller, list[Caller]]:
    """The admin, the principal scoped to sentiment, and the callers whose every write is refused."""
    cursors = {
        program: await page_tokens(channel, admin, setup.names[program])
        for program in ("fuzzed", "sentiment")
    }

    def fuzzer(program: str, seed_: int) -> Fuzzer:
        return Fuzzer(setup.names[program], seed_, cursors[program])

    reader = setup.tokens["reader"]
    refused = [
        Caller("anonymous", (), fuzzer("fuzzed", 3)),
        Caller("reader", _bearer(reader), fuzzer("fuzzed", 4)),
        Caller("reader (sentiment)", _bearer(reader), fuzzer("sentiment", 5)),
        *(
            Caller(f"bad token {i}", metadata, fuzzer("fuzzed", 10 + i))
            for i, metadata in enumerate(_bad_credentials(reader))
        ),
        # Above gRPC's 8 KiB of request metadata: refused by gRPC itself, RESOURCE_EXHAUSTED.
        Caller(
            "token of 9 KiB", _bearer("x" * 9000), fuzzer("fuzzed", 6), also=frozenset({"RESOURCE_EXHAUSTED"})
        ),
    ]
    as_admin = Caller("admin", admin.metadata, fuzzer("fuzzed", 1), lambda h: named(h, run.owners))
    scoped = Caller("scoped", _bearer(setup.tokens["scoped"]), fuzzer("sentiment", 2))
    return as_admin, scoped, refused


async def settled_rss(pid: int) -> float:
    """The server's RSS once calls in flight have let go of what they held: two reads alike."""
    last = rss_mib(pid)
    for _ in range(40):
        await asyncio.sleep(0.25)
        now = rss_mib(pid)
        if abs(now - last) <= 0.01 * last:
            return now
        last = now
    return last


def _store_problems(
    before: Snapshot,
    after_refused: Snapshot,
    after_scoped: Snapshot,
    after_admin: Snapshot,
    explained: set[str],
) -> list[str]:
    problems = []
    changed = before.changed(after_refused)
    if changed or before.revision != after_refused.revision:
        problems.append(
            f"refused calls changed the store (revision {before.revision} → {after_refused.revision}):\n"
            + before.diff(after_refused, changed)
        )
    changed = [k for k in after_refused.changed(after_scoped) if k != ("programs", "sentiment")]
    if changed:
        problems.append(
            "the principal scoped to sentiment changed more:\n" + after_refused.diff(after_scoped, changed)
        )
    changed = after_scoped.changed(after_admin)
    unexplained = [k for k in changed if k[1] not in explained or k[1] == SENTINEL]
    if unexplained:
        problems.append(
            "changed though no call that passed named them:\n" + after_scoped.diff(after_admin, unexplained)
        )
    return problems


def _log_problems(text: str) -> list[str]:
    """The server's own account: its access log's codes, its errors, and no line of hostile input."""
    problems = []
    log = text.splitlines()
    logged = Counter(json.loads(line).get("code") for line in log if '"msg": "rpc"' in line)
    if logged.keys() & {"INTERNAL", "UNKNOWN"}:
        problems.append(f"the server's access log has INTERNAL or UNKNOWN answers: {dict(logged)}")
    errors = [line for line in log if '"level": "error"' in line]
    if errors:
        kinds = Counter(json.loads(line).get("msg", "")[:100] for line in errors)
        problems.append(
            f"{len(errors)} errors in the server log: {dict(kinds.most_common(8))}; the first:\n{errors[0][:3000]}"
        )
    longest = max(log, key=len)
    if len(longest) > LOG_LINE_LIMIT:
        problems.append(f"a log line of {len(longest)} characters: {longest[:400]}…")
    return problems


def _memory_problems(before: float | None, after: float | None) -> list[str]:
    assert before is not None and after is not None
    growth = after / before - 1
    if abs(growth) > MEMORY_TOLERANCE:
        return [
            f"server memory {before:.1f} → {after:.1f} MiB ({growth:+.1%}), beyond ±{MEMORY_TOLERANCE:.0%}"
        ]
    return []


def _bad_credentials(reader: str) -> list[Metadata]:
    """Credentials that are not a token, or a token mangled; the reader's at best."""
    return [
        (("authorization", "Bearer nope"),),
        (("authorization", ""),),
        (("authorization", "Bearer"),),
        (("authorization", "Basic YWRtaW46YWRtaW4="),),
        (("authorization", "Bearer " + "x" * 4000),),
        (("authorization", f"Bearer {reader}x"),),
        (("authorization", f"Bearer {reader[:-1]}"),),
        (("authorization", f"bearer {reader}"),),
        (("authorization", f"Bearer  {reader} "),),
        (("authorization", "Bearer nope"), ("authorization", f"Bearer {reader}")),
        (("authorization", "Bearer ../../admin"),),
    ]

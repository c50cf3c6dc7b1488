"""The crash test's clients: threads that mutate through the real gRPC API while the server is SIGKILLed.

Each worker owns its programs, signature and principal, so that what it was
told is, once the run ends, exactly what the store must hold for them: its
own record of acknowledged answers is the oracle. Every mutation carries a
request_id; an answer lost to a kill (UNAVAILABLE, or a deadline) is asked
for again with the same request, unchanged, until one comes. Some answered
requests are also sent once more on purpose, as a client whose answer
arrived too late would: the server must answer with the first answer and
create nothing.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import text_format
from google.protobuf.message import Message

from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import access_pb2_grpc as apb_grpc
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc
from tests.factories import dspy_state, spec_proto
from tests.reliability.servers import RETRYABLE, Restartable

# Where workers deploy. development is left to auto-deploy alone (each registration puts its
# version there once), so that its deployments can be counted exactly.
ENVIRONMENTS = ("staging", "production", "qa")
APPROVER = "approver"
CALL_SECONDS = 10.0  # one attempt; a server that stopped answering is retried like a dead one
RETRY_SECONDS = 90.0  # how long a worker keeps asking the same request before the test fails
RESEND = 0.15  # the share of answered requests sent again on purpose
# Refusals a worker's random choices provoke (an ended deployment, a policy, a busy target).
EXPECTED_REFUSALS = frozenset({grpc.StatusCode.FAILED_PRECONDITION})
STUBS: dict[str, Callable[[grpc.Channel], Any]] = {
    "registry": pb_grpc.RegistryServiceStub,
    "deployment": dpb_grpc.DeploymentServiceStub,
    "access": apb_grpc.AccessServiceStub,
}


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Ack:
    """One acknowledged mutation: the request as sent each time, and the first answer."""

    method: str
    principal: str  # principals/{principal}: who called
    request: Any
    response: Any

    @property
    def request_id(self) -> str:
        return str(self.request.request_id)


def made_revision(ack: Ack) -> int:
    """The store revision this mutation wrote; 0 when its answer says it changed nothing."""
    r = ack.response
    match ack.method:
        case "RegisterProgram":
            return int(r.program_version.revision) if r.created else 0
        case "RegisterSignature":
            return int(r.signature_version.revision)
        case "GrantPermission":
            return int(r.permission.revision) if r.created else 0
        case "RevokePermission":
            return int(r.permission.revision)
        case "CreateToken" | "RevokeToken":
            return int(r.token.revision)
        case _:  # the deployment methods
            return int(r.deployment.revision)


def same_answer(first: Message, again: Message) -> bool:
    """A replay is the first answer, but for CreateToken's secret, which is never stored."""
    if isinstance(first, apb.CreateTokenResponse) and isinstance(again, apb.CreateTokenResponse):
        expected = apb.CreateTokenResponse()
        expected.CopyFrom(first)
        expected.secret = ""
        return expected == again
    return first == again


def brief(answer: Any) -> str:
    """An answer in one short line, for a failure message."""
    if isinstance(answer, Message):
        return text_format.MessageToString(answer, as_one_line=True)[:300]
    return repr(answer)


@dataclass
class Journal:
    """What every worker was told, shared by the workers' threads."""

    acks: list[Ack] = field(default_factory=list)
    refusals: Counter[str] = field(default_factory=Counter)  # method: code
    codes: Counter[str] = field(default_factory=Counter)
    surprises: list[str] = field(default_factory=list)  # answers no client can act on, or wrong replays
    resent: int = 0
    retried: int = 0  # attempts repeated after a lost answer
    max_revision: int = 0  # the highest revision any answer carried
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, code: grpc.StatusCode) -> None:
        with self.lock:
            self.codes[code.name] += 1

    def acked(self, ack: Ack) -> None:
        with self.lock:
            self.acks.append(ack)
            self.max_revision = max(self.max_revision, made_revision(ack))

    def refused(self, method: str, code: grpc.StatusCode) -> None:
        with self.lock:
            self.refusals[f"{method}: {code.name}"] += 1

    def surprise(self, what: str) -> None:
        with self.lock:
            self.surprises.append(what)


@dataclass
class Tokens:
    admin: str
    approver: str


class Worker(threading.Thread):
    """Random mutations on its own programs, signature and principal until `stop` is set."""

    def __init__(
        self,
        index: int,
        server: Restartable,
        tokens: Tokens,
        journal: Journal,
        seed: int,
        stop: threading.Event,
    ) -> None:
        super().__init__(name=f"crash-worker-{index}", daemon=True)
        self.server = server
        self.tokens = tokens
        self.journal = journal
        self.rng = random.Random(seed)
        self.stop = stop
        self.error: BaseException | None = None
        self.programs = (f"w{index}a", f"w{index}b")
        self.signature = f"w{index}sig"
        self.principal = f"w{index}-bot"
        # What the store must hold for this worker once every answer is in.
        self.versions: dict[str, list[str]] = {p: ["1.0.0"] for p in self.programs}
        self.signature_versions = ["1.0.0"]
        self.majors = 1  # explicit versions are the next major, above every auto-incremented one
        self.signature_majors = 1
        self.deployments: list[str] = []  # every deployment it created, rollbacks included
        self.grants: set[str] = set()
        self.grants_revoked: set[str] = set()
        self.tokens_live: set[str] = set()
        self.tokens_revoked: set[str] = set()
        self._channels: dict[str, tuple[int, grpc.Channel]] = {}

    # -- calling -----------------------------------------------------------------------------

    def _stub(self, role: str, service: str) -> Any:
        generation = self.server.generation
        held = self._channels.get(role)
        if held is None or held[0] != generation:
            if held is not None:
                held[1].close()
            token = self.tokens.admin if role == "admin" else self.tokens.approver
            held = (generation, self.server.channel(token))
            self._channels[role] = held
        return STUBS[service](held[1])

    def call(
        self,
        role: str,
        service: str,
        method: str,
        request: Any,
        refusals: frozenset[grpc.StatusCode] = EXPECTED_REFUSALS,
    ) -> Any:
        """The answer, or the status code of a refusal; a lost answer is asked for again, unchanged."""
        deadline = time.monotonic() + RETRY_SECONDS
        while True:
            try:
                response = getattr(self._stub(role, service), method)(request, timeout=CALL_SECONDS)
            except grpc.RpcError as err:
                code: grpc.StatusCode = err.code()
                self.journal.count(code)
                if code in RETRYABLE:
                    assert time.monotonic() < deadline, f"{method}: no answer for {RETRY_SECONDS}s: {err}"
                    with self.journal.lock:
                        self.journal.retried += 1
                    time.sleep(0.05)
                    continue
                if code not in refusals:
                    details = err.details()
                    self.journal.surprise(
                        f"{method} {getattr(request, 'request_id', '')}: {code.name} {details}"
                    )
                return code
            self.journal.count(grpc.StatusCode.OK)
            return response

    def mutate(self, role: str, service: str, method: str, request: Any) -> Any | None:
        """The answer to a mutation, recorded; None for a refusal. Sometimes sent again on purpose."""
        result = self.call(role, service, method, request)
        if isinstance(result, grpc.StatusCode):
            self.journal.refused(method, result)
            return None
        principal = f"principals/{'admin' if role == 'admin' else APPROVER}"
        ack = Ack(method, principal, request, result)
        self.journal.acked(ack)
        if self.rng.random() < RESEND:
            again = self.call(role, service, method, request)
            with self.journal.lock:
                self.journal.resent += 1
            if isinstance(again, grpc.StatusCode) or not same_answer(result, again):
                self.journal.surprise(
                    f"{method} {ack.request_id} sent again: {brief(again)}; first {brief(result)}"
                )
        return result

    # -- the mix -------------------------------------------------------------------------------

    def run(self) -> None:
        operations: list[tuple[Callable[[], None], int]] = [
            (self.register_program, 3),
            (self.register_signature, 1),
            (self.deploy, 5),
            (self.approve, 2),
            (self.promote, 2),
            (self.abort, 1),
            (self.rollback, 2),
            (self.grant, 1),
            (self.revoke_grant, 1),
            (self.create_token, 1),
            (self.revoke_token, 1),
        ]
        actions = [op for op, _ in operations]
        weights = [w for _, w in operations]
        try:
            while not self.stop.is_set():
                self.rng.choices(actions, weights)[0]()
        except BaseException as exc:  # handed to the test, which fails naming it
            self.error = exc
        finally:
            for _, channel in self._channels.values():
                channel.close()

    def register_program(self) -> None:
        program = self.rng.choice(self.programs)
        spec = pb.ProgramVersionSpec(
            program=program,
            signature=f"signatures/{self.signature}/versions/1.0.0",
            performance={"accuracy": self.rng.choice((0.8, 0.9, 0.95))},
        )
        if self.rng.random() < 0.3:
            self.majors += 1
            spec.version = f"{self.majors}.0.0"
        else:  # auto-increment: a retry that created a second version would show as a duplicate
            spec.change_type = pb.CHANGE_TYPE_PATCH
        request = pb.RegisterProgramRequest(
            spec=spec, artifact=dspy_state(f"{program} {uuid.uuid4()}"), request_id=new_request_id()
        )
        if (answer := self.mutate("admin", "registry", "RegisterProgram", request)) is not None:
            self.versions[program].append(answer.program_version.version)

    def register_signature(self) -> None:
        request = pb.RegisterSignatureRequest(
            signature=self.signature,
            spec=spec_proto(instructions=f"Classify sentiment ({uuid.uuid4().hex[:8]})."),
            request_id=new_request_id(),
        )
        if self.rng.random() < 0.3:
            self.signature_majors += 1
            request.version = f"{self.signature_majors}.0.0"
        else:
            request.change_type = pb.CHANGE_TYPE_PATCH
        if (answer := self.mutate("admin", "registry", "RegisterSignature", request)) is not None:
            self.signature_versions.append(answer.signature_version.version)

    def _strategy(self) -> dpb.DeploymentStrategy | None:
        kind = self.rng.choice(("default", "replace", "blue_green", "canary"))
        if kind == "default":
            return None
        if kind == "replace":
            return dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE)
        if kind == "blue_green":
            s = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_BLUE_GREEN)
            s.blue_green.auto_promote = self.rng.random() < 0.6
            s.blue_green.promote_delay.FromMilliseconds(self.rng.randrange(0, 1500))
            return s
        s = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_CANARY)
        weights = sorted(self.rng.sample(range(1, 100), self.rng.randint(1, 3)))
        for weight in weights:
            s.canary.steps.add(weight_percent=weight).pause.FromMilliseconds(self.rng.randrange(100, 1500))
        return s

    def deploy(self) -> None:
        program = self.rng.choice(self.programs)
        request = dpb.CreateDeploymentRequest(
            program=program,
            version=self.rng.choice(self.versions[program]),
            environment=self.rng.choice(ENVIRONMENTS),
            supersede=self.rng.random() < 0.7,
            reason="crash test",
            request_id=new_request_id(),
        )
        if (strategy := self._strategy()) is not None:
            request.strategy.CopyFrom(strategy)
        if (answer := self.mutate("admin", "deployment", "CreateDeployment", request)) is not None:
            self.deployments.append(answer.deployment.name)

    def _recent(self) -> str | None:
        return self.rng.choice(self.deployments[-8:]) if self.deployments else None

    def approve(self) -> None:
        if (name := self._recent()) is None:
            return
        request = dpb.ApproveDeploymentRequest(
            name=name, reject=self.rng.random() < 0.15, comment="looked at it", request_id=new_request_id()
        )
        self.mutate("approver", "deployment", "ApproveDeployment", request)

    def promote(self) -> None:
        if (name := self._recent()) is None:
            return
        request = dpb.PromoteDeploymentRequest(
            name=name, full=self.rng.random() < 0.3, request_id=new_request_id()
        )
        self.mutate("admin", "deployment", "PromoteDeployment", request)

    def abort(self) -> None:
        if (name := self._recent()) is None:
            return
        request = dpb.AbortDeploymentRequest(name=name, reason="crash test", request_id=new_request_id())
        self.mutate("admin", "deployment", "AbortDeployment", request)

    def rollback(self) -> None:
        """Roll back what shapes one of its targets now (a read first, asked again if lost too)."""
        status = self.call(
            "admin",
            "deployment",
            "GetDeploymentStatus",
            dpb.GetDeploymentStatusRequest(
                program=self.rng.choice(self.programs), environment=self.rng.choice(ENVIRONMENTS)
            ),
            frozenset({grpc.StatusCode.NOT_FOUND}),
        )
        if isinstance(status, grpc.StatusCode) or not status.target.deployment:
            return  # nothing deployed there yet (NOT_FOUND)
        request = dpb.RollbackDeploymentRequest(
            name=status.target.deployment, reason="crash test", request_id=new_request_id()
        )
        if (answer := self.mutate("admin", "deployment", "RollbackDeployment", request)) is not None:
            self.deployments.append(answer.deployment.name)

    def grant(self) -> None:
        request = apb.GrantPermissionRequest(
            principal=f"principals/{self.principal}",
            action=self.rng.choice(
                (
                    apb.ACTION_READ,
                    apb.ACTION_REGISTER,
                    apb.ACTION_DEPLOY,
                    apb.ACTION_ROLLBACK,
                    apb.ACTION_APPROVE,
                )
            ),
            resource=self.rng.choice((*self.programs, self.programs[0][:-1] + "*")),
            request_id=new_request_id(),
        )
        if (answer := self.mutate("admin", "access", "GrantPermission", request)) is not None:
            self.grants.add(answer.permission.name)

    def revoke_grant(self) -> None:
        if not self.grants:
            return
        name = self.rng.choice(sorted(self.grants))
        request = apb.RevokePermissionRequest(name=name, request_id=new_request_id())
        if self.mutate("admin", "access", "RevokePermission", request) is not None:
            self.grants.discard(name)
            self.grants_revoked.add(name)

    def create_token(self) -> None:
        request = apb.CreateTokenRequest(
            parent=f"principals/{self.principal}", description="crash test", request_id=new_request_id()
        )
        if (answer := self.mutate("admin", "access", "CreateToken", request)) is not None:
            self.tokens_live.add(answer.token.name)

    def revoke_token(self) -> None:
        if not self.tokens_live:
            return
        name = self.rng.choice(sorted(self.tokens_live))
        request = apb.RevokeTokenRequest(name=name, request_id=new_request_id())
        if self.mutate("admin", "access", "RevokeToken", request) is not None:
            self.tokens_live.discard(name)
            self.tokens_revoked.add(name)

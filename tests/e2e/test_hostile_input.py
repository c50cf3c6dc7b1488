"""Bytes that are not the RPC's message, and values too big to repeat: clear refusals, quiet logs.

A request that does not parse is INVALID_ARGUMENT once the caller is known
(UNAUTHENTICATED before), with one access-log line and no traceback; its
refusals are throttled in the audit log like any other. An error never
repeats a caller's value whole: the status stays under 4 KiB, so that the
client gets the error the server meant and not gRPC's RESOURCE_EXHAUSTED for
an oversized trailer.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import grpc
from google.rpc import status_pb2

from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import access_pb2_grpc as apb_grpc
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import registry_pb2 as pb
from tests.e2e.conftest import ServerProcess

WHOAMI = "/dspy_registry.v1.AccessService/WhoAmI"
GET_PROGRAM = "/dspy_registry.v1.RegistryService/GetProgram"
REGISTER_PROGRAM = "/dspy_registry.v1.RegistryService/RegisterProgram"
UPLOAD_PROGRAM = "/dspy_registry.v1.RegistryService/UploadProgram"
WATCH_TARGETS = "/dspy_registry.v1.DeploymentService/WatchTargets"
UPDATE_ENVIRONMENT = "/dspy_registry.v1.DeploymentService/UpdateEnvironment"
LIST_PROGRAMS = "/dspy_registry.v1.RegistryService/ListPrograms"


def _raw(channel: grpc.Channel, method: str) -> Any:
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


def _refusal(call: Any, *args: Any) -> grpc.RpcError:
    try:
        call(*args, timeout=10)
    except grpc.RpcError as err:
        return err
    raise AssertionError("the call was not refused")


def _status_size(err: Any) -> int:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return len(status_pb2.Status.FromString(value).SerializeToString())
    raise AssertionError("no rich status")


def _deep_struct(depth: int) -> bytes:
    """Struct nesting written by hand: the Python library refuses to build it as a message."""
    inner = b""
    for _ in range(depth):
        value = b"\x2a" + _varint(len(inner)) + inner  # Value.struct_value = 5
        entry = b"\x0a\x01a" + b"\x12" + _varint(len(value)) + value  # map entry: key 1, value 2
        inner = b"\x0a" + _varint(len(entry)) + entry  # Struct.fields = 1
    return inner


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


async def test_undecodable_requests_are_invalid_argument_with_one_log_line_and_no_traceback(
    serve: type[ServerProcess], tmp_path: Path
) -> None:
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    with server.channel() as channel, grpc.insecure_channel(server.address) as anonymous:
        refused = _refusal(_raw(channel, WHOAMI), b"\xff\xff\xff")
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.details() == "the request is not a valid WhoAmIRequest: Wire format was corrupt"
        # Authenticated first, as any call: a stranger learns nothing about the request.
        stranger = _refusal(_raw(anonymous, WHOAMI), b"\xff\xff\xff")
        assert stranger.code() == grpc.StatusCode.UNAUTHENTICATED

        bad_utf8 = pb.GetProgramRequest(name="programs/abc").SerializeToString().replace(b"abc", b"a\xffc")
        refused = _refusal(_raw(channel, GET_PROGRAM), bad_utf8)
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "bad UTF-8" in (refused.details() or "")

        metadata = _deep_struct(60)
        spec = pb.ProgramVersionSpec(program="p", version="1.0.0").SerializeToString()
        spec += b"\x42" + _varint(len(metadata)) + metadata  # ProgramVersionSpec.metadata = 8
        deep = b"\x0a" + _varint(len(spec)) + spec  # RegisterProgramRequest.spec = 1
        assert pb.ProgramVersionSpec.DESCRIPTOR.fields_by_name["metadata"].number == 8
        refused = _refusal(_raw(channel, REGISTER_PROGRAM), deep)
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "RegisterProgramRequest" in (refused.details() or "")

        upload = channel.stream_unary(UPLOAD_PROGRAM, request_serializer=None, response_deserializer=None)
        refused = _refusal(upload, iter([b"\xff\xff\xff"]))
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "UploadProgramRequest" in (refused.details() or "")

        watch = channel.unary_stream(WATCH_TARGETS, request_serializer=None, response_deserializer=None)
        try:
            token = server.token_file.read_text().strip()  # the test channel adds it to unary calls only
            next(iter(watch(b"\xff\xff\xff", timeout=10, metadata=(("authorization", f"Bearer {token}"),))))
            raise AssertionError("the watch was not refused")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert server.stop(signal.SIGTERM) == 0
    log = server.log()
    assert "Traceback" not in log and "unhandled error" not in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    access = [(line["method"], line["code"]) for line in lines if line["msg"] == "rpc"]
    assert access.count((WHOAMI, "INVALID_ARGUMENT")) == 1
    assert access.count((WHOAMI, "UNAUTHENTICATED")) == 1
    for method in (GET_PROGRAM, REGISTER_PROGRAM, UPLOAD_PROGRAM, WATCH_TARGETS):
        assert access.count((method, "INVALID_ARGUMENT")) == 1, method


async def test_a_flood_of_undecodable_mutations_is_throttled_in_the_audit_log(
    serve: type[ServerProcess], tmp_path: Path
) -> None:
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    with server.channel() as channel:
        register = _raw(channel, REGISTER_PROGRAM)
        started = time.monotonic()
        for _ in range(40):
            assert _refusal(register, b"\x0a\x05\xff").code() == grpc.StatusCode.INVALID_ARGUMENT
        flood = time.monotonic() - started
        time.sleep(1.1)  # the bucket refills: the next refusal is written, counting those skipped
        assert _refusal(register, b"\x0a\x05\xff").code() == grpc.StatusCode.INVALID_ARGUMENT
        failed = apb_grpc.AccessServiceStub(channel).ListAuditEvents(
            apb.ListAuditEventsRequest(outcomes=[apb.AUDIT_OUTCOME_FAILED], method=REGISTER_PROGRAM)
        )
    # A burst of 20 one by one, then one a second: those the flood's own seconds allowed (a busy machine
    # makes it last longer), and the one after the pause.
    assert 21 <= failed.total_size <= 21 + int(flood), flood
    assert any("more refusals of this caller" in e.message for e in failed.audit_events)


async def test_errors_quote_values_short_and_stay_under_four_kib(
    serve: type[ServerProcess], tmp_path: Path
) -> None:
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    with server.channel() as channel:
        refused = _refusal(
            _raw(channel, GET_PROGRAM),
            pb.GetProgramRequest(name="programs/" + "x" * 10_000).SerializeToString(),
        )
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT  # not RESOURCE_EXHAUSTED for the trailer
        assert "'" + "x" * 64 + "'… (10000 characters)" in (refused.details() or "")
        assert _status_size(refused) < 4096

        # Hundreds of bad labels: as many violations as fit, and the message says how many did not.
        labels = {f"Bad{i}" + "é" * 60: "ok" for i in range(500)}
        spec = pb.ProgramVersionSpec(
            program="p", version="1.0.0", signature="signatures/s/versions/1.0.0", labels=labels
        )
        refused = _refusal(
            _raw(channel, REGISTER_PROGRAM),
            pb.RegisterProgramRequest(spec=spec, artifact=b"{}").SerializeToString(),
        )
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _status_size(refused) < 4096
        assert "violations)" in (refused.details() or "") and "the details list" in (refused.details() or "")


async def test_a_list_or_map_past_the_bound_is_refused_before_its_items_are_read(
    serve: type[ServerProcess], tmp_path: Path
) -> None:
    """100 000 items in a list, a map or a Struct: INVALID_ARGUMENT on the field, not 100 000 checks."""
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    update = dpb.UpdateEnvironmentRequest(environment=dpb.Environment(name="environments/staging"))
    update.environment.policy.required_predecessors.extend(f"e{i}" for i in range(100_000))
    labels = pb.ListProgramsRequest(labels={f"k{i}": "v" for i in range(5000)})
    spec = pb.ProgramVersionSpec(program="p", version="1.0.0", signature="signatures/s/versions/1.0.0")
    spec.metadata.update({"deep": {f"k{i}": i for i in range(5000)}})
    with server.channel() as channel:
        for method, request, field in (
            (UPDATE_ENVIRONMENT, update, "environment.policy.required_predecessors"),
            (LIST_PROGRAMS, labels, "labels"),
            (
                REGISTER_PROGRAM,
                pb.RegisterProgramRequest(spec=spec, artifact=b"{}"),
                "spec.metadata.fields['deep'].struct_value.fields",
            ),
        ):
            refused = _refusal(_raw(channel, method), request.SerializeToString())
            assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert (refused.details() or "").startswith(f"{field}: at most 4096 items, not "), (
                refused.details()
            )

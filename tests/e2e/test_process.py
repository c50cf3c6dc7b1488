"""The server as a process: health, SIGTERM, restart, and nothing lost — on both backends."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dspy_registry.v1 import registry_pb2 as pb
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc
from tests.e2e.conftest import ServerProcess
from tests.factories import dspy_state, spec_proto


async def test_stop_with_sigterm_restart_and_find_everything(
    serve: type[ServerProcess], database_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    first = serve(database_url, log).start()
    first.register("prog", ["1.0.0", "1.1.0"])
    assert first.stop(signal.SIGTERM) == 0
    lines = [json.loads(line) for line in first.log().splitlines() if line.startswith("{")]
    messages = [line["msg"] for line in lines]
    assert messages.index("shutting down") < messages.index("stopped")
    rpc_lines = [line for line in lines if line["msg"] == "rpc"]
    assert {line["method"].rsplit("/", 1)[1] for line in rpc_lines} >= {
        "RegisterSignature",
        "RegisterProgram",
    }
    assert all({"code", "duration_ms"} <= line.keys() for line in rpc_lines)

    second = serve(database_url, log).start()
    with second.channel() as channel:
        registry = pb_grpc.RegistryServiceStub(channel)
        latest = registry.GetProgramVersion(pb.GetProgramVersionRequest(name="programs/prog/versions/latest"))
        signature = registry.GetSignature(pb.GetSignatureRequest(name="signatures/sig"))
        revision = signature.signature_version.revision
        assert latest.program_version.version == "1.1.0" and latest.program_version.revision == revision + 2
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    assert second.stop(signal.SIGINT) == 0


async def test_a_bad_database_url_fails_to_start_with_a_clear_message(tmp_path: Path) -> None:
    import subprocess

    from tests.e2e.conftest import SERVE

    done = subprocess.run(
        [str(SERVE), "serve", "--database", "mysql://nope", "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    # A usage error, as any setting that cannot be used (docs/cli.md): exit 2, before anything starts.
    assert done.returncode == 2 and "argument --database: unsupported database URL" in done.stderr


async def test_a_taken_port_fails_to_start_with_a_clear_message_and_exits(tmp_path: Path) -> None:
    import socket
    import subprocess

    from tests.e2e.conftest import SERVE

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        command = [str(SERVE), "serve", "--database", f"sqlite:///{tmp_path / 'r.db'}", "--listen", address]
        command += ["--admin-token-file", str(tmp_path / "admin.token")]
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)  # it exits: no hang
    assert done.returncode == 1 and f"cannot listen on {address}" in done.stderr, done.stderr[-2000:]


def test_a_tls_file_that_cannot_be_used_is_one_line_and_exit_2_before_anything_starts(tmp_path: Path) -> None:
    # As a token file that cannot be read is for the client's commands. It was found once the store
    # was open and the admin principal written: exit 1, errno's words, no setting named; and a key
    # that is not the certificate's failed as "cannot listen on …: Failed to bind".
    import os
    import subprocess

    from tests.certificates import Authority
    from tests.e2e.conftest import SERVE

    ca = Authority("test CA")
    ca.issue("localhost", server=True).save(tmp_path, "server")
    ca.issue("other", server=True).save(tmp_path, "other")
    (tmp_path / "ca.crt").write_bytes(b"not a certificate\n")
    crt, key = str(tmp_path / "server.crt"), str(tmp_path / "server.key")
    missing = str(tmp_path / "missing.key")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DSPY_REGISTRY_")}

    def serve(*args: str, **env: str) -> tuple[int, str]:
        command = [
            str(SERVE),
            "serve",
            "--database",
            f"sqlite:///{tmp_path / 'r.db'}",
            "--listen",
            "127.0.0.1:0",
        ]
        command += ["--admin-token-file", str(tmp_path / "admin.token"), *args]
        done = subprocess.run(
            command, env=clean | env, capture_output=True, text=True, timeout=30, check=False
        )
        return done.returncode, done.stderr

    assert serve("--tls-cert", crt, "--tls-key", missing) == (
        2,
        f"dspy-registry serve: error: --tls-key {missing}: cannot be read: No such file or directory\n",
    )
    assert serve("--tls-key", key, DSPY_REGISTRY_TLS_CERT=str(tmp_path)) == (
        2,
        f"dspy-registry serve: error: DSPY_REGISTRY_TLS_CERT {tmp_path}: cannot be read: Is a directory\n",
    )
    code, said = serve("--tls-cert", crt, "--tls-key", str(tmp_path / "other.key"))
    assert (code, said.count("\n")) == (2, 1), said
    assert said.startswith(
        f"dspy-registry serve: error: --tls-cert {crt} and --tls-key {tmp_path / 'other.key'}: "
    )
    assert "not a PEM certificate and its unencrypted private key" in said
    code, said = serve("--tls-cert", crt, "--tls-key", key, "--tls-client-ca", str(tmp_path / "ca.crt"))
    assert (code, said.count("\n")) == (2, 1), said
    assert f"--tls-client-ca {tmp_path / 'ca.crt'}: no PEM CA certificate in it" in said
    assert not (tmp_path / "r.db").exists() and not (tmp_path / "admin.token").exists()  # nothing started


async def test_sigterm_gives_an_in_flight_upload_its_grace_period(
    serve: type[ServerProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spools = tmp_path / "spools"
    spools.mkdir()
    monkeypatch.setenv("TMPDIR", str(spools))  # the server's; where its uploads spool
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    data = dspy_state("big", pad=3 * 1024 * 1024)
    chunk = 512 * 1024

    def messages() -> Iterator[pb.UploadProgramRequest]:
        spec = pb.ProgramVersionSpec(
            program="prog", version="1.0.0", signature="signatures/sig/versions/1.0.0"
        )
        yield pb.UploadProgramRequest(header=pb.UploadProgramHeader(spec=spec, size_bytes=len(data)))
        for i in range(0, len(data), chunk):
            if i == chunk:
                assert server.process is not None
                # The header and a chunk are sent, but the server may not have taken the call yet
                # (its loop late on a busy machine): a SIGTERM then refuses it, rightly. Only a call
                # the server holds is in flight: wait until its spool holds the first chunk.
                _wait_for_spool(server.process.pid, spools, chunk)
                server.process.send_signal(signal.SIGTERM)
                time.sleep(0.5)  # the server is shutting down now, with the upload half sent
            yield pb.UploadProgramRequest(chunk=data[i : i + chunk])

    with server.channel() as channel:
        registry = pb_grpc.RegistryServiceStub(channel)
        registry.RegisterSignature(
            pb.RegisterSignatureRequest(signature="sig", version="1.0.0", spec=spec_proto())
        )
        response = registry.UploadProgram(messages(), timeout=30)
    assert response.created and response.program_version.artifact.size_bytes == len(data)
    assert server.process is not None and server.process.wait(15) == 0
    restarted = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    with restarted.channel() as channel:
        registry = pb_grpc.RegistryServiceStub(channel)
        found = registry.GetProgramVersion(pb.GetProgramVersionRequest(name="programs/prog/versions/1.0.0"))
    assert found.program_version.artifact.digest == response.program_version.artifact.digest


def _wait_for_spool(pid: int, folder: Path, size: int, timeout: float = 15.0) -> None:
    """Until process `pid` holds an upload's spool with `size` bytes in it: a nameless temporary file
    (O_TMPFILE: /proc shows it as `<folder>/#<inode> (deleted)`) in `folder`, the server's TMPDIR."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd).startswith(f"{folder}/") and fd.stat().st_size >= size:
                    return
            except OSError:  # the descriptor closed meanwhile
                continue
        time.sleep(0.01)
    raise AssertionError(f"the server (pid {pid}) spooled no {size} bytes within {timeout} s")


async def test_help_explains_principals_grants_and_tokens() -> None:
    import subprocess

    from tests.e2e.conftest import SERVE

    for args in ([], ["serve"]):
        done = subprocess.run([str(SERVE), *args, "--help"], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0
        for word in ("principals", "grants", "tokens", "admin.token", "sentiment_*", "--tls-client-ca"):
            assert word in done.stdout, (args, word)

"""`dspy-registry sidecar` as real processes beside a real server: files follow each deployment, the
server SIGKILLed and restarted while they keep their files and then catch up, ACKs in the status."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc
from tests.e2e.conftest import PROCESSES_TIMEOUT, SERVE, ServerProcess
from tests.eventually import eventually as _eventually
from tests.factories import dspy_state, spec_proto

pytestmark = PROCESSES_TIMEOUT


def _register(server: ServerProcess, version: str) -> None:
    with server.channel() as channel:
        spec = pb.ProgramVersionSpec(program="p", version=version, signature="signatures/sig/versions/1.0.0")
        pb_grpc.RegistryServiceStub(channel).RegisterProgram(
            pb.RegisterProgramRequest(spec=spec, artifact=dspy_state(f"v{version}"))
        )  # auto-deploys to development


def _target(directory: Path) -> dict[str, object] | None:
    try:
        found: dict[str, object] = json.loads((directory / "p" / "target.json").read_text())
    except FileNotFoundError:
        return None
    return found


def _stable_version(directory: Path) -> str | None:
    target = _target(directory)
    return None if target is None else str(target["stable"]["version"])  # type: ignore[index]


def _all_serve(dirs: list[Path], version: str) -> None:
    _eventually(lambda: all(_stable_version(d) == version for d in dirs), f"{version} in every target.json")


def _start_sidecars(
    server: ServerProcess, dirs: list[Path], environment: str, changes: Path
) -> list[subprocess.Popen[bytes]]:
    """One `dspy-registry sidecar` per directory (ids pod-0, pod-1, ...), following `p`."""
    sidecars = []
    for i, d in enumerate(dirs):
        command = [str(SERVE), "sidecar", "--server", server.address, "--token-file", str(server.token_file)]
        command += ["--program", "p", "--environment", environment, "--dir", str(d), "--id", f"pod-{i}"]
        command += ["--heartbeat", "1", "--on-change", f'echo "$DSPY_REGISTRY_PROGRAM {i}" >> {changes}']
        with open(d.parent / f"{d.name}.log", "wb") as log:
            sidecars.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
    return sidecars


async def test_sidecars_follow_deployments_survive_a_server_kill_and_leave(
    serve: type[ServerProcess], tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'r.db'}"
    server = serve(database, tmp_path / "server.log").start()
    with server.channel() as channel:
        pb_grpc.RegistryServiceStub(channel).RegisterSignature(
            pb.RegisterSignatureRequest(signature="sig", version="1.0.0", spec=spec_proto())
        )
    _register(server, "1.0.0")

    dirs = [tmp_path / f"sidecar-{i}" for i in range(3)]
    changes = tmp_path / "changes.log"
    sidecars = _start_sidecars(server, dirs, "development", changes)
    try:
        _eventually(lambda: all((d / "ready").exists() for d in dirs), "ready")
        _all_serve(dirs, "1.0.0")
        target = _target(dirs[0])
        assert target is not None
        stable = target["stable"]
        assert isinstance(stable, dict)
        assert (dirs[0] / "p" / stable["file"]).read_bytes() == dspy_state("v1.0.0")

        def status() -> dpb.GetDeploymentStatusResponse:
            with server.channel() as channel:
                answer: dpb.GetDeploymentStatusResponse = dpb_grpc.DeploymentServiceStub(
                    channel
                ).GetDeploymentStatus(dpb.GetDeploymentStatusRequest(program="p", environment="development"))
            return answer

        def all_ack(version: str) -> bool:
            found = status().sidecars
            return sorted(s.sidecar_id for s in found) == ["pod-0", "pod-1", "pod-2"] and all(
                [(t.version, t.result) for t in s.targets] == [(version, dpb.APPLY_RESULT_ACK)] for s in found
            )

        _eventually(lambda: all_ack("1.0.0"), "three ACKs of 1.0.0")

        _register(server, "1.1.0")
        _all_serve(dirs, "1.1.0")
        assert len(list((dirs[0] / "p").glob("sha256-*"))) == 1  # 1.0.0's file is gone
        _eventually(lambda: all_ack("1.1.0"), "three ACKs of 1.1.0")

        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        time.sleep(1.5)  # the sidecars lose the stream, retry, and keep their files
        assert all(_stable_version(d) == "1.1.0" and (d / "ready").exists() for d in dirs)
        assert all(s.poll() is None for s in sidecars)
        server.start()  # the same address: the sidecars keep dialing it
        _register(server, "1.2.0")
        _all_serve(dirs, "1.2.0")  # caught up
        # --on-change ran after each of the three changes, in each sidecar.
        _eventually(
            lambda: all(changes.read_text().splitlines().count(f"p {i}") >= 3 for i in range(3)), "on-change"
        )
    finally:
        for s in sidecars:
            s.send_signal(signal.SIGTERM)
        codes = [s.wait(15) for s in sidecars]
    assert codes == [0, 0, 0]
    assert list(status().sidecars) == []  # each said it was leaving
    server.stop()


async def test_blue_green_waits_for_the_sidecars_then_a_canary_and_a_rollback(
    serve: type[ServerProcess], tmp_path: Path
) -> None:
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    with server.channel() as channel:
        pb_grpc.RegistryServiceStub(channel).RegisterSignature(
            pb.RegisterSignatureRequest(signature="sig", version="1.0.0", spec=spec_proto())
        )
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        _register(server, version)

    def deploy(version: str, strategy: dpb.DeploymentStrategy) -> dpb.Deployment:
        with server.channel() as channel:
            request = dpb.CreateDeploymentRequest(
                program="p", version=version, environment="staging", strategy=strategy
            )
            reply: dpb.CreateDeploymentResponse = dpb_grpc.DeploymentServiceStub(channel).CreateDeployment(
                request
            )
        return reply.deployment

    def get(name: str) -> dpb.Deployment:
        with server.channel() as channel:
            reply: dpb.GetDeploymentResponse = dpb_grpc.DeploymentServiceStub(channel).GetDeployment(
                dpb.GetDeploymentRequest(name=name)
            )
        return reply.deployment

    def live_sidecars() -> int:
        with server.channel() as channel:
            status = dpb_grpc.DeploymentServiceStub(channel).GetDeploymentStatus(
                dpb.GetDeploymentStatusRequest(program="p", environment="staging")
            )
        return len(status.sidecars)

    deploy("1.0.0", dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE))
    dirs = [tmp_path / f"staging-{i}" for i in range(3)]
    sidecars = _start_sidecars(server, dirs, "staging", tmp_path / "changes.log")
    try:
        _all_serve(dirs, "1.0.0")
        _eventually(lambda: live_sidecars() == 3, "three live sidecars")

        # Blue-green: green is staged, each sidecar loads and ACKs it, then the switch.
        blue_green = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_BLUE_GREEN)
        blue_green.blue_green.auto_promote = True
        green = deploy("1.1.0", blue_green)
        _eventually(lambda: get(green.name).state == dpb.DEPLOYMENT_STATE_SUCCEEDED, "the switch")
        assert get(green.name).timeline[-1].reason == "3 of 3 live sidecars ACKed 1.1.0"
        _all_serve(dirs, "1.1.0")

        # A canary: each sidecar holds stable and candidate with the weight, then 1.2.0 alone.
        canary = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_CANARY)
        canary.canary.steps.add(weight_percent=30).pause.FromMilliseconds(800)
        rollout = deploy("1.2.0", canary)

        def holds_candidate(d: Path) -> bool:
            target = _target(d)
            candidate = target and target["candidate"]
            return isinstance(candidate, dict) and (candidate["version"], candidate["weight_percent"]) == (
                "1.2.0",
                30,
            )

        _eventually(lambda: all(holds_candidate(d) for d in dirs), "the 30 % candidate on disk")
        _eventually(lambda: get(rollout.name).state == dpb.DEPLOYMENT_STATE_SUCCEEDED, "the canary at 100 %")
        _all_serve(dirs, "1.2.0")

        with server.channel() as channel:
            dpb_grpc.DeploymentServiceStub(channel).RollbackDeployment(
                dpb.RollbackDeploymentRequest(name=rollout.name, reason="worse")
            )
        _all_serve(dirs, "1.1.0")
        target = _target(dirs[0])
        assert target is not None and target["candidate"] is None
    finally:
        for s in sidecars:
            s.send_signal(signal.SIGTERM)
        codes = [s.wait(15) for s in sidecars]
    assert codes == [0, 0, 0]
    server.stop()


async def test_a_corrupted_artifact_is_nacked_and_fails_the_blue_green_while_the_old_version_serves(
    serve: type[ServerProcess], tmp_path: Path
) -> None:
    """Bytes that no longer match their digest (here: rotted in the database) never reach a pod."""
    import sqlite3

    db = tmp_path / "r.db"
    server = serve(f"sqlite:///{db}", tmp_path / "server.log").start()
    with server.channel() as channel:
        registry = pb_grpc.RegistryServiceStub(channel)
        registry.RegisterSignature(
            pb.RegisterSignatureRequest(signature="sig", version="1.0.0", spec=spec_proto())
        )
        for version in ("1.0.0", "1.1.0"):
            _register(server, version)
        digest = registry.GetProgramVersion(
            pb.GetProgramVersionRequest(name="programs/p/versions/1.1.0")
        ).program_version.artifact.digest
        deployments = dpb_grpc.DeploymentServiceStub(channel)
        deployments.CreateDeployment(
            dpb.CreateDeploymentRequest(
                program="p",
                version="1.0.0",
                environment="staging",
                strategy=dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE),
            )
        )
    dirs = [tmp_path / f"staging-{i}" for i in range(3)]
    sidecars = _start_sidecars(server, dirs, "staging", tmp_path / "changes.log")
    try:
        _all_serve(dirs, "1.0.0")
        with sqlite3.connect(db) as rot:  # one flipped byte in 1.1.0's stored artifact
            (data,) = rot.execute(
                "SELECT data FROM artifact_chunks WHERE digest = ? AND seq = 0", (digest,)
            ).fetchone()
            rotten = bytes([data[0] ^ 0x01]) + data[1:]
            rot.execute("UPDATE artifact_chunks SET data = ? WHERE digest = ? AND seq = 0", (rotten, digest))
        with server.channel() as channel:
            deployments = dpb_grpc.DeploymentServiceStub(channel)
            blue_green = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_BLUE_GREEN)
            blue_green.blue_green.auto_promote = True
            green = deployments.CreateDeployment(
                dpb.CreateDeploymentRequest(
                    program="p", version="1.1.0", environment="staging", strategy=blue_green
                )
            ).deployment

            def state() -> dpb.Deployment:
                reply: dpb.GetDeploymentResponse = deployments.GetDeployment(
                    dpb.GetDeploymentRequest(name=green.name)
                )
                return reply.deployment

            _eventually(lambda: state().state == dpb.DEPLOYMENT_STATE_FAILED, "the blue-green failed")
            failed = state()
            reason = failed.timeline[-1].reason
            assert reason.startswith("sidecar pod-") and "could not apply 1.1.0" in reason, reason
            assert f"artifact {digest} does not match its digest" in reason

            def reported() -> list[tuple[str, int]]:
                status = deployments.GetDeploymentStatus(
                    dpb.GetDeploymentStatusRequest(program="p", environment="staging")
                )
                return [(t.version, t.result) for s in status.sidecars for t in s.targets]

            # The status shows each pod's last report: once a pod has heard that nothing wants 1.1.0
            # any more, its report drops the NACK (until then it may still list it); each ACKs 1.0.0.
            _eventually(
                lambda: reported() == [("1.0.0", dpb.APPLY_RESULT_ACK)] * 3, "every pod reports 1.0.0 alone"
            )
        # Every pod kept the old version on disk, untouched by the rotten bytes.
        assert all(_stable_version(d) == "1.0.0" and _target(d)["candidate"] is None for d in dirs)  # type: ignore[index]
        assert not any(
            path.read_bytes() != dspy_state("v1.0.0") for d in dirs for path in (d / "p").glob("sha256-*")
        )
    finally:
        for s in sidecars:
            s.send_signal(signal.SIGTERM)
        codes = [s.wait(15) for s in sidecars]
    assert codes == [0, 0, 0]
    server.stop()

"""The Node.js and Ruby examples (examples/node, examples/ruby) against a real `serve` process.

Each example registers a signature and a program, watches its target, deploys it to staging and reads
the status; the test checks what it printed against what the Python side sees in the store. One
backend (SQLite): these tests are about the wire and the generated clients, and every store query
they reach runs on both backends in tests/store and tests/api.

Under CI=true a missing `node`, `ruby` or grpc gem fails the test (.ci/run installs them); elsewhere
it skips, saying what to install.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc
from tests.e2e.conftest import ROOT, ServerProcess
from tests.e2e.test_readme import _block, _run_block

IN_CI = os.environ.get("CI", "").lower() in ("true", "1")


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} (CI must run the other-language clients; .ci/run installs them)")
    pytest.skip(what)


def _need_node() -> None:
    if shutil.which("node") is None:
        _missing("node is not installed")
    if not (ROOT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        _missing("node_modules has no @grpc/grpc-js: run `make setup`")


def _need_ruby() -> None:
    _need_node()  # `make clients` checks the protos with proto-loader and builds them with buf
    if shutil.which("ruby") is None or shutil.which("grpc_tools_ruby_protoc") is None:
        _missing("ruby or grpc_tools_ruby_protoc is missing: apt-get install ruby-grpc ruby-grpc-tools")
    gems = subprocess.run(
        ["ruby", "-e", "require 'grpc'; require 'google/rpc/error_details_pb'"],
        capture_output=True,
        text=True,
    )
    if gems.returncode != 0:
        _missing(f"the grpc gem does not load: {gems.stderr.strip()}")


def _make_clients(out: Path) -> str:
    """`make clients`, writing into `out` rather than build/clients (other runs may share the tree)."""
    done = subprocess.run(
        ["make", "--no-print-directory", "clients", f"CLIENTS_OUT={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"make clients failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@dataclass
class Run:
    """What one run of an example printed, and what it says it did."""

    stdout: str
    program: str
    digest: str
    deployment: str
    watched_from: int
    change_revision: int
    change_target: str

    @classmethod
    def parse(cls, stdout: str) -> Run:
        def one(pattern: str) -> re.Match[str]:
            match = re.search(pattern, stdout, flags=re.M)
            assert match, f"no line matching {pattern!r} in:\n{stdout}"
            return match

        registered = one(r"^registered program (\S+)@1\.0\.0 (sha256:[0-9a-f]{64})$")
        change = one(r"^watch change at revision (\d+): (\S+) stable 1\.0\.0 (sha256:[0-9a-f]{64})$")
        assert change.group(3) == registered.group(2), stdout
        return cls(
            stdout=stdout,
            program=registered.group(1),
            digest=registered.group(2),
            deployment=one(r"^created (deployments/\S+): DEPLOYMENT_STATE_SUCCEEDED$").group(1),
            watched_from=int(one(r"^watching \S+ in staging from revision (\d+)$").group(1)),
            change_revision=int(change.group(1)),
            change_target=change.group(2),
        )


def _run_example(
    command: list[str], server: ServerProcess, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["DSPY_REGISTRY_TARGET"] = server.address
    env["DSPY_REGISTRY_TOKEN"] = token if token is not None else server.token_file.read_text().strip()
    env.pop("DSPY_REGISTRY_ENVIRONMENT", None)  # the examples' default: staging
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)


def _check_against_the_store(run: Run, server: ServerProcess, client: str) -> None:
    """What the example printed is what the store holds, read through the Python stubs."""
    assert "rejected as expected: INVALID_ARGUMENT (dspy-registry INVALID_ARGUMENT)" in run.stdout
    assert re.search(r"^  field violation: version: 'one\.two' is not a strict SemVer", run.stdout, re.M)

    with server.channel() as channel:
        registry = pb_grpc.RegistryServiceStub(channel)
        deployments = dpb_grpc.DeploymentServiceStub(channel)
        version = registry.GetProgramVersion(
            pb.GetProgramVersionRequest(name=f"programs/{run.program}/versions/1.0.0")
        ).program_version
        deployment = deployments.GetDeployment(dpb.GetDeploymentRequest(name=run.deployment)).deployment
        status = deployments.GetDeploymentStatus(
            dpb.GetDeploymentStatusRequest(program=run.program, environment="staging")
        )

    assert version.artifact.digest == run.digest
    assert version.labels["client"] == client
    assert version.signature.startswith(f"signatures/sentiment_{client}_")
    assert (deployment.program, deployment.version, deployment.environment) == (
        run.program,
        "1.0.0",
        "staging",
    )
    assert deployment.state == dpb.DEPLOYMENT_STATE_SUCCEEDED
    # The change the example's watch received is the one that put the target where it is now.
    assert run.change_target == status.target.name == f"programs/{run.program}/environments/staging/target"
    assert run.watched_from < run.change_revision == status.target.revision
    assert status.target.stable.version == "1.0.0" and status.target.stable.digest == run.digest
    assert status.current_deployment.name == run.deployment


NODE_EXAMPLE = ["node", str(ROOT / "examples" / "node" / "register_and_deploy.js")]


def test_the_node_example(serve: type[ServerProcess], tmp_path: Path) -> None:
    _need_node()
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()

    done = _run_example(NODE_EXAMPLE, server)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    first = Run.parse(done.stdout)
    _check_against_the_store(first, server, "node")

    # Names are unique per run, so it runs again on the same store.
    again = _run_example(NODE_EXAMPLE, server)
    assert again.returncode == 0, f"exit {again.returncode}\n{again.stdout}\n{again.stderr}"
    assert Run.parse(again.stdout).program != first.program

    refused = _run_example(NODE_EXAMPLE, server, token="dspyr_not_a_token")
    assert refused.returncode == 1, refused.stdout
    assert "UNAUTHENTICATED" in refused.stderr and "dspy-registry" in refused.stderr  # ErrorInfo decoded


def test_make_clients_and_the_ruby_example(serve: type[ServerProcess], tmp_path: Path) -> None:
    _need_ruby()
    out = _make_clients(tmp_path / "clients")
    assert "node: nothing to generate" in out
    stubs = tmp_path / "clients" / "ruby"
    generated = sorted(p.name for p in (stubs / "dspy_registry" / "v1").iterdir())
    assert generated == sorted(
        f"{proto}{suffix}"
        for proto in ("access", "deployment", "registry")
        for suffix in ("_pb.rb", "_services_pb.rb")
    )

    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    ruby_example = ["ruby", "-I", str(stubs), str(ROOT / "examples" / "ruby" / "register_and_deploy.rb")]
    done = _run_example(ruby_example, server)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    _check_against_the_store(Run.parse(done.stdout), server, "ruby")

    refused = _run_example(ruby_example, server, token="dspyr_not_a_token")
    assert refused.returncode == 1, refused.stdout
    assert "Unauthenticated" in refused.stderr and "Google::Rpc::ErrorInfo" in refused.stderr


def test_the_readme_clients_block(serve: type[ServerProcess], tmp_path: Path) -> None:
    """The README's block as written, from the repository root (where the examples find protos/ and
    build/clients), with this server's address and token file in place of the defaults."""
    _need_ruby()
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    block = _block("clients").replace(".dspy-registry/admin.token", str(server.token_file))
    out = _run_block(block, server, ROOT)
    # Each example's output begins with its deliberate bad call.
    node, ruby = ("rejected as expected" + part for part in out.split("rejected as expected")[1:])
    _check_against_the_store(Run.parse(node), server, "node")
    _check_against_the_store(Run.parse(ruby), server, "ruby")

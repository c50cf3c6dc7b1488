"""docs/client-setup.md's commands, run as written (the address aside) against a TLS server with a throwaway
CA: the operator commands and a sidecar configured by nothing but the client config file."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from dspy_registry.client import Registry, Tls
from dspy_registry.server.app import App
from tests import docs
from tests.certificates import Authority, tls_config
from tests.e2e.conftest import ROOT, env_with_tools
from tests.factories import dspy_state, spec_proto

DOC = (ROOT / "docs" / "client-setup.md").read_text()
_block = docs.sh_block


async def test_every_command_block_of_the_page_is_tested() -> None:
    assert len(re.findall(r"```sh\n", DOC)) == len(re.findall(r"<!-- tested: [a-z-]+ -->\n```sh\n", DOC)) == 1


async def test_the_config_file_alone_configures_the_commands_and_the_sidecar(tmp_path: Path) -> None:
    app = App(tls_config(tmp_path, Authority("docs CA")))
    port = await app.start()
    try:
        tls = Tls(ca=tmp_path / "ca.crt")
        async with Registry.connect(
            f"localhost:{port}", token_file=tmp_path / "admin.token", tls=tls
        ) as registry:
            await registry.register_signature("sig", signature=spec_proto(), version="1.0.0")
            await registry.register_program(
                "triage", program=dspy_state(), signature_name="sig", version="1.0.0"
            )
            await registry.create_deployment("triage", "1.0.0", "staging", strategy="replace")
        env = {k: v for k, v in env_with_tools().items() if not k.startswith("DSPY_REGISTRY_")}
        env |= {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / ".config")}
        script = "set -euo pipefail\n" + _block("client-config").replace(
            "localhost:50051", f"localhost:{port}"
        )
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            script,
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    finally:
        await app.stop(grace=0)
    out, err = stdout.decode(), stderr.decode()
    assert process.returncode == 0, f"docs/client-setup.md block failed:\n{out}\n{err}"
    assert "environments/staging" in out
    target = json.loads(out[out.index('{\n  "program"') :])
    assert (target["program"], target["stable"]["version"]) == ("triage", "1.0.0")
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["target"]["stable"]["version"] == "1.0.0"
    logged = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any("watching triage in staging" in line["msg"] and "(TLS)" in line["msg"] for line in logged), err

"""The registration rules through the real `dspy-registry` command line and `serve --config` process:
the credential scan (never echoed, in the output or the server's log), [versioning], the program
semver guard, impossible metrics and re-registration answer as they do over gRPC."""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf import json_format

from tests.e2e.conftest import ServerProcess
from tests.e2e.test_cli import Cli
from tests.factories import dspy_state, spec_proto

OPENAI = "sk-proj-" + "Fake0Key1For2Tests3Only4xYz5"  # never a real key: built for these tests
CONFIG = '[versioning]\nstrategy = "semantic"\nauto_increment = "patch"\nrequire_changelog = true\n'


def test_the_registration_rules_from_the_command_line(serve: type[ServerProcess], tmp_path: Path) -> None:
    (tmp_path / "registry.toml").write_text(CONFIG)
    log = tmp_path / "server.log"
    server = serve(
        f"sqlite:///{tmp_path / 'r.db'}", log, ["--config", str(tmp_path / "registry.toml")]
    ).start()
    cli = Cli(server, tmp_path)
    (tmp_path / "spec.json").write_text(json.dumps(json_format.MessageToDict(spec_proto())))
    narrower = spec_proto(outputs=("positive", "negative"))
    (tmp_path / "spec2.json").write_text(json.dumps(json_format.MessageToDict(narrower)))
    for version, spec in (("1.0.0", "spec.json"), ("2.0.0", "spec2.json")):
        cli.run(
            "signature",
            "register",
            "classify",
            "--file",
            spec,
            "--version",
            version,
            "--metadata",
            f"changelog=v{version}",
        )
    state = json.loads(dspy_state("leaky"))
    state["predict"]["lm"] = {"model": "openai/gpt-4o-mini", "max_tokens": 512, "api_key": OPENAI}
    (tmp_path / "leaky.json").write_text(json.dumps(state))
    (tmp_path / "v1.json").write_bytes(dspy_state("v1"))
    register = ("program", "register", "triage", "--signature", "classify@1.0.0")

    leaky = cli.run(*register, "--file", "leaky.json", "--metadata", "changelog=first", code=1)
    assert leaky.stderr.startswith("error: INVALID_ARGUMENT: ")
    assert "$.predict.lm.api_key: an OpenAI API key" in leaky.stderr
    error = json.loads(
        cli.run(*register, "--file", "leaky.json", "--metadata", "changelog=x", "--json", code=1).stderr
    )
    assert [v["field"] for v in error["error"]["field_violations"]] == ["artifact"]

    unlogged = cli.run(*register, "--file", "v1.json", code=1)
    assert "spec.metadata.changelog" in unlogged.stderr
    first = cli.json(*register, "--file", "v1.json", "--metadata", "changelog=first")
    assert first["version"] == "0.0.1"  # auto_increment = "patch": no version, no change type

    guarded = cli.run(
        "program",
        "register",
        "triage",
        "--signature",
        "classify@2.0.0",
        "--file",
        "v1.json",
        "--version",
        "0.0.2",
        "--metadata",
        "changelog=narrower",
        code=1,
    )
    assert guarded.stderr.startswith("error: FAILED_PRECONDITION: ") and "major bump" in guarded.stderr

    impossible = cli.run(
        *register,
        "--file",
        "v1.json",
        "--version",
        "0.0.2",
        "--metadata",
        "changelog=x",
        "--performance",
        "accuracy=7",
        code=1,
    )
    assert "spec.performance['accuracy']" in impossible.stderr

    again = cli.run(
        *register, "--file", "v1.json", "--version", "0.0.1", "--metadata", "changelog=other", code=1
    )
    assert again.stderr.startswith("error: ALREADY_EXISTS: ") and "spec.metadata" in again.stderr

    everything = leaky.stdout + leaky.stderr + json.dumps(error) + log.read_text()
    assert OPENAI not in everything

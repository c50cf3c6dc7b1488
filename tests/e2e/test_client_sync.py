"""The synchronous client (SyncRegistry) from plain, non-async code against a `dspy-registry serve` process."""

from __future__ import annotations

from pathlib import Path

import pytest

from dspy_registry.client import NotFoundError, SyncRegistry
from dspy_registry.v1 import deployment_pb2 as dpb
from tests.e2e.conftest import ServerProcess
from tests.factories import dspy_state, spec_proto


def test_sync_twin_against_a_server_process(serve: type[ServerProcess], tmp_path: Path) -> None:
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    with SyncRegistry.connect(server.address, token_file=server.token_file) as registry:
        registry.register_signature(name="text_classifier", signature=spec_proto(), version="1.0.0")
        for version in ("1.0.0", "1.1.0"):
            registry.register_program(
                name="sentiment",
                program=dspy_state(f"v{version}"),
                signature_name="text_classifier",
                version=version,
                performance={"accuracy": 0.9},
            )
        registry.register_program(
            "other", program=dspy_state(), signature_name="text_classifier", version="1.0.0"
        )

        assert registry.get_latest_version("sentiment").version == "1.1.0"
        loaded = registry.load_program("sentiment", environment="development")
        assert loaded.version == "1.1.0" and loaded.state["predict"]["signature"]["instructions"] == "v1.1.0"
        assert [p.name for p in registry.list_programs(page_size=1)] == [
            "programs/other",
            "programs/sentiment",
        ]
        assert [v.version for v in registry.list_program_versions("sentiment")] == ["1.1.0", "1.0.0"]

        deployment = registry.create_deployment("sentiment", "1.0.0", "staging", strategy="replace")
        assert deployment.state == dpb.DEPLOYMENT_STATE_SUCCEEDED
        with pytest.raises(NotFoundError):
            registry.get_program("nope")

        stream = registry.watch_targets("sentiment", "staging")
        first = next(stream)
        (target,) = first.snapshot.targets
        assert target.stable.version == "1.0.0"
        stream.close()  # leaving early ends the server stream


def test_a_deprecated_name_warns_at_the_scripts_line(serve: type[ServerProcess], tmp_path: Path) -> None:
    # The async alias runs on the twin's event loop thread: its warning would point there, and a
    # script's reader would not see it (Python shows DeprecationWarning only where __main__ calls).
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    with SyncRegistry.connect(server.address, token_file=server.token_file) as registry:
        registry.register_signature("text_classifier", signature=spec_proto(), version="1.0.0")
        for version in ("1.0.0", "1.1.0"):
            registry.register_program(
                "sentiment",
                program=dspy_state(f"v{version}"),
                signature_name="text_classifier",
                version=version,
            )
        registry.create_deployment("sentiment", "1.0.0", "staging", strategy="replace")
        new_name = r"SyncRegistry\.deploy\(\) is deprecated .* use SyncRegistry\.create_deployment\(\)"
        with pytest.warns(DeprecationWarning, match=new_name) as caught:
            canary = registry.deploy("sentiment", "1.1.0", "staging", "canary", 20, pause=3600)
        assert [w.filename for w in caught] == [__file__]  # once, here
        assert canary.weight_percent == 20
        with pytest.warns(DeprecationWarning, match=r"use SyncRegistry\.rollback_deployment\(\)") as caught:
            rolled = registry.rollback(canary.name, "holding 1.1.0 back")
        assert [w.filename for w in caught] == [__file__]
        assert isinstance(rolled, dpb.RollbackDeploymentResponse) and rolled.rolled_back.name == canary.name
        with pytest.warns(DeprecationWarning, match=r"use SyncRegistry\.watch_targets\(\)"):
            stream = registry.watch("sentiment", "staging")
        assert next(stream).snapshot.targets[0].stable.version == "1.0.0"
        stream.close()


def test_sync_twin_with_dspy_objects(serve: type[ServerProcess], tmp_path: Path) -> None:
    import dspy  # here, not at the top: only this test of the module needs it

    classify = dspy.Signature("text: str -> sentiment: str, confidence: float", "Classify sentiment.")
    predict = dspy.Predict(classify)
    predict.demos = [dspy.Example(text="Love it.", sentiment="positive", confidence=0.8)]
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    with SyncRegistry.connect(server.address, token_file=server.token_file) as registry:
        registry.register_signature(name="text_classifier", signature=classify, version="1.0.0")
        assert [f.name for f in registry.get_signature("text_classifier").spec.output_fields] == [
            "sentiment",
            "confidence",
        ]
        registry.register_program("quick", program=predict, signature_name="text_classifier", version="1.0.0")
        live = registry.load_program(
            "quick", environment="development", module=lambda: dspy.Predict(classify)
        )
    assert live.dump_state() == predict.dump_state()


def test_a_bad_setting_fails_at_connect(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SyncRegistry.connect("127.0.0.1:1", token_file=tmp_path / "missing.token")

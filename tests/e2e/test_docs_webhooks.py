"""docs/webhooks.md, run: its receiver function on real deliveries, and its rotation block as written."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc
from tests.e2e.conftest import ROOT, ServerProcess
from tests.e2e.test_readme import _run_block
from tests.eventually import eventually
from tests.factories import dspy_state, spec_proto
from tests.webhook_receiver import ThreadedReceiver

DOC = (ROOT / "docs" / "webhooks.md").read_text()


def test_every_block_of_docs_webhooks_is_tested() -> None:
    assert re.findall(r"(<!-- tested: [a-z-]+ -->\n)?```sh\n", DOC) == [
        "<!-- tested: webhooks -->\n",  # tests/e2e/test_webhooks.py runs these two
        "<!-- tested: webhooks-cli -->\n",
        "<!-- tested: webhook-rotation -->\n",
    ]
    receivers = [
        code for code in re.findall(r"```python\n(.*?)```", DOC, flags=re.S) if "def event_of" in code
    ]
    assert len(receivers) == 1  # event_of, run below


def _event_of() -> Any:
    (code,) = [c for c in re.findall(r"```python\n(.*?)```", DOC, flags=re.S) if "def event_of" in c]
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/webhooks.md", "exec"), namespace)
    return namespace["event_of"]


@pytest.mark.parametrize(
    "secret", ["whsec_" + base64.b64encode(b"k" * 32).decode(), "chosen-before-this-release"]
)
def test_the_receiver_function_verifies_real_deliveries(
    serve: type[ServerProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    event_of = _event_of()
    monkeypatch.setenv("DSPY_REGISTRY_WEBHOOK_ALLOW", "127.0.0.0/8")
    receiver = ThreadedReceiver(secret).start()
    try:
        server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
        with server.channel() as channel:
            pb_grpc.RegistryServiceStub(channel).RegisterSignature(
                pb.RegisterSignatureRequest(signature="sig", version="1.0.0", spec=spec_proto())
            )
            webhook = dpb.Webhook(url=receiver.receiver.url, secret=secret)
            dpb_grpc.DeploymentServiceStub(channel).CreateWebhook(
                dpb.CreateWebhookRequest(webhook_id="docs", webhook=webhook)
            )
            spec = pb.ProgramVersionSpec(
                program="p", version="1.0.0", signature="signatures/sig/versions/1.0.0"
            )
            pb_grpc.RegistryServiceStub(channel).RegisterProgram(
                pb.RegisterProgramRequest(spec=spec, artifact=dspy_state("v1"))
            )  # auto-deployed to development: three events
        got = receiver.receiver.got
        eventually(lambda: len(got) >= 3, "three deliveries")
        for delivery in got:
            assert event_of(secret, delivery.headers, delivery.body) == json.loads(delivery.body)
            assert (
                event_of("whsec_" + base64.b64encode(b"x" * 32).decode(), delivery.headers, delivery.body)
                is None
            )
            assert event_of(secret, delivery.headers, delivery.body + b" ") is None
    finally:
        receiver.close()


async def test_the_rotation_block(
    serve: type[ServerProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSPY_REGISTRY_WEBHOOK_ALLOW", "127.0.0.0/8")  # the block's receiver is on loopback
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    out = _run_block(
        re.findall(r"<!-- tested: webhook-rotation -->\n```sh\n(.*?)```", DOC, flags=re.S)[0],
        server,
        tmp_path,
    )
    first, second = (tmp_path / "pager.secret").read_text(), (tmp_path / "pager-next.secret").read_text()
    assert first.startswith("whsec_") and second.startswith("whsec_") and first != second
    with server.channel() as channel:
        [webhook] = dpb_grpc.DeploymentServiceStub(channel).ListWebhooks(dpb.ListWebhooksRequest()).webhooks
    [kept] = webhook.secrets  # the newer one: the oldest was retired
    assert kept.name.rsplit("/", 1)[1] in out.splitlines()[-2]  # `webhook list` names it

"""A real server process POSTing to a real HTTP receiver: the receiver goes down for a while, the
server is SIGKILLed and restarted in between, and still every deployment event arrives, signed, once
per delivery id."""

from __future__ import annotations

import base64
import json
import signal
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2

from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc
from tests.e2e.conftest import PROCESSES_TIMEOUT, ServerProcess
from tests.e2e.test_readme import _block, _run_block
from tests.eventually import eventually as _eventually
from tests.factories import dspy_state, spec_proto
from tests.webhook_receiver import ThreadedReceiver

pytestmark = PROCESSES_TIMEOUT

SECRET = "e2e-secret"
REPLACE = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE)


def _register(server: ServerProcess, version: str) -> None:
    with server.channel() as channel:
        spec = pb.ProgramVersionSpec(program="p", version=version, signature="signatures/sig/versions/1.0.0")
        pb_grpc.RegistryServiceStub(channel).RegisterProgram(
            pb.RegisterProgramRequest(spec=spec, artifact=dspy_state(f"v{version}"))
        )  # auto-deploys to development: three events


def _deploy(server: ServerProcess, version: str) -> None:
    with server.channel() as channel:
        dpb_grpc.DeploymentServiceStub(channel).CreateDeployment(
            dpb.CreateDeploymentRequest(program="p", version=version, environment="staging", strategy=REPLACE)
        )  # three events


def _deliveries(server: ServerProcess, *states: dpb.DeliveryState) -> list[dpb.WebhookDelivery]:
    with server.channel() as channel:
        response = dpb_grpc.DeploymentServiceStub(channel).ListWebhookDeliveries(
            dpb.ListWebhookDeliveriesRequest(parent="webhooks/e2e", states=list(states), page_size=1000)
        )
    return list(response.deliveries)


def _event_ids(address: str, token: str, after: int) -> list[str]:
    """Every deployment event after revision `after`, as WatchEvents streams them, until caught up."""
    interval = duration_pb2.Duration()
    interval.FromMilliseconds(100)
    with grpc.insecure_channel(address) as channel:
        stream = dpb_grpc.DeploymentServiceStub(channel).WatchEvents(
            dpb.WatchEventsRequest(start_revision=after, progress_interval=interval),
            metadata=[("authorization", f"Bearer {token}")],
            timeout=30,
        )
        ids = []
        for message in stream:
            if message.HasField("progress"):
                break
            ids += [e.id for e in message.events.events]
        stream.cancel()
    return ids


def test_every_event_arrives_once_across_a_receiver_outage_and_a_server_sigkill(
    serve: type[ServerProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSPY_REGISTRY_WEBHOOK_ALLOW", "127.0.0.0/8")  # the receiver is on loopback
    receiver = ThreadedReceiver(SECRET).start()
    try:
        database = f"sqlite:///{tmp_path / 'r.db'}"
        server = serve(database, tmp_path / "server.log").start()
        with server.channel() as channel:
            pb_grpc.RegistryServiceStub(channel).RegisterSignature(
                pb.RegisterSignatureRequest(signature="sig", version="1.0.0", spec=spec_proto())
            )
            created = (
                dpb_grpc.DeploymentServiceStub(channel)
                .CreateWebhook(
                    dpb.CreateWebhookRequest(
                        webhook_id="e2e", webhook=dpb.Webhook(url=receiver.receiver.url, secret=SECRET)
                    )
                )
                .webhook
            )
        _register(server, "1.0.0")
        _deploy(server, "1.0.0")
        _eventually(lambda: len(receiver.receiver.delivered()) == 6, "the first six deliveries")

        receiver.stop()  # down: connections refused
        _register(server, "1.1.0")
        _deploy(server, "1.1.0")

        def all_failed_once() -> bool:
            pending = _deliveries(server, dpb.DELIVERY_STATE_PENDING)
            return len(pending) == 6 and all(d.attempts >= 1 and d.last_response_code == 0 for d in pending)

        # (Killed mid-attempt, a delivery would wait out its lease, 20 s, before it is tried again.)
        _eventually(all_failed_once, "the six new deliveries failed while the receiver is down")
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        server = serve(database, tmp_path / "server.log").start()  # the same address and database
        _register(server, "1.2.0")
        _deploy(server, "1.2.0")
        time.sleep(1)
        receiver.start()  # back, on the same port

        _eventually(lambda: not _deliveries(server, dpb.DELIVERY_STATE_PENDING), "nothing pending")
        deliveries = _deliveries(server)
        expected = _event_ids(server.address, server.token_file.read_text().strip(), created.revision)
        assert len(expected) == 18  # six for each of three versions
        assert sorted(d.event_id for d in deliveries) == sorted(expected)
        assert all(d.state == dpb.DELIVERY_STATE_SUCCEEDED for d in deliveries)
        assert any(d.attempts > 1 for d in deliveries)  # some were retried

        # Each delivery id arrived with valid signatures (both headers, `standardwebhooks` checking
        # Standard Webhooks'); each event under exactly one delivery id.
        assert all(r.valid and r.standard_valid for r in receiver.receiver.got)
        delivered = receiver.receiver.delivered()
        assert sorted(delivered) == sorted(d.name.rsplit("/", 1)[1] for d in deliveries)
        by_event = Counter(json.loads(r.body)["id"] for r in delivered.values())
        assert sorted(by_event) == sorted(expected) and set(by_event.values()) == {1}
        server.stop(signal.SIGTERM)
    finally:
        receiver.close()


def test_a_secret_rotates_without_a_delivery_failing_verification(
    serve: type[ServerProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Add the new secret, move the receiver to it, retire the old one: every POST verifies throughout,
    with `standardwebhooks`, and once retired the old secret signs nothing."""
    monkeypatch.setenv("DSPY_REGISTRY_WEBHOOK_ALLOW", "127.0.0.0/8")
    receiver = ThreadedReceiver(SECRET).start()
    got = receiver.receiver.got
    try:
        server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
        with server.channel() as channel:
            deployments = dpb_grpc.DeploymentServiceStub(channel)
            pb_grpc.RegistryServiceStub(channel).RegisterSignature(
                pb.RegisterSignatureRequest(signature="sig", version="1.0.0", spec=spec_proto())
            )
            created = deployments.CreateWebhook(
                dpb.CreateWebhookRequest(
                    webhook_id="e2e", webhook=dpb.Webhook(url=receiver.receiver.url, secret=SECRET)
                )
            ).webhook
            [old] = created.secrets

            def phase(version: str, signatures: int) -> None:
                """Three more events, each delivered once and verified by the receiver as it is now."""
                before = len(got)
                _deploy(server, version)
                _eventually(lambda: len(got) >= before + 3, f"the deliveries of {version}")
                assert [
                    (r.status, r.valid, r.standard_valid, r.standard_signatures) for r in got[before:]
                ] == [(200, True, True, signatures)] * 3

            _register(server, "1.0.0")
            _eventually(lambda: len(got) == 3, "the registration's deliveries")
            phase("1.0.0", signatures=1)

            new = "whsec_" + base64.b64encode(b"the new secret, 32 bytes long...").decode()
            added = deployments.AddWebhookSecret(
                dpb.AddWebhookSecretRequest(parent="webhooks/e2e", secret=new)
            )
            assert [s.name for s in added.webhook.secrets] == [old.name, added.secret.name]
            phase("1.0.0", signatures=2)  # the receiver still holds the old secret: it verifies
            receiver.receiver.standard_secret = new
            phase("1.0.0", signatures=2)  # moved to the new one: it verifies

            retired = deployments.RetireWebhookSecret(dpb.RetireWebhookSecretRequest(name=old.name)).webhook
            assert [s.name for s in retired.secrets] == [added.secret.name]
            receiver.receiver.secret = new  # the legacy header is signed with the oldest active secret
            phase("1.0.0", signatures=1)
            # A receiver that had not moved would now refuse every POST: the old secret signs none.
            receiver.receiver.standard_secret = SECRET
            before = len(got)
            _deploy(server, "1.0.0")
            _eventually(lambda: len(got) >= before + 3, "the last deliveries")
            assert not any(r.standard_valid for r in got[before:])

            with pytest.raises(grpc.RpcError) as last:
                deployments.RetireWebhookSecret(dpb.RetireWebhookSecretRequest(name=added.secret.name))
            assert last.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        server.stop(signal.SIGTERM)
    finally:
        receiver.close()


async def test_the_readme_webhooks_block(
    serve: type[ServerProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSPY_REGISTRY_WEBHOOK_ALLOW", "127.0.0.0/8")  # as the block says the server runs
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    out = _run_block(_block("webhooks"), server, tmp_path)
    assert '"name": "webhooks/oncall"' in out and '"totalSize": 1' in out
    assert '"secret":' not in out  # never returned (only the secrets' names)
    assert '"name": "webhooks/oncall/secrets/' in out
    with server.channel() as channel:
        listed = dpb_grpc.DeploymentServiceStub(channel).ListWebhooks(dpb.ListWebhooksRequest())
    [webhook] = listed.webhooks
    assert list(webhook.event_kinds) == [
        dpb.DEPLOYMENT_EVENT_KIND_AUTO_ROLLBACK,
        dpb.DEPLOYMENT_EVENT_KIND_FAILED,
    ]
    assert [(s.program, s.environment) for s in webhook.selectors] == [("*", "production")]


async def test_the_readme_webhooks_cli_block(
    serve: type[ServerProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "DSPY_REGISTRY_WEBHOOK_ALLOW", "127.0.0.0/8"
    )  # as the block above says the server runs
    server = serve(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log").start()
    out = _run_block(_block("webhooks-cli"), server, tmp_path)
    assert "webhooks/pager" in out and "AUTO_ROLLBACK,FAILED" in out and "*/production" in out
    assert len((tmp_path / "pager.secret").read_text().strip()) >= 32
    with server.channel() as channel:
        listed = dpb_grpc.DeploymentServiceStub(channel).ListWebhooks(dpb.ListWebhooksRequest())
    assert not listed.webhooks  # deleted by the block's last line

"""Telemetry on SQLite and Postgres: a span for each RPC made, and each metric fed by what happened."""

from __future__ import annotations

import argparse
import importlib.util
import platform
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from dspy_registry.client.auth import bearer_interceptors
from dspy_registry.server.app import App
from dspy_registry.server.config import Config, add_serve_arguments, from_arguments
from dspy_registry.server.domain.health import STANDARD_BOUNDS_MS
from dspy_registry.server.domain.model import Event
from dspy_registry.server.store.base import Store
from dspy_registry.server.telemetry import OTLP_MISSING, Telemetry
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc
from tests.api.conftest import OPTIONS, Running, register_signature
from tests.eventually import until as _eventually
from tests.factories import dspy_state

PROGRAM = "observed"
REPLACE = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE)
REGISTRY = "/dspy_registry.v1.RegistryService/"
DEPLOYMENT = "/dspy_registry.v1.DeploymentService/"


class Observed:
    """A server whose telemetry goes to in-memory exporters."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.telemetry = Telemetry(self.tracer_provider, self.meter_provider)

    def finished(self, method: str) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name == method]

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        return list(metric.data.data_points)
        return []

    def value(self, name: str, **attributes: object) -> float | None:
        """The value of the `name` point with exactly `attributes` (a count for a histogram)."""
        for point in self.points(name):
            if dict(point.attributes) == attributes:
                return float(point.count if hasattr(point, "count") else point.value)
        return None

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


async def _start(database_url: str, observed: Observed) -> Running:
    """tests/api/conftest.py's start(), with the App given its telemetry."""
    token_file = Path(tempfile.mkdtemp(prefix="dspy-registry-test-")) / "admin.token"
    config = Config(listen="127.0.0.1:0", database=database_url, admin_token_file=str(token_file))
    app = App(config, observed.telemetry)
    port = await app.start()
    target = f"127.0.0.1:{port}"
    token = token_file.read_text().strip()
    channel = grpc.aio.insecure_channel(target, interceptors=bearer_interceptors(token), options=OPTIONS)
    return Running(app, channel, pb_grpc.RegistryServiceStub(channel), target, token)


@pytest.fixture
async def observed(database_url: str) -> AsyncIterator[tuple[Running, Observed]]:
    telemetry = Observed()
    running = await _start(database_url, telemetry)
    yield running, telemetry
    await running.channel.close(None)
    await running.app.stop(grace=0)
    telemetry.shutdown()


def _status_code(span: ReadableSpan) -> object:
    return (span.attributes or {}).get("rpc.grpc.status_code")


def _watch(deploy: dpb_grpc.DeploymentServiceStub) -> Any:
    interval = duration_pb2.Duration()
    interval.FromSeconds(30)
    request = dpb.WatchTargetsRequest(progress_interval=interval)
    request.selectors.add(program=PROGRAM, environment="staging")
    return deploy.WatchTargets(request)


async def test_every_rpc_has_a_span_and_each_metric_follows_what_happened(
    observed: tuple[Running, Observed],
) -> None:
    server, seen = observed
    registry = server.registry
    deploy = dpb_grpc.DeploymentServiceStub(server.channel)

    await register_signature(registry, name="sig")
    await registry.GetSignature(pb.GetSignatureRequest(name="signatures/sig"))
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await registry.GetSignature(pb.GetSignatureRequest(name="signatures/nope"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    await registry.ListSignatures(pb.ListSignaturesRequest())
    for version in ("1.0.0", "1.1.0"):
        await registry.RegisterProgram(
            pb.RegisterProgramRequest(
                spec=pb.ProgramVersionSpec(
                    program=PROGRAM, version=version, signature="signatures/sig/versions/1.0.0"
                ),
                artifact=dspy_state(version),
            )
        )
    await deploy.CreateDeployment(
        dpb.CreateDeploymentRequest(program=PROGRAM, version="1.0.0", environment="staging", strategy=REPLACE)
    )

    # One watcher: the streams count is 1 while it is open, and a change handed to it is timed.
    stream = _watch(deploy)
    first = await stream.read()
    assert first.WhichOneof("kind") == "snapshot"
    assert seen.value("dspy_registry.watch.streams", watch="targets") == 1
    assert seen.value("dspy_registry.watch.streams", watch="events") == 0
    before = seen.value("dspy_registry.watch.fanout.duration", watch="targets") or 0
    second = await deploy.CreateDeployment(
        dpb.CreateDeploymentRequest(program=PROGRAM, version="1.1.0", environment="staging", strategy=REPLACE)
    )
    change = await stream.read()
    assert change.WhichOneof("kind") == "changes"
    assert seen.value("dspy_registry.watch.fanout.duration", watch="targets") == before + 1
    (fanout,) = [
        p for p in seen.points("dspy_registry.watch.fanout.duration") if p.attributes == {"watch": "targets"}
    ]
    assert 0 <= fanout.sum < 1  # seconds: a handful of watchers is handed a change at once

    # A person's rollback: counted as manual; the deployments gauge follows the store.
    await deploy.RollbackDeployment(dpb.RollbackDeploymentRequest(name=second.deployment.name, reason="bad"))
    assert seen.value("dspy_registry.rollbacks", environment="staging", cause="manual") == 1
    assert (
        seen.value("dspy_registry.rollbacks", environment="staging", cause="auto") == 0
    )  # there from the start
    await _eventually(
        lambda: seen.value("dspy_registry.deployments", environment="staging", state="rolled_back") == 1
    )
    # 1.0.0's and the rollback deployment's that brought it back; every other state reads 0.
    assert seen.value("dspy_registry.deployments", environment="staging", state="succeeded") == 2
    assert seen.value("dspy_registry.deployments", environment="staging", state="superseded") == 0
    assert seen.value("dspy_registry.deployments", environment="staging", state="in_progress") == 0

    stream.cancel()
    await _eventually(lambda: seen.value("dspy_registry.watch.streams", watch="targets") == 0)
    await _eventually(lambda: bool(seen.finished(DEPLOYMENT + "WatchTargets")))

    # A span for each RPC made, named by its full method, with its status code.
    made = {
        REGISTRY + "RegisterSignature": 1,
        REGISTRY + "GetSignature": 2,
        REGISTRY + "ListSignatures": 1,
        REGISTRY + "RegisterProgram": 2,
        DEPLOYMENT + "CreateDeployment": 2,
        DEPLOYMENT + "WatchTargets": 1,
        DEPLOYMENT + "RollbackDeployment": 1,
    }
    for method, count in made.items():
        spans = seen.finished(method)
        assert len(spans) == count, method
        for span in spans:
            assert span.kind is SpanKind.SERVER
            assert span.attributes is not None
            service, name = method.lstrip("/").split("/")
            assert (span.attributes["rpc.service"], span.attributes["rpc.method"]) == (service, name)
    codes = {_status_code(s) for s in seen.finished(REGISTRY + "GetSignature")}
    assert codes == {grpc.StatusCode.OK.value[0], grpc.StatusCode.NOT_FOUND.value[0]}
    # NOT_FOUND is the caller's error, not the server's: the span's status stays unset.
    assert all(s.status.status_code is StatusCode.UNSET for s in seen.finished(REGISTRY + "GetSignature"))
    (watched,) = seen.finished(DEPLOYMENT + "WatchTargets")
    assert _status_code(watched) == grpc.StatusCode.CANCELLED.value[0]

    # The latency histogram, by the semantic conventions: a point per method and status, in seconds.
    durations = {
        (p.attributes["rpc.method"], p.attributes["rpc.response.status_code"]): p
        for p in seen.points("rpc.server.call.duration")
    }
    assert durations[(REGISTRY[1:] + "GetSignature", "OK")].count == 1
    assert durations[(REGISTRY[1:] + "GetSignature", "NOT_FOUND")].count == 1
    assert durations[(REGISTRY[1:] + "RegisterProgram", "OK")].count == 2
    assert durations[(DEPLOYMENT[1:] + "WatchTargets", "CANCELLED")].count == 1
    assert {m for m, _ in durations} >= {method.lstrip("/") for method in made}
    assert all(p.attributes["rpc.system.name"] == "grpc" for p in durations.values())
    # NOT_FOUND is the caller's error: no error.type, which marks the server's own failures.
    assert all("error.type" not in p.attributes for p in durations.values())
    assert 0 < durations[(REGISTRY[1:] + "ListSignatures", "OK")].sum < 10  # seconds

    # Every store transaction timed, by kind: the calls above made reads and writes.
    transactions = {
        p.attributes["transaction"]: p for p in seen.points("dspy_registry.store.transaction.duration")
    }
    assert transactions["write"].count >= 5 and transactions["read"].count >= 1


async def test_every_counter_starts_at_zero_and_the_replica_says_what_it_is(
    observed: tuple[Running, Observed],
) -> None:
    server, seen = observed
    # Each seeded environment's counters exist before anything happened, at 0.
    for environment in ("development", "staging", "production"):
        for cause in ("manual", "auto"):
            assert seen.value("dspy_registry.rollbacks", environment=environment, cause=cause) == 0
        for verdict in ("healthy", "unhealthy", "inconclusive"):
            assert (
                seen.value("dspy_registry.analysis.verdicts", environment=environment, verdict=verdict) == 0
            )
        for result in ("ack", "nack"):
            assert seen.value("dspy_registry.sidecar.results", environment=environment, result=result) == 0
        assert seen.value("dspy_registry.deployments.paused", environment=environment) == 0
    for outcome in ("delivered", "retried", "failed"):
        assert seen.value("dspy_registry.webhook.deliveries", outcome=outcome) == 0
    assert seen.value("dspy_registry.store.up", access="read") == 1
    assert seen.value("dspy_registry.store.up", access="write") == 1
    assert seen.value("dspy_registry.leader") == 1
    (build,) = seen.points("dspy_registry.build_info")
    assert build.value == 1 and set(build.attributes) == {"version", "revision", "python"}
    assert build.attributes["python"] == platform.python_version()


async def test_sidecar_results_live_sidecars_and_verdicts_are_counted(
    observed: tuple[Running, Observed],
) -> None:
    server, seen = observed
    deploy = dpb_grpc.DeploymentServiceStub(server.channel)
    await register_signature(server.registry, name="sig")
    registered = await server.registry.RegisterProgram(
        pb.RegisterProgramRequest(
            spec=pb.ProgramVersionSpec(
                program=PROGRAM, version="1.0.0", signature="signatures/sig/versions/1.0.0"
            ),
            artifact=dspy_state("1.0.0"),
        )
    )
    digest = registered.program_version.artifact.digest
    env = dpb.Environment(name="environments/staging")
    env.policy.monitoring_required = True  # analysis then watches a deployment that succeeded
    rules = env.policy.auto_rollback
    rules.enabled = True
    rules.min_requests = 10
    rules.analysis_interval.FromMilliseconds(100)
    rules.monitoring_window.FromSeconds(60)
    await deploy.UpdateEnvironment(
        dpb.UpdateEnvironmentRequest(
            environment=env,
            update_mask=field_mask_pb2.FieldMask(
                paths=["policy.monitoring_required", "policy.auto_rollback"]
            ),
        )
    )
    await deploy.CreateDeployment(
        dpb.CreateDeploymentRequest(program=PROGRAM, version="1.0.0", environment="staging", strategy=REPLACE)
    )

    def report(result: dpb.ApplyResult) -> dpb.ReportSidecarStatusRequest:
        status = dpb.SidecarTargetStatus(
            program=PROGRAM, environment="staging", version="1.0.0", digest=digest, result=result, revision=1
        )
        if result == dpb.APPLY_RESULT_NACK:
            status.error_detail.code = 13
            status.error_detail.message = "cannot load"
        return dpb.ReportSidecarStatusRequest(sidecar_id="pod-0", targets=[status], revision=1)

    # An ACK counts once, however many heartbeats repeat it; a NACK after it counts as one NACK.
    for _ in range(3):
        await deploy.ReportSidecarStatus(report(dpb.APPLY_RESULT_ACK))
    assert seen.value("dspy_registry.sidecar.results", environment="staging", result="ack") == 1

    # The live sidecar shows in the gauge under the version it ACKed (re-read on a timer: a report
    # commits no event); NACKed, it no longer serves that version, and the version reads 0.
    def serving() -> float | None:
        return seen.value("dspy_registry.sidecars", program=PROGRAM, environment="staging", version="1.0.0")

    await _eventually(lambda: serving() == 1)
    await deploy.ReportSidecarStatus(report(dpb.APPLY_RESULT_NACK))
    assert seen.value("dspy_registry.sidecar.results", environment="staging", result="nack") == 1
    assert seen.value("dspy_registry.sidecar.results", environment="staging", result="ack") == 1
    await _eventually(lambda: serving() == 0)

    # Healthy figures for the version just deployed: analysis says so, and it is counted.
    start = datetime.now(UTC)
    measured = dpb.MetricWindow(
        program=PROGRAM, environment="staging", version="1.0.0", request_count=50, error_count=0
    )
    measured.start_time.FromDatetime(start - timedelta(seconds=1))
    measured.end_time.FromDatetime(start)
    measured.latency.counts.extend([50] + [0] * len(STANDARD_BOUNDS_MS))
    measured.latency.sum_ms = 100.0
    reply = await deploy.ReportMetrics(dpb.ReportMetricsRequest(sidecar_id="pod-0", windows=[measured]))
    assert reply.accepted_count == 1
    await _eventually(
        lambda: (
            (seen.value("dspy_registry.analysis.verdicts", environment="staging", verdict="healthy") or 0)
            >= 1
        )
    )
    assert seen.value("dspy_registry.analysis.verdicts", environment="staging", verdict="unhealthy") == 0


async def test_rollbacks_are_counted_by_cause_from_committed_events(store: Store) -> None:
    seen = Observed()
    await seen.telemetry.start(store, {})
    data = {"environment": "production", "state": "ROLLED_BACK"}
    auto = [
        Event(kind="deployment.auto_rollback", resource="deployments/a", data=data, revision=7),
        Event(kind="deployment.rolled_back", resource="deployments/a", data=data, revision=7),
        Event(kind="deployment.created", resource="deployments/b", data=data, revision=7),
    ]
    store.commits.publish(auto)
    store.commits.publish(
        [Event(kind="deployment.rolled_back", resource="deployments/c", data=data, revision=8)]
    )
    store.commits.publish([Event(kind="signature.registered", resource="signatures/s", data={}, revision=9)])
    assert seen.value("dspy_registry.rollbacks", environment="production", cause="auto") == 1
    assert seen.value("dspy_registry.rollbacks", environment="production", cause="manual") == 1
    await seen.telemetry.stop()
    seen.shutdown()


def test_telemetry_is_off_unless_asked_for_and_a_missing_exporter_is_a_clear_error() -> None:
    assert Telemetry.from_config("none", "") is None
    with pytest.raises(ValueError, match="HOST:PORT"):
        Telemetry.from_config("none", "9464")
    with pytest.raises(ValueError, match="telemetry-exporter"):
        Telemetry.from_config("jaeger", "")
    if importlib.util.find_spec("opentelemetry.exporter.otlp") is None:
        with pytest.raises(ValueError) as err:
            Telemetry.from_config("otlp", "")
        assert str(err.value) == OTLP_MISSING and "dspy-registry[otlp]" in str(err.value)
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    config = from_arguments(
        parser.parse_args(["--telemetry-exporter", "console", "--metrics-listen", "127.0.0.1:9464"])
    )
    assert (config.telemetry_exporter, config.metrics_listen) == ("console", "127.0.0.1:9464")
    assert (Config().telemetry_exporter, Config().metrics_listen) == ("none", "")

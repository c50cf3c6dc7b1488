"""The dashboard and the alert rules of deploy/, against promtool and a running server's /metrics.

`promtool check rules` and `promtool test rules` (Debian's `prometheus` package, which .ci/run
installs) on the rules; every panel's query is valid PromQL (checked by promtool as a recording
rule); every metric the panels and the rules query is on the /metrics of a server that did a little
of everything; and a real Prometheus scraping that server answers each panel's query. Under CI=true
a missing promtool fails the test; elsewhere it skips, saying what to install.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml
from google.protobuf import duration_pb2
from prometheus_client.parser import text_string_to_metric_families

from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from dspy_registry.v1 import registry_pb2 as pb
from dspy_registry.v1 import registry_pb2_grpc as pb_grpc
from tests.e2e.conftest import PROCESSES_TIMEOUT, ROOT, ServerProcess, free_port
from tests.e2e.test_readme import _block, _run_block
from tests.eventually import eventually

pytestmark = PROCESSES_TIMEOUT

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yaml"
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")
# Words of PromQL that are not metric names (functions are told apart by the "(" after them).
KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
}


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        what = f"{name} is not installed (apt-get install prometheus)"
        if IN_CI:
            pytest.fail(f"{what}; .ci/run installs it")
        pytest.skip(what)
    return found


def panel_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]


def rule_queries() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [str(rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


def metric_names(query: str) -> set[str]:
    """The metric names a PromQL query selects: what is left once strings, label matchers, ranges,
    grouping clauses, numbers and function names are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", query)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    words = re.findall(r"(?<![\w.$])([a-zA-Z_:][\w:]*)\b(?!\s*\()", text)
    return {w for w in words if w not in KEYWORDS}


def test_the_query_parser_finds_the_metrics_and_nothing_else() -> None:
    query = (
        'histogram_quantile(0.99, sum by (le, watch) (rate(a_seconds_bucket{rpc_method!~".*/Watch.*"}'
        "[$__rate_interval]))) / on (instance) b_total or absent(c) > 0.5 unless ignoring (access) d == 0"
    )
    assert metric_names(query) == {"a_seconds_bucket", "b_total", "c", "d"}
    assert len(panel_queries()) >= 20 and len(rule_queries()) == 8
    assert all(metric_names(q) for q in panel_queries() + rule_queries())  # each selects something


def test_the_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    promtool = _tool("promtool")
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0 and "SUCCESS: 8 rules found" in checked.stdout, (
        checked.stdout + checked.stderr
    )
    tested = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent, capture_output=True, text=True
    )
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    # docs/operations.md's commands, as shown.
    out = _run_block(_block("rules"), None, ROOT)
    assert "SUCCESS: 8 rules found" in out and out.rstrip().endswith("SUCCESS"), out


def test_the_health_routes_example(serve: type[ServerProcess], tmp_path: Path) -> None:
    http, metrics = free_port(), free_port()
    server = serve(
        f"sqlite:///{tmp_path / 'r.db'}",
        tmp_path / "server.log",
        ["--http-listen", f"127.0.0.1:{http}", "--metrics-listen", f"127.0.0.1:{metrics}"],
    ).start()
    block = _block("health").replace("127.0.0.1:8080", f"127.0.0.1:{http}")
    out = _run_block(block.replace("127.0.0.1:9464", f"127.0.0.1:{metrics}"), server, tmp_path)
    assert out.splitlines() == ['{"status": "ok"}'] * 3 + ["404"], out


def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    promtool = _tool("promtool")
    # As recording rules, promtool parses each one; Grafana's $__rate_interval becomes a duration.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": _for_prometheus(q)}
                    for i, q in enumerate(panel_queries())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _for_prometheus(query: str) -> str:
    return query.replace("$__rate_interval", "30s")


def _exercise(server: ServerProcess) -> None:
    """A little of everything the panels show: RPCs, a watch stream handed a change, a deployment, a
    sidecar's ACK."""
    server.register("observed", ["1.0.0"])  # auto-deploys to development
    with server.channel() as channel:
        registry = pb_grpc.RegistryServiceStub(channel)
        deploy = dpb_grpc.DeploymentServiceStub(channel)
        digest = registry.GetProgramVersion(
            pb.GetProgramVersionRequest(name="programs/observed/versions/1.0.0")
        ).program_version.artifact.digest
        interval = duration_pb2.Duration()
        interval.FromSeconds(30)
        request = dpb.WatchTargetsRequest(progress_interval=interval)
        request.selectors.add(program="observed", environment="staging")
        stream = deploy.WatchTargets(request)
        assert next(stream).WhichOneof("kind") == "snapshot"
        deploy.CreateDeployment(
            dpb.CreateDeploymentRequest(
                program="observed",
                version="1.0.0",
                environment="staging",
                strategy=dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE),
            )
        )
        assert next(stream).WhichOneof("kind") == "changes"
        stream.cancel()
        status = dpb.SidecarTargetStatus(
            program="observed",
            environment="staging",
            version="1.0.0",
            digest=digest,
            result=dpb.APPLY_RESULT_ACK,
            revision=1,
        )
        deploy.ReportSidecarStatus(dpb.ReportSidecarStatusRequest(sidecar_id="pod-0", targets=[status]))
        with pytest.raises(grpc.RpcError):
            registry.GetSignature(pb.GetSignatureRequest(name="signatures/missing"))


def _scrape(port: int) -> set[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_every_metric_the_dashboard_and_the_rules_query_is_served(
    serve: type[ServerProcess], tmp_path: Path
) -> None:
    port = free_port()
    server = serve(
        f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log", ["--metrics-listen", f"127.0.0.1:{port}"]
    ).start()
    _exercise(server)
    wanted = set().union(*(metric_names(q) for q in panel_queries() + rule_queries()))
    assert "dspy_registry_sidecars" in wanted and "rpc_server_call_duration_seconds_bucket" in wanted
    # The live sidecars gauge is re-read from the store every few seconds.
    eventually(lambda: wanted <= _scrape(port), f"every one of {sorted(wanted)} on /metrics", seconds=30)


PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: dspy-registry
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


def test_a_real_prometheus_answers_every_panel_query(serve: type[ServerProcess], tmp_path: Path) -> None:
    prometheus, promtool = _tool("prometheus"), _tool("promtool")
    port, web = free_port(), free_port()
    server = serve(
        f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "server.log", ["--metrics-listen", f"127.0.0.1:{port}"]
    ).start()
    _exercise(server)
    config = tmp_path / "prometheus.yml"
    config.write_text(PROMETHEUS_CONFIG.replace("{port}", str(port)))
    with open(tmp_path / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{web}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{web}"

        def answers(query: str) -> str:
            done = subprocess.run(
                [promtool, "query", "instant", url, _for_prometheus(query)], capture_output=True, text=True
            )
            return done.stdout.strip() if done.returncode == 0 else ""

        # Rates need two scrapes of each series, and the sidecars gauge its re-read. The server
        # errors' panel is empty while there are none (error.type is set on a server error only).
        for query in [q for q in panel_queries() if 'error_type!=""' not in q]:
            eventually(lambda q=query: bool(answers(q)), f"an answer to {query}", seconds=60)  # type: ignore[misc]
        (tmp_path / "answers.txt").write_text("\n".join(f"{q}\n  {answers(q)}" for q in panel_queries()))
        # docs/operations.md's example, against this Prometheus.
        out = _run_block(_block("prometheus").replace("127.0.0.1:9090", f"127.0.0.1:{web}"), None, tmp_path)
        assert 'environment="staging", program="observed", version="1.0.0"} => 1 @' in out, out
        assert '{environment="production"} => 0 @' in out, out
    finally:
        process.terminate()
        process.wait(timeout=30)

"""The seed's "REST API Integration" block (shared/seed/registry-and-versions.md), translated one for one:
the seed shows the route handlers of a `RegistryAPI`; here a user calls those routes on a real
`serve --http-listen` process, on SQLite and Postgres, with the standard library's HTTP client.
The other seed blocks are tests/api/test_seed.py."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from dspy_registry.client import SyncRegistry
from tests.e2e.conftest import ServerProcess, free_port
from tests.eventually import eventually
from tests.factories import dspy_state, spec_proto


class Api:
    """The REST routes of one server, called with the bootstrap admin's token."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.token = token

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """(HTTP status, the JSON answer), error statuses included."""
        request = urllib.request.Request(
            self.base + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def get(self, path: str) -> Any:
        status, answer = self.call("GET", path)
        assert status == 200, answer
        return answer

    def post(self, path: str, body: dict[str, Any]) -> Any:
        status, answer = self.call("POST", path, body)
        assert status == 201, answer
        return answer


def populate(server: ServerProcess) -> None:
    """Three programs, two of them the ml_platform team's; sentiment_classifier in two versions."""
    with SyncRegistry.connect(server.address, token_file=server.token_file) as registry:
        registry.register_signature(name="text_classifier", signature=spec_proto(), version="1.0.0")
        for name, version, team, accuracy in (
            ("sentiment_classifier", "2.1.0", "ml_platform", 0.92),
            ("sentiment_classifier", "2.2.0", "ml_platform", 0.94),
            ("content_moderation_filter", "1.0.0", "ml_platform", 0.90),
            ("product_recommendation_engine", "1.0.0", "search", 0.88),
        ):
            registry.register_program(
                name=name,
                program=dspy_state(f"{name} {version}"),
                signature_name="text_classifier",
                version=version,
                labels={"team": team},
                performance={"accuracy": accuracy, "latency_p95_ms": 150},
            )


async def test_rest_api_integration(serve: type[ServerProcess], database_url: str, tmp_path: Path) -> None:
    http = f"127.0.0.1:{free_port()}"
    server = serve(database_url, tmp_path / "server.log", extra_args=["--http-listen", http]).start()
    populate(server)
    api = Api(f"http://{http}", server.token_file.read_text().strip())

    # GET /api/registry/programs: `{ programs:, total: @registry.count_programs(params),
    # page: (params[:offset] || 0) / (params[:limit] || 50) + 1 }`.
    everything = api.get("/api/registry/programs")
    assert [p["name"] for p in everything["programs"]] == [
        "programs/content_moderation_filter",
        "programs/product_recommendation_engine",
        "programs/sentiment_classifier",
    ]
    assert (everything["total"], everything["page"]) == (3, 1)
    # `team: params[:team], limit: params[:limit] || 50, offset: params[:offset] || 0`
    second_page = api.get("/api/registry/programs?team=ml_platform&limit=1&offset=1")
    assert [(p["name"], p["latest_version"]) for p in second_page["programs"]] == [
        ("programs/sentiment_classifier", "2.2.0")
    ]
    assert (second_page["total"], second_page["page"]) == (2, 2)  # total counts the filter, not the page
    # `environment: params[:environment]`: registration auto-deploys to development, nothing is in staging.
    assert api.get("/api/registry/programs?environment=development")["total"] == 3
    assert api.get("/api/registry/programs?environment=staging") == api.get(
        "/api/registry/programs?environment=staging&limit=50&offset=0"
    )
    assert api.get("/api/registry/programs?environment=staging")["programs"] == []

    # GET /api/registry/programs/:name: `{ name:, version:, signature:, performance:, deployments:,
    # versions: }` for `load_program(name, version: version)`: the latest when no version is given.
    program = api.get("/api/registry/programs/sentiment_classifier")
    assert (program["name"], program["version"]) == ("sentiment_classifier", "2.2.0")
    assert program["signature"] == "signatures/text_classifier/versions/1.0.0"
    assert program["performance"] == {"accuracy": 0.94, "latency_p95_ms": 150}
    assert [v["version"] for v in program["versions"]] == ["2.2.0", "2.1.0"]
    assert [(d["environment"], d["version"]) for d in program["deployments"]] == [
        ("development", "2.2.0"),
        ("development", "2.1.0"),
    ]
    older = api.get("/api/registry/programs/sentiment_classifier?version=2.1.0")
    assert (older["version"], older["performance"]["accuracy"]) == ("2.1.0", 0.92)

    # POST /api/registry/programs/:name/deploy: `{ deployment_id:, status: 'initiated',
    # monitor_url: "/api/registry/deployments/#{deployment_id}/status" }`.
    first = api.post(
        "/api/registry/programs/sentiment_classifier/deploy",
        {"version": "2.1.0", "environment": "staging", "strategy": "replace"},
    )
    assert first["status"] == "initiated"
    assert first["monitor_url"] == f"/api/registry/deployments/{first['deployment_id']}/status"
    assert api.get(first["monitor_url"])["status"] == "succeeded"
    # `strategy: params[:strategy], canary_percent: params[:canary_percent]`
    canary = api.post(
        "/api/registry/programs/sentiment_classifier/deploy",
        {"version": "2.2.0", "environment": "staging", "strategy": "canary", "canary_percent": 10},
    )
    assert canary["status"] == "initiated" and canary["deployment_id"] != first["deployment_id"]
    assert canary["deployment"]["strategy"]["canary"]["steps"][0]["weight_percent"] == 10
    # The monitor URL is what a caller polls: the canary step passes (staging is not monitored), then
    # the controller promotes it.
    eventually(lambda: api.get(canary["monitor_url"])["status"] == "succeeded", "the canary succeeded")
    assert api.get(canary["monitor_url"])["version"] == "2.2.0"
    assert api.get("/api/registry/programs?environment=staging")["total"] == 1

    # POST /api/registry/deployments/:id/rollback: `{ rollback_deployment_id:, status: 'initiated',
    # reason: }`.
    reason = "Accuracy dropped by 0.14 (threshold: 0.1)"
    rollback = api.post(f"/api/registry/deployments/{canary['deployment_id']}/rollback", {"reason": reason})
    assert (rollback["status"], rollback["reason"]) == ("initiated", reason)
    assert rollback["rollback_deployment_id"] not in (canary["deployment_id"], first["deployment_id"])
    after = api.get(f"/api/registry/deployments/{rollback['rollback_deployment_id']}/status")
    assert (after["status"], after["version"]) == ("succeeded", "2.1.0")
    assert api.get(canary["monitor_url"])["status"] == "rolled_back"
    assert api.get("/api/registry/programs/sentiment_classifier?environment=staging")["version"] == "2.1.0"

    # A failure answers in one JSON shape: the deployment rolled back cannot be rolled back again.
    status, refused = api.call(
        "POST", f"/api/registry/deployments/{canary['deployment_id']}/rollback", {"reason": "again"}
    )
    assert (status, refused["error"]["code"]) == (409, "FAILED_PRECONDITION")
    assert "Traceback" not in server.log(), server.log()[-4000:]

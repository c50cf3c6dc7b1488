"""The dashboard in a real browser: Debian's chromium driven by Playwright, against a server on port 0
with its REST routes, on SQLite. One browser for the module, a fresh server and page per test; each
test saves a screenshot in its tmp_path.

Waits are Playwright's `expect`, which retries until the page shows what is asked (or fails after
EXPECT_MS): the page changes when the server's events reach it, never on a timer of the test's.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from playwright.async_api import Browser, Page, async_playwright, expect

from dspy_registry.client import Registry
from dspy_registry.server.domain.health import STANDARD_BOUNDS_MS
from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import access_pb2_grpc as apb_grpc
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import registry_pb2 as pb
from tests.api.conftest import Running, register_signature, start
from tests.calls import canary_strategy, principal_token
from tests.factories import dspy_state

EXPECT_MS = 15_000
MIN_REQUESTS = 20
expect.set_options(timeout=EXPECT_MS)
HOSTILE = '<script>window.injected = 1</script><img src="x" onerror="window.injected = 2">'


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        yield launched
        await launched.close()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Running]:
    running = await start(f"sqlite:///{tmp_path / 'registry.db'}", http_listen="127.0.0.1:0")
    await register_signature(running.registry, name="sig")
    yield running
    await running.channel.close(None)
    await running.app.stop(grace=0)


@pytest.fixture
async def page(browser: Browser, server: Running, tmp_path: Path) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(EXPECT_MS)
    opened = await context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    # The policy refusing anything of the page's own (an inline style, a script) shows as a console error.
    opened.on(
        "console",
        lambda message: errors.append(message.text) if "Content Security Policy" in message.text else None,
    )
    yield opened
    await opened.screenshot(path=tmp_path / "last.png", full_page=True)
    await context.close()
    assert not errors, errors  # no script error, nothing refused, on any page the test went through


def _base(server: Running) -> str:
    return f"http://127.0.0.1:{server.app.http_port}"


async def _register(
    server: Running,
    program: str,
    version: str,
    accuracy: float,
    *,
    labels: dict[str, str] | None = None,
    changelog: str = "",
    contact: str = "",
) -> None:
    metadata = struct_pb2.Struct()
    if changelog:
        metadata.update({"changelog": changelog})
    if contact:
        metadata.update({"contact": contact})
    spec = pb.ProgramVersionSpec(
        program=program,
        version=version,
        signature="signatures/sig/versions/1.0.0",
        performance={"accuracy": accuracy},
        labels=labels or {},
        metadata=metadata,
    )
    await server.registry.RegisterProgram(
        pb.RegisterProgramRequest(spec=spec, artifact=dspy_state(f"{program} {version}"))
    )


async def _deploy(
    server: Running, program: str, version: str, environment: str, strategy: dpb.DeploymentStrategy
) -> dpb.Deployment:
    reply = await server.deployments.CreateDeployment(
        dpb.CreateDeploymentRequest(
            program=program, version=version, environment=environment, strategy=strategy
        )
    )
    deployment: dpb.Deployment = reply.deployment
    return deployment


async def _sign_in(page: Page, server: Running, token: str, who: str) -> None:
    await page.goto(_base(server) + "/")
    await page.fill("#token", token)
    await page.click("#sign-in button[type=submit]")
    await expect(page.locator("#who")).to_have_text(who)


async def test_sign_in_find_a_program_open_a_version_and_compare_it(
    page: Page, server: Running, tmp_path: Path
) -> None:
    await _register(server, "sentiment", "1.0.0", 0.90, labels={"team": "nlp"}, changelog="First cut.")
    await _register(server, "sentiment", "1.10.0", 0.95, labels={"team": "nlp"}, changelog="Better demos.")
    await _register(server, "sentiment", "1.2.0", 0.91, labels={"team": "nlp"}, changelog="Tuned.")
    await _register(server, "summarizer", "0.1.0", 0.80, labels={"team": "docs"})
    await server.registry.YankProgramVersion(
        pb.YankProgramVersionRequest(name="programs/sentiment/versions/1.2.0", reason="leaks PII")
    )
    await page.goto(_base(server) + "/")
    await page.fill("#token", "not-a-token")
    await page.click("#sign-in button[type=submit]")
    await expect(page.locator(".notice.error")).to_contain_text("Not signed in")
    await _sign_in(page, server, server.admin_token, "admin")
    assert server.admin_token not in page.url
    cookies = await page.context.cookies()
    assert cookies == []  # the token is never a cookie

    await expect(page.locator("#programs tbody tr")).to_have_count(2)
    await page.fill("#search input[name=label]", "team=nlp")
    await page.click("#search button")
    await expect(page.locator("#programs tbody tr")).to_have_count(1)
    await page.fill("#search input[name=label]", "")
    await page.fill("#search input[name=q]", "sent")
    await page.click("#search button")
    await expect(page.locator("#programs tbody tr")).to_have_count(1)
    await page.click("#programs >> text=sentiment")

    # SemVer order (1.10.0 above 1.2.0, which a string sort would invert), the yanked one marked.
    rows = page.locator("#versions tbody tr")
    await expect(rows).to_have_count(3)
    await expect(rows.locator("td:first-child")).to_have_text(["1.10.0", "1.2.0", "1.0.0"])
    await expect(rows.nth(1).locator(".yanked")).to_have_text("yanked")
    development = page.locator("#environments tbody tr").nth(0).locator("td")
    await expect(development.nth(0)).to_have_text("development")
    await expect(development.nth(1)).to_have_text("1.2.0")  # the last registered auto-deploys there
    await expect(development.nth(4).locator("a")).to_have_count(1)  # its deployment
    await page.screenshot(path=tmp_path / "program.png", full_page=True)

    await rows.nth(0).locator("a").click()
    await expect(page.locator("h1")).to_have_text("sentiment 1.10.0")
    await expect(page.locator("#changelog")).to_have_text("Better demos.")
    await expect(page.locator("#performance")).to_contain_text("0.950")
    await expect(page.locator("#fields tbody tr")).to_have_count(3)
    await expect(page.locator("#fields tbody tr").nth(0).locator("td")).to_have_text(
        ["input", "text", "string", ""]
    )
    await expect(page.locator("#fields")).to_contain_text("enum(")
    await expect(page.locator("#fields")).to_contain_text("float")
    await expect(page.locator("#digest")).to_have_text(
        (
            await server.registry.GetProgramVersion(
                pb.GetProgramVersionRequest(name="programs/sentiment/versions/1.10.0")
            )
        ).program_version.artifact.digest
    )
    await page.screenshot(path=tmp_path / "version.png", full_page=True)

    await page.go_back()
    await page.select_option("#compare-base", "1.0.0")
    await page.select_option("#compare-target", "1.10.0")
    await page.click("#compare button")
    await expect(page.locator("#recommendation")).to_have_text("Recommendation: upgrade")
    await expect(page.locator("#metric-deltas tbody tr")).to_have_count(1)
    await expect(page.locator("#metric-deltas")).to_contain_text("+0.050")
    await expect(page.locator("#compatibility")).to_contain_text("identical")
    await page.screenshot(path=tmp_path / "compare.png", full_page=True)


async def _monitored_staging(server: Running) -> None:
    """Staging watched closely: thresholds judged every 200 ms, over a minute of reports (all this
    test sends, so that each reading of the status adds up what came before)."""
    env = dpb.Environment(name="environments/staging")
    env.policy.monitoring_required = True
    rules = env.policy.auto_rollback
    rules.enabled = True
    rules.min_requests = MIN_REQUESTS
    rules.analysis_interval.FromMilliseconds(200)
    rules.monitoring_window.FromSeconds(60)
    await server.deployments.UpdateEnvironment(
        dpb.UpdateEnvironmentRequest(
            environment=env,
            update_mask=field_mask_pb2.FieldMask(
                paths=["policy.monitoring_required", "policy.auto_rollback"]
            ),
        )
    )


def _window(version: str, requests: int, errors: int = 0, took_ms: float = 8.0) -> dpb.MetricWindow:
    """`requests` of `version`, each answered in `took_ms`."""
    start = datetime.now(UTC)
    out = dpb.MetricWindow(
        program="triage",
        environment="staging",
        version=version,
        request_count=requests,
        error_count=errors,
    )
    out.start_time.FromDatetime(start)
    out.end_time.FromDatetime(start + timedelta(seconds=1))
    counts = [0] * (len(STANDARD_BOUNDS_MS) + 1)
    counts[next(i for i, bound in enumerate(STANDARD_BOUNDS_MS) if took_ms <= bound)] = requests
    out.latency.counts.extend(counts)
    out.latency.sum_ms = requests * took_ms
    return out


async def _applied(server: Running, version: str) -> dpb.SidecarTargetStatus:
    found = await server.registry.GetProgramVersion(
        pb.GetProgramVersionRequest(name=f"programs/triage/versions/{version}")
    )
    return dpb.SidecarTargetStatus(
        program="triage",
        environment="staging",
        version=version,
        digest=found.program_version.artifact.digest,
        result=dpb.APPLY_RESULT_ACK,
    )


async def test_a_canary_is_followed_live_until_it_rolls_back_by_itself(
    page: Page, server: Running, tmp_path: Path
) -> None:
    await _register(server, "triage", "1.0.0", 0.90)
    await _register(server, "triage", "1.1.0", 0.92)
    await _monitored_staging(server)
    await _deploy(server, "triage", "1.0.0", "staging", dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE))
    canary = await _deploy(server, "triage", "1.1.0", "staging", canary_strategy((20, 60)))
    await _sign_in(page, server, server.admin_token, "admin")
    await page.goto(f"{_base(server)}/#/deployments/{canary.name.split('/')[-1]}")
    await expect(page.locator("#live-state")).to_have_text("live")
    await expect(page.locator("#state")).to_have_text("in progress")
    await expect(page.locator("#weight")).to_have_text("20 %")
    await page.evaluate("window.notReloaded = true")

    # Two simulated pods, through the Python client: what each applied, then healthy numbers.
    async with Registry.connect(server.target, token=server.admin_token) as pods:
        await pods.report_sidecar_status("pod-0", targets=[await _applied(server, "1.0.0")])
        await pods.report_sidecar_status("pod-1", targets=[await _applied(server, "1.1.0")])
        await expect(page.locator("#fleet tbody tr")).to_have_count(2)
        await expect(page.locator("#fleet")).to_contain_text("ACK")
        candidate = page.locator("#health tbody tr", has_text="candidate").locator("td")
        # Two rounds of healthy numbers, each seen by the page before the next: points on the charts.
        for round_, (errors, took_ms) in enumerate(((0, 8.0), (1, 40.0)), start=1):
            await pods.report_metrics("pod-0", windows=[_window("1.0.0", 80)])
            await pods.report_metrics("pod-1", windows=[_window("1.1.0", MIN_REQUESTS, errors, took_ms)])
            await expect(candidate.nth(2)).to_have_text(str(MIN_REQUESTS * round_))
        await expect(page.locator("#verdict")).to_have_text("Verdict: healthy")
        await expect(candidate.nth(3)).to_have_text("2.5 %")  # 1 error in 40 requests
        await expect(page.locator("[data-chart=error_rate] .u-legend")).to_contain_text("threshold")
        await page.screenshot(path=tmp_path / "canary-healthy.png", full_page=True)

        # A regression: 9 errors in 60 requests on the canary. The analysis rolls it back; the page shows it.
        await pods.report_metrics("pod-1", windows=[_window("1.1.0", MIN_REQUESTS, errors=8, took_ms=90.0)])
        await expect(page.locator("#state")).to_have_text("rolled back")
        await expect(page.locator("#timeline")).to_contain_text("auto rollback")
        await expect(page.locator("#timeline")).to_contain_text("Auto-rollback: Error rate")
    assert await page.evaluate("window.notReloaded") is True
    # Each reading of the status is a point of the charts: several by now, one per version drawn.
    points = await page.evaluate(
        "document.querySelectorAll('[data-chart=error_rate] .u-legend .u-series').length"
    )
    assert points >= 3  # the time axis, 1.0.0, 1.1.0 (and the threshold)
    await page.screenshot(path=tmp_path / "canary-rolled-back.png", full_page=True)
    if os.environ.get("DSPY_REGISTRY_DOCS_SCREENSHOT"):  # how docs/img/dashboard-canary.png is made
        await page.screenshot(path=os.environ["DSPY_REGISTRY_DOCS_SCREENSHOT"], full_page=True)


async def _pending_approval(server: Running) -> dpb.Deployment:
    """ranker 1.0.0 through staging, then waiting for production's one approval."""
    await _register(server, "ranker", "1.0.0", 0.9)
    replace = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE)
    staged = await _deploy(server, "ranker", "1.0.0", "staging", replace)
    assert staged.state == dpb.DEPLOYMENT_STATE_SUCCEEDED
    pending = await _deploy(server, "ranker", "1.0.0", "production", replace)
    assert pending.state == dpb.DEPLOYMENT_STATE_PENDING_APPROVAL
    return pending


async def test_an_approver_approves_after_a_confirmation_naming_the_deployment(
    page: Page, server: Running, tmp_path: Path
) -> None:
    pending = await _pending_approval(server)
    deployment_id = pending.name.split("/")[-1]
    token = await principal_token(
        apb_grpc.AccessServiceStub(server.channel),
        "alice",
        [(apb.ACTION_READ, "ranker"), (apb.ACTION_APPROVE, "ranker")],
    )
    await _sign_in(page, server, token, "alice")
    await expect(page.locator("#nav-audit")).to_be_hidden()  # no admin: no audit log offered
    await page.goto(f"{_base(server)}/#/deployments/{deployment_id}")
    await expect(page.locator("#state")).to_have_text("pending approval")
    # Approve and reject only: alice may not deploy or roll back.
    await expect(page.locator("#actions button")).to_have_text(["approve", "reject"])
    await page.click("#actions button[data-action=approve]")
    await expect(page.locator("#confirm-text")).to_have_text(
        f"This will approve deployment {deployment_id}: ranker 1.0.0 in production."
    )
    await page.fill("#confirm-reason", "looks good")
    await page.screenshot(path=tmp_path / "confirm.png", full_page=True)
    await page.click("#confirm-ok")
    await expect(page.locator("#state")).not_to_have_text("pending approval")
    await expect(page.locator("#approvals")).to_contain_text("alice")
    await expect(page.locator("#approvals")).to_contain_text("looks good")
    got = await server.deployments.GetDeployment(dpb.GetDeploymentRequest(name=pending.name))
    assert [(a.principal, a.comment) for a in got.deployment.approvals] == [
        ("principals/alice", "looks good")
    ]

    # The admin finds it in the audit log, filtered by principal and action.
    await page.evaluate("sessionStorage.clear()")
    await page.context.clear_cookies()
    await page.reload()
    await _sign_in(page, server, server.admin_token, "admin")
    await page.goto(f"{_base(server)}/#/audit?principal=alice&action=ApproveDeployment")
    await expect(page.locator("#audit tbody tr")).to_have_count(1)
    await expect(page.locator("#audit")).to_contain_text("ApproveDeployment")
    await page.screenshot(path=tmp_path / "audit.png", full_page=True)


async def test_a_reader_sees_no_action_buttons_and_a_forged_call_is_refused(
    page: Page, server: Running, tmp_path: Path
) -> None:
    pending = await _pending_approval(server)
    deployment_id = pending.name.split("/")[-1]
    token = await principal_token(
        apb_grpc.AccessServiceStub(server.channel), "rita", [(apb.ACTION_READ, "*")]
    )
    await _sign_in(page, server, token, "rita")
    await page.goto(f"{_base(server)}/#/deployments/{deployment_id}")
    await expect(page.locator("#state")).to_have_text("pending approval")
    await expect(page.locator("#timeline tbody tr")).not_to_have_count(0)
    await expect(page.locator("#actions button")).to_have_count(0)
    await page.screenshot(path=tmp_path / "reader.png", full_page=True)
    # What a forged button would send: refused by the RPC's own check, and nothing changes.
    status = await page.evaluate(
        """async (id) => {
            const token = sessionStorage.getItem("dspy-registry-token");
            const r = await fetch(`/api/dashboard/deployments/${id}/approve`, {
                method: "POST",
                headers: {Authorization: `Bearer ${token}`, "Content-Type": "application/json"},
                body: JSON.stringify({reason: "forged"}),
            });
            return [r.status, (await r.json()).error.code];
        }""",
        deployment_id,
    )
    assert status == [403, "PERMISSION_DENIED"]
    got = await server.deployments.GetDeployment(dpb.GetDeploymentRequest(name=pending.name))
    assert got.deployment.state == dpb.DEPLOYMENT_STATE_PENDING_APPROVAL and not got.deployment.approvals
    # And the audit log is not the reader's either.
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{_base(server)}/api/dashboard/audit", headers={"Authorization": f"Bearer {token}"}
        ) as answer:
            assert answer.status == 403


async def test_a_value_holding_a_script_renders_as_text_under_a_strict_policy(
    page: Page, server: Running, tmp_path: Path
) -> None:
    await _register(server, "hostile", "1.0.0", 0.9, changelog=HOSTILE, contact=HOSTILE)
    async with aiohttp.ClientSession() as session:
        async with session.get(_base(server) + "/") as answer:
            policy = answer.headers["Content-Security-Policy"]
            assert "script-src 'self'" in policy and "unsafe-inline" not in policy
            assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
            assert answer.headers["X-Content-Type-Options"] == "nosniff"
    await _sign_in(page, server, server.admin_token, "admin")
    await page.goto(f"{_base(server)}/#/programs/hostile/versions/1.0.0")
    await expect(page.locator("#changelog")).to_have_text(HOSTILE)
    await expect(page.locator("#metadata")).to_contain_text('"contact": "<script>window.injected = 1')
    await expect(page.locator("main script, main img")).to_have_count(0)
    assert await page.evaluate("window.injected") is None
    await page.screenshot(path=tmp_path / "hostile.png", full_page=True)


async def test_an_admin_promotes_a_canary_then_rolls_it_back(
    page: Page, server: Running, tmp_path: Path
) -> None:
    await _register(server, "router", "1.0.0", 0.9)
    await _register(server, "router", "1.1.0", 0.92)
    replace = dpb.DeploymentStrategy(strategy=dpb.STRATEGY_REPLACE)
    await _deploy(server, "router", "1.0.0", "staging", replace)
    canary = await _deploy(server, "router", "1.1.0", "staging", canary_strategy((20, 600), (50, 600)))
    deployment_id = canary.name.split("/")[-1]
    await _sign_in(page, server, server.admin_token, "admin")
    await page.goto(f"{_base(server)}/#/deployments/{deployment_id}")
    await expect(page.locator("#weight")).to_have_text("20 %")
    await expect(page.locator("#actions button")).to_have_text(["promote", "abort", "rollback"])

    await page.click("#actions button[data-action=promote]")
    await expect(page.locator("#confirm-text")).to_have_text(
        f"This will promote to the next step deployment {deployment_id}: router 1.1.0 in staging."
    )
    await page.click("#confirm-cancel")  # cancelled: nothing is sent
    assert (
        await server.deployments.GetDeployment(dpb.GetDeploymentRequest(name=canary.name))
    ).deployment.weight_percent == 20
    await page.click("#actions button[data-action=promote]")
    await page.click("#confirm-ok")
    await expect(page.locator("#weight")).to_have_text("50 %")
    await expect(page.locator("#step")).to_have_text("2 of 2")

    await page.click("#actions button[data-action=rollback]")
    await page.fill("#confirm-reason", "seen enough")
    await page.click("#confirm-ok")
    await expect(page.locator("#state")).to_have_text("rolled back")
    await expect(page.locator("#timeline")).to_contain_text("seen enough")
    await expect(page.locator("#actions button")).to_have_count(0)
    await page.screenshot(path=tmp_path / "rolled-back.png", full_page=True)

"""`python -m demo` (`make demo`): the registry's whole story in well under a minute, on a throwaway store.

It starts `dspy-registry serve` on a free port with a SQLite file in a
temporary directory, registers DSPy.rb's ClassifyText signature and two
versions of a sentiment program (demo/program.py: a classifier that runs on
its DSPy saved state, no language model), puts 1.0.0 in production, starts
three serving pods (demo/pod.py, each embedding ProgramWatcher and answering
labelled traffic), takes 1.1.0 through a production canary to 100 %, then
sends a broken 1.2.0 out as a canary and shows the registry roll it back by
itself. Each step prints what happened and the evidence (the real CLI's
`status` and `history` tables, deployments' timelines, the pods' own logs),
and checks it: a step that did not happen ends the demo with exit code 1 and
the reason. Every wait has a deadline. The processes it started are stopped
on any exit (Ctrl-C included); the directory is removed, unless a step
failed (its logs tell why) or `--keep` asks to keep it.

The server also serves the web dashboard (`--http-listen`): its address is
printed at the start, to watch the story in a browser as it runs (sign in with
the admin token). With `--keep` the server stays up after the last step, until
Ctrl-C, so that the dashboard can be looked at.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.table import Table

from dspy_registry.client.cli import Output, add_operator_commands, state_name, verdict_name
from dspy_registry.client.errors import RegistryError
from dspy_registry.client.sync import SyncRegistry
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import registry_pb2 as rpb

from .program import (
    CLASSIFY_TEXT,
    DEV,
    PROGRAM,
    SIGNATURE,
    TRAFFIC,
    TRAIN,
    SentimentProgram,
    accuracy,
    saved_state,
    swapped,
)

ROOT = Path(__file__).resolve().parent.parent
PODS = 3
# Production's analysis on a demo's time scale: the defaults (10 s analysis, 300 s window, 100 requests)
# are for real traffic. Pods report every 0.5 s at 100 requests a second each.
ANALYSIS_INTERVAL = "0.5s"
MONITORING_WINDOW = "60s"
MIN_REQUESTS = 50
POD_RATE = 100.0
T = TypeVar("T")


class DemoFailed(Exception):
    """A step that did not happen; the message says which and what was seen instead."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(check: Callable[[], T | None], seconds: float, what: str, seen: Callable[[], str]) -> T:
    """Polls `check` until it returns something truthy; DemoFailed naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise DemoFailed(f"{what} did not happen within {seconds:g} s; {seen()}")
        time.sleep(0.1)


class Processes:
    """The child processes: each stopped (SIGTERM, then SIGKILL) when the demo ends, however it ends."""

    def __init__(self) -> None:
        self.running: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            process = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.running.append((name, process, log))
        return process

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 10) -> int:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise DemoFailed(f"process {process.pid} did not stop within {timeout:g} s of SIGTERM") from None

    def check_alive(self) -> None:
        for name, process, log in self.running:
            if process.poll() is not None:
                raise DemoFailed(f"{name} exited with code {process.returncode}:\n{tail(log)}")

    def close(self) -> None:
        for _, process, _ in reversed(self.running):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process, _ in reversed(self.running):
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except OSError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


class Story:
    """Prints the walkthrough: numbered steps, what happened, and the evidence."""

    def __init__(self) -> None:
        self.console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
        self.started = time.monotonic()
        self.steps = 0
        self.parser = argparse.ArgumentParser(prog="dspy-registry")
        add_operator_commands(self.parser, self.parser.add_subparsers(dest="command", required=True))

    def step(self, title: str) -> None:
        self.steps += 1
        elapsed = time.monotonic() - self.started
        self.console.print()
        self.console.rule(
            f"[bold]Step {self.steps}. {title}[/bold]  [dim](t+{elapsed:.1f}s)[/dim]", align="left"
        )

    def say(self, text: str) -> None:
        self.console.print(text)

    def ok(self, text: str) -> None:
        self.console.print(f"[green]✓[/green] {text}")

    def cli(self, registry: SyncRegistry, *argv: str, quiet: bool = False) -> None:
        """Runs an operator command of `dspy-registry` in this process (the same code the console script
        runs, without a second interpreter's start-up) and shows it as typed; `quiet` leaves its answer
        out where the story shows what changed more briefly."""
        self.console.print(f"[bold cyan]$ dspy-registry {' '.join(argv)}[/bold cyan]")
        args = self.parser.parse_args(argv)
        out = Output(as_json=False)
        out.console = Console(file=io.StringIO()) if quiet else self.console  # the story's width
        if args.operator(registry, args, out) != 0:
            raise DemoFailed(f"`dspy-registry {' '.join(argv)}` failed")


# -- the steps


def start_server(story: Story, processes: Processes, tmp: Path) -> tuple[str, Path, str]:
    story.step("Start a registry on a throwaway store")
    address = f"127.0.0.1:{free_port()}"
    dashboard = f"http://127.0.0.1:{free_port()}/"
    token_file = tmp / "admin.token"
    serve = Path(sys.executable).parent / "dspy-registry"
    command = [str(serve)] if serve.exists() else [sys.executable, "-m", "dspy_registry.cli"]
    args = ["serve", "--listen", address, "--database", f"sqlite:///{tmp / 'registry.db'}"]
    args += ["--admin-token-file", str(token_file), "--grace", "2"]
    args += ["--http-listen", dashboard.removeprefix("http://").rstrip("/")]
    # Warnings only (an auto-rollback is one): the log is what a failed run prints the end of.
    args += ["--log-level", "warning", "--log-format", "text"]
    server = processes.start("the server", command + args, tmp / "server.log")
    story.console.print(f"[bold cyan]$ dspy-registry {' '.join(args)}[/bold cyan]")

    def serving() -> bool:
        processes.check_alive()
        with grpc.insecure_channel(address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    wait_until(serving, 30, "the server answering SERVING", lambda: tail(tmp / "server.log"))
    story.ok(f"serving on {address} (pid {server.pid}); health says SERVING")
    story.ok(f"the first start of an empty store made the `admin` principal; its token is in {token_file}")
    check_dashboard(dashboard)
    story.ok(f"the dashboard is at {dashboard} (sign in with the token in {token_file})")
    story.say(
        "[dim]To follow along in another terminal while it runs:[/dim]\n"
        f"  export DSPY_REGISTRY_TARGET={address} DSPY_REGISTRY_TOKEN_FILE={token_file}"
    )
    return address, token_file, dashboard


def check_dashboard(url: str) -> None:
    """That the dashboard's page answers, under its Content-Security-Policy."""
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            page = answer.read().decode()
            policy = answer.headers.get("Content-Security-Policy", "")
    except OSError as err:
        raise DemoFailed(f"the dashboard at {url} does not answer: {err}") from None
    if "dashboard.js" not in page or "script-src 'self'" not in policy:
        raise DemoFailed(f"{url} is not the dashboard (Content-Security-Policy: {policy!r})")


def register(story: Story, admin: SyncRegistry) -> None:
    story.step("Register DSPy.rb's ClassifyText signature and two versions of a sentiment program")
    signature = admin.register_signature(
        SIGNATURE,
        signature=CLASSIFY_TEXT,
        version="1.0.0",
        metadata={"team": "ml_platform", "domain": "customer_feedback"},
    )
    story.ok(f"{signature.name}: text -> sentiment (positive | negative | neutral), confidence (float)")
    story.say(
        "A version's artifact is the JSON `dspy.Module.save()` writes; here its `classify` predictor's demos\n"
        "are the program's parameters (demo/program.py learns a word lexicon from them). Each version is\n"
        f"scored on a labelled dev set of {len(DEV)} messages before it is registered, as an optimizer would."
    )
    for version, demos, changelog in (
        ("1.0.0", TRAIN[:9], "first cut: 9 demos"),
        ("1.1.0", TRAIN, f"more demos: all {len(TRAIN)} of the training pool"),
    ):
        artifact = saved_state(demos, CLASSIFY_TEXT["instructions"])
        score = accuracy(SentimentProgram.from_artifact(artifact), DEV)
        registered = admin.register_program(
            PROGRAM,
            program=artifact,
            signature_name=SIGNATURE,
            version=version,
            metadata={"changelog": changelog, "optimization_method": "labeled_few_shot", "demos": len(demos)},
            signature_version="1.0.0",
            performance={"accuracy": round(score, 4)},
            labels={"team": "ml_platform", "project": "customer_experience"},
        )
        check_stored(registered, artifact, len(demos))
        story.ok(f"{registered.name}: {changelog}; dev-set accuracy {score:.2f}")
    story.cli(admin, "program", "versions", PROGRAM)


def check_stored(registered: rpb.ProgramVersion, artifact: bytes, demos: int) -> None:
    """That the registry holds these very bytes, and read them as the DSPy program they are."""
    digest = "sha256:" + hashlib.sha256(artifact).hexdigest()
    predictors = [(p.name, p.demo_count) for p in registered.predictors]
    if registered.artifact.digest != digest or predictors != [("classify", demos)]:
        raise DemoFailed(
            f"{registered.name} holds {registered.artifact.digest} with predictors {predictors}; "
            f"expected {digest} with [('classify', {demos})]"
        )


def prepare_production(
    story: Story, admin: SyncRegistry, address: str, tmp: Path
) -> tuple[SyncRegistry, Path]:
    story.step("Production's rules, a reviewer, and the pods' identity")
    env = admin.get_environment("production")
    p, rules = env.policy, env.policy.auto_rollback
    story.say(
        f"Production, as `dspy-registry env show production` shows it: validation (accuracy >= "
        f"{p.validation.min_metrics['accuracy']:g}), {p.required_approvals} approval by someone other than "
        f"the requester,\nonly versions that succeeded in {', '.join(p.required_predecessors)}, monitored, "
        f"automatic rollback on error rate > {rules.error_rate:g}, p95 > {rules.latency_p95_ms:g} ms or an "
        f"accuracy drop > {rules.accuracy_drop:g},\njudged every {rules.analysis_interval.ToSeconds()} s over "
        f"{rules.monitoring_window.ToSeconds()} s once {rules.min_requests} requests are in."
    )
    story.say("Those time scales suit real traffic; the demo shortens them (the thresholds stay):")
    story.cli(
        admin,
        "env",
        "set",
        "production",
        f"policy.auto_rollback.analysis_interval={ANALYSIS_INTERVAL}",
        f"policy.auto_rollback.monitoring_window={MONITORING_WINDOW}",
        f"policy.auto_rollback.min_requests={MIN_REQUESTS}",
        quiet=True,
    )
    rules = admin.get_environment("production").policy.auto_rollback
    if (rules.analysis_interval.ToMilliseconds(), rules.min_requests) != (500, MIN_REQUESTS):
        raise DemoFailed(f"production's auto_rollback did not change: {rules}")
    story.ok(
        f"production now analyses every {rules.analysis_interval.ToMilliseconds() / 1000:g} s over "
        f"{rules.monitoring_window.ToSeconds()} s, from {rules.min_requests} requests"
    )

    admin.create_principal("carol", display_name="Carol", team="ml_platform")
    admin.grant_permission("carol", action="approve", resource="sentiment_*")
    carol = SyncRegistry.connect(address, token=admin.create_token("carol", description="demo").secret)
    story.ok(
        "principals/carol may approve deployments of sentiment_* (production needs a second pair of eyes)"
    )
    admin.create_principal("serving-pods", type="service_account", team="ml_platform")
    for action in ("read", "rollback"):  # rollback: pods' measurements can make one
        admin.grant_permission("serving-pods", action=action, resource=PROGRAM)
    pod_token = tmp / "pods.token"
    pod_token.touch(mode=0o600)
    pod_token.write_text(admin.create_token("serving-pods", description="the demo's pods").secret)
    story.ok(f"principals/serving-pods (a service account) may read {PROGRAM} and report its metrics")
    return carol, pod_token


def deploy(
    admin: SyncRegistry,
    carol: SyncRegistry,
    version: str,
    environment: str,
    end: int,
    seconds: float,
    while_waiting: Callable[[], None] = lambda: None,
    **strategy: Any,
) -> dpb.Deployment:
    """Deploys (approved by Carol where the environment asks for it) and waits until the deployment ends,
    calling `while_waiting` at each poll; DemoFailed unless it ends in `end`."""
    d = admin.create_deployment(
        PROGRAM, version, environment, reason=f"demo: {version} to {environment}", **strategy
    )
    if d.state == dpb.DEPLOYMENT_STATE_PENDING_APPROVAL:
        d = carol.approve_deployment(d.name, comment=f"reviewed {version}")

    def ended() -> dpb.Deployment | None:
        while_waiting()
        return _ended(admin, d.name)

    d = wait_until(
        ended,
        seconds,
        f"{d.name} ({version} to {environment}) ending",
        lambda: _describe(admin.get_deployment(d.name)),
    )
    if d.state != end:
        raise DemoFailed(
            f"{d.name} ({version} to {environment}) ended {state_name(d.state)}, not {state_name(end)}: "
            + _describe(d)
        )
    return d


def _ended(registry: SyncRegistry, name: str) -> dpb.Deployment | None:
    d = registry.get_deployment(name)
    active = (dpb.DEPLOYMENT_STATE_PENDING_APPROVAL, dpb.DEPLOYMENT_STATE_IN_PROGRESS)
    return None if d.state in active else d


def _describe(d: dpb.Deployment) -> str:
    text = f"{state_name(d.state)} at step {d.current_step}/{d.step_count} ({d.weight_percent}%)"
    if d.paused:
        text += f", paused: {d.pause_reason}"
    last = d.timeline[-1] if d.timeline else None
    return text + (f"; last: {last.reason}" if last and last.reason else "")


def show_timeline(story: Story, d: dpb.Deployment) -> None:
    """The deployment's timeline as the registry recorded it, times from its creation."""
    created = d.create_time.ToNanoseconds()
    table = Table(title=f"{d.name}: {d.version} to {d.environment}, timeline", title_justify="left")
    for header in ("t", "event", "by", "why"):
        table.add_column(header)
    for entry in d.timeline:
        table.add_row(
            f"+{(entry.time.ToNanoseconds() - created) / 1e9:.2f}s",
            dpb.DeploymentEventKind.Name(entry.kind).removeprefix("DEPLOYMENT_EVENT_KIND_"),
            entry.actor.removeprefix("principals/"),
            entry.reason,
        )
    story.console.print(table)


def put_v1_in_production(story: Story, admin: SyncRegistry, carol: SyncRegistry) -> None:
    story.step("Put 1.0.0 in production: staging first, then production with Carol's approval")
    staged = deploy(admin, carol, "1.0.0", "staging", dpb.DEPLOYMENT_STATE_SUCCEEDED, 10, strategy="replace")
    story.ok(f"{staged.name}: 1.0.0 to staging SUCCEEDED")
    d = deploy(admin, carol, "1.0.0", "production", dpb.DEPLOYMENT_STATE_SUCCEEDED, 10, strategy="replace")
    approvals = ", ".join(a.principal.removeprefix("principals/") for a in d.approvals)
    story.ok(f"{d.name}: 1.0.0 to production SUCCEEDED (requested by admin, approved by {approvals})")


def start_pods(story: Story, processes: Processes, address: str, token: Path, tmp: Path) -> list[Path]:
    story.step("Start three serving pods")
    story.say(
        f"Each pod (demo/pod.py, a process of its own) embeds ProgramWatcher for {PROGRAM} in production\n"
        "and loads each version it is given from its artifact. It answers "
        f"{POD_RATE:g} requests a second from the\ndemo's labelled traffic ({len(TRAFFIC)} customer messages): "
        "every answer goes through `watcher.route()`,\nevery user's verdict through `watcher.feedback()`, "
        "and the watcher reports them to the registry twice a second."
    )
    logs = []
    for i in range(PODS):
        log = tmp / f"pod-{i}.jsonl"
        command = [sys.executable, "-m", "demo.pod", "--server", address, "--token-file", str(token)]
        command += ["--id", f"pod-{i}", "--log", str(log), "--rate", str(POD_RATE)]
        processes.start(f"pod-{i}", command, tmp / f"pod-{i}.out")
        logs.append(log)
    return logs


def pods_serving(logs: list[Path], stable: str, since: float = 0.0) -> float | None:
    """When the last pod swapped to `stable` alone (at or after `since`); None while one has not."""
    times = []
    for log in logs:
        swaps = [e for e in read_jsonl(log) if e["event"] == "swap"]
        if not swaps or (swaps[-1]["stable"], swaps[-1]["candidate"]) != (stable, None):
            return None
        back = [e["t"] for e in swaps if e["t"] >= since and (e["stable"], e["candidate"]) == (stable, None)]
        if not back:
            return None
        times.append(float(back[0]))
    return max(times)


def sidecars_ack(admin: SyncRegistry, version: str) -> dict[str, list[str]] | None:
    """Each live sidecar's ACKed versions, if there are PODS of them and each holds `version` alone."""
    status = admin.get_deployment_status(PROGRAM, "production")
    held = {
        s.sidecar_id: [t.version for t in s.targets if t.result == dpb.APPLY_RESULT_ACK]
        for s in status.sidecars
    }
    return held if len(held) == PODS and all(v == [version] for v in held.values()) else None


def fleet_on(story: Story, admin: SyncRegistry, processes: Processes, logs: list[Path], version: str) -> None:
    """Checks, from the pods' logs and from what the registry heard, that every pod serves `version` alone."""

    def seen() -> str:
        processes.check_alive()
        status = admin.get_deployment_status(PROGRAM, "production")
        return "sidecars: " + "; ".join(
            f"{s.sidecar_id}: {[(t.version, dpb.ApplyResult.Name(t.result)) for t in s.targets]}"
            for s in status.sidecars
        )

    def both() -> bool:
        processes.check_alive()
        return pods_serving(logs, version) is not None and sidecars_ack(admin, version) is not None

    wait_until(both, 15, f"all {PODS} pods serving {version} alone", seen)
    story.ok(f"all {PODS} pods serve {version} alone (their logs), and each ACKed it to the registry")


def first_traffic(story: Story, admin: SyncRegistry, processes: Processes, logs: list[Path]) -> None:
    fleet_on(story, admin, processes, logs, "1.0.0")

    def measured() -> bool:
        processes.check_alive()
        status = admin.get_deployment_status(PROGRAM, "production")
        return any(h.version == "1.0.0" and h.request_count >= MIN_REQUESTS for h in status.health)

    wait_until(measured, 15, f"the registry holding {MIN_REQUESTS} measured requests of 1.0.0", lambda: "")
    story.ok("the registry has the pods' measurements of 1.0.0:")
    story.cli(admin, "status", PROGRAM, "production")


def canary_v2(
    story: Story, admin: SyncRegistry, carol: SyncRegistry, processes: Processes, logs: list[Path]
) -> None:
    story.step("Take 1.1.0 through a production canary to 100 %")
    deploy(admin, carol, "1.1.0", "staging", dpb.DEPLOYMENT_STATE_SUCCEEDED, 10, strategy="replace")
    story.ok("1.1.0 SUCCEEDED in staging, so production may take it")
    story.say(
        "Canary: 25 %, then 50 %, each held 1 s, then 100 %. Production is monitored: a step passes only on a\n"
        "HEALTHY verdict of 1.1.0 from what the pods measured (error rate, p95, accuracy against 1.0.0)."
    )
    started = time.monotonic()
    d = deploy(
        admin,
        carol,
        "1.1.0",
        "production",
        dpb.DEPLOYMENT_STATE_SUCCEEDED,
        30,
        strategy="canary",
        canary_percent=[25, 50],
        pause=1.0,
    )
    show_timeline(story, d)
    story.ok(f"{d.name} reached 100 % and SUCCEEDED in {time.monotonic() - started:.1f} s")
    target = admin.get_deployment_status(PROGRAM, "production").target
    if target.stable.version != "1.1.0" or target.HasField("candidate"):
        raise DemoFailed(f"production's target is not 1.1.0 alone: {target}")
    fleet_on(story, admin, processes, logs, "1.1.0")
    story.cli(admin, "status", PROGRAM, "production")


def broken_v3(
    story: Story, admin: SyncRegistry, carol: SyncRegistry, processes: Processes, logs: list[Path]
) -> None:
    story.step("A broken 1.2.0 goes out as a canary, and comes back by itself")
    batch_train, batch_dev = swapped(TRAIN), swapped(DEV)
    artifact = saved_state(batch_train, CLASSIFY_TEXT["instructions"])
    score = accuracy(SentimentProgram.from_artifact(artifact), batch_dev)
    story.say(
        "1.2.0 was re-tuned on a fresh batch from a new labelling vendor, demos and dev set alike. The vendor's\n"
        "export mapped 'positive' and 'negative' the wrong way round; scored on that same batch the program looks\n"
        f"fine ({score:.2f}), so it clears production's accuracy gate. Its demos now teach it the opposite."
    )
    registered = admin.register_program(
        PROGRAM,
        program=artifact,
        signature_name=SIGNATURE,
        version="1.2.0",
        metadata={
            "changelog": "re-tuned on the vendor's new batch",
            "optimization_method": "labeled_few_shot",
        },
        signature_version="1.0.0",
        performance={"accuracy": round(score, 4)},
        labels={"team": "ml_platform", "project": "customer_experience"},
    )
    check_stored(registered, artifact, len(batch_train))
    story.ok(f"registered {PROGRAM}@1.2.0, accuracy {score:.2f} on the vendor's dev set")
    deploy(admin, carol, "1.2.0", "staging", dpb.DEPLOYMENT_STATE_SUCCEEDED, 10, strategy="replace")
    story.ok("1.2.0 SUCCEEDED in staging (no live traffic there to tell)")
    story.say("Production canary at 25 %, to be held 30 s: only the registry's analysis can end it sooner.")
    seen: dict[str, dpb.VersionHealth] = {}

    def look() -> None:
        # What the registry's status said of the candidate while it served: the rollback's evidence.
        status = admin.get_deployment_status(PROGRAM, "production")
        if status.current_deployment.version == "1.2.0":  # not the rollback's status, once it is made
            seen.update((h.version, h) for h in status.health)

    d = deploy(
        admin,
        carol,
        "1.2.0",
        "production",
        dpb.DEPLOYMENT_STATE_ROLLED_BACK,
        20,
        look,
        strategy="canary",
        canary_percent=25,
        pause=30.0,
    )
    show_timeline(story, d)
    last = d.timeline[-1]
    if not last.reason.startswith("Auto-rollback: ") or last.actor != "controller":
        raise DemoFailed(f"{d.name} was rolled back, but not by the controller's analysis: {last}")
    started = max(e.time.ToNanoseconds() for e in d.timeline if e.kind == dpb.DEPLOYMENT_EVENT_KIND_APPROVED)
    rolled_back_at = last.time.ToNanoseconds() / 1e9
    story.ok(
        f"the controller rolled {d.name} back {rolled_back_at - started / 1e9:.1f} s after Carol's approval "
        f"started the canary, with the reason\n  {last.reason!r}"
    )
    if "1.2.0" in seen and "1.1.0" in seen and seen["1.2.0"].HasField("accuracy"):
        bad, good = seen["1.2.0"], seen["1.1.0"]
        story.say(
            f"  the last status before it: 1.2.0 answered {bad.request_count} requests, accuracy "
            f"{bad.accuracy:.2f}; 1.1.0 beside it {good.request_count}, accuracy {good.accuracy:.2f}"
        )
    target = admin.get_deployment_status(PROGRAM, "production").target
    if target.stable.version != "1.1.0" or target.HasField("candidate"):
        raise DemoFailed(f"production's target is not back on 1.1.0 alone: {target}")
    fleet_on(story, admin, processes, logs, "1.1.0")
    back = pods_serving(logs, "1.1.0", since=rolled_back_at - 0.001)
    if back is None:
        raise DemoFailed("the pods' logs show no swap back to 1.1.0 after the rollback")
    story.ok(
        f"the last pod was back on 1.1.0 {max(back - rolled_back_at, 0) * 1000:.0f} ms after the rollback"
    )
    # The rollback is a deployment of its own, judged on the traffic since it was made: wait for enough.
    healthy_again(admin, processes)
    story.cli(admin, "status", PROGRAM, "production")
    story.cli(admin, "history", PROGRAM, "production")


def healthy_again(admin: SyncRegistry, processes: Processes) -> None:
    def healthy() -> bool:
        processes.check_alive()
        status = admin.get_deployment_status(PROGRAM, "production")
        return any(
            h.version == "1.1.0"
            and h.request_count >= MIN_REQUESTS
            and h.verdict == dpb.HEALTH_VERDICT_HEALTHY
            for h in status.health
        )

    def seen() -> str:
        health = admin.get_deployment_status(PROGRAM, "production").health
        return "health: " + "; ".join(
            f"{h.version} {h.request_count} requests, {verdict_name(h.verdict)}" for h in health
        )

    wait_until(healthy, 15, f"1.1.0 judged HEALTHY on {MIN_REQUESTS} requests after the rollback", seen)


def pods_report(story: Story, processes: Processes, logs: list[Path]) -> None:
    story.step("Stop the pods: what each version answered")
    for name, process, _ in list(processes.running):
        if name.startswith("pod-") and processes.stop(process) != 0:
            raise DemoFailed(f"{name} exited with code {process.returncode}")
    table = Table(title="as each pod counted (right: the user agreed)", title_justify="left")
    for header in ("pod", "version", "answered", "right", "accuracy"):
        table.add_column(header)
    totals: dict[str, list[int]] = {}
    for i, log in enumerate(logs):
        exits = [e for e in read_jsonl(log) if e["event"] == "exit"]
        if not exits:
            raise DemoFailed(f"pod-{i} left no summary:\n{tail(log.with_suffix('.out'))}")
        for version, answered in sorted(exits[-1]["answered"].items()):
            right = exits[-1]["correct"].get(version, 0)
            table.add_row(f"pod-{i}", version, str(answered), str(right), f"{right / answered:.2f}")
            total = totals.setdefault(version, [0, 0])
            total[0] += answered
            total[1] += right
    story.console.print(table)
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        if version not in totals:
            raise DemoFailed(f"no pod answered with {version}")
    live = {v: right / answered for v, (answered, right) in totals.items()}
    if not live["1.1.0"] > live["1.0.0"] > live["1.2.0"]:
        raise DemoFailed(f"live accuracy is not 1.1.0 > 1.0.0 > 1.2.0: {live}")
    story.ok(
        "live accuracy: "
        + ", ".join(f"{v} {a:.2f}" for v, a in sorted(live.items()))
        + " — 1.1.0 is measurably better than 1.0.0, and 1.2.0 is broken"
    )


def run(story: Story, processes: Processes, tmp: Path, keep: bool = False) -> None:
    address, admin_token, dashboard = start_server(story, processes, tmp)
    with SyncRegistry.connect(address, token_file=admin_token) as admin:
        register(story, admin)
        carol, pod_token = prepare_production(story, admin, address, tmp)
        with carol:
            put_v1_in_production(story, admin, carol)
            logs = start_pods(story, processes, address, pod_token, tmp)
            first_traffic(story, admin, processes, logs)
            canary_v2(story, admin, carol, processes, logs)
            broken_v3(story, admin, carol, processes, logs)
    pods_report(story, processes, logs)
    if keep:
        story.step("The dashboard stays up")
        check_dashboard(dashboard)
        story.say(f"The dashboard stays up at {dashboard}")
        story.say(f"Sign in with the token in {admin_token}")
        story.say("Ctrl-C stops the server.")
        try:
            signal.pause()
        except KeyboardInterrupt:
            story.say("")  # asked for: the story goes on to its clean-up
    story.step("Clean up")
    for name, process, _ in list(processes.running):
        if name == "the server" and processes.stop(process) != 0:
            raise DemoFailed(f"the server exited with code {process.returncode} on SIGTERM")
    story.ok("the server stopped on SIGTERM; the temporary directory goes next")


def _exit_on(signum: int, frame: FrameType | None) -> None:
    # SIGTERM ends the demo like Ctrl-C does: through the `finally` that stops the processes.
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the server and its dashboard up after the last step, until Ctrl-C, and the temporary "
        "directory (store, logs)",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _exit_on)
    story = Story()
    processes = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="dspy-registry-demo-"))
    code = 0
    try:
        run(story, processes, tmp, keep=args.keep)
    except DemoFailed as err:
        story.console.print(f"\n[bold red]DEMO FAILED[/bold red] in step {story.steps}: {err}")
        story.console.print(f"[dim]the server's log, last lines:[/dim]\n{tail(tmp / 'server.log')}")
        code = 1
    except KeyboardInterrupt:
        story.console.print("\n[yellow]interrupted[/yellow]")
        code = 130
    except RegistryError as err:  # a call the server refused: the status and why, as the CLI prints it
        story.console.print(
            f"\n[bold red]DEMO FAILED[/bold red] in step {story.steps}: {err.code.name}: {err.message}"
        )
        for field, description in err.field_violations:
            story.console.print(f"  {field}: {description}")
        code = 1
    except Exception:  # a bug: still a failed step, with its traceback
        story.console.print(f"\n[bold red]DEMO FAILED[/bold red] in step {story.steps}:")
        story.console.print_exception()
        code = 1
    finally:
        # A second Ctrl-C or SIGTERM must not cut the clean-up short and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        processes.close()
        if args.keep or code == 1:
            story.console.print(f"[dim]kept {tmp} (store, server and pod logs)[/dim]")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - story.started
    if code == 0:
        story.console.print(f"\n[bold green]The demo ran every step in {elapsed:.1f} s.[/bold green]")
    return code


if __name__ == "__main__":
    sys.exit(main())

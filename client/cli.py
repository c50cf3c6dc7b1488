"""The operator commands of `dspy-registry`: signatures, programs, deployments, environments, access.

    dspy-registry --server localhost:50051 --token-file admin.token program list
    dspy-registry deploy triage 1.1.0 staging --canary 10,50 --pause 1 --wait
    dspy-registry status triage staging --json

Each command calls the server through `SyncRegistry` and prints a table (rich),
or with `--json` the response as proto3 JSON with the proto field names (lists
as arrays; `watch` one object per line). The target and the token come from
the options, else DSPY_REGISTRY_TARGET / DSPY_REGISTRY_TOKEN(_FILE), else the
config file (client/config.py): prefer a token file to a token in the shell's
history.

Exit codes: 0 success; 1 the server refused a call (its status and field
violations on stderr) or a local file could not be read; 2 a usage error
(argparse), or a bad setting in a DSPY_REGISTRY_* variable or the config file;
3 `deploy --wait` saw the deployment end other than SUCCEEDED, or time out.
Ctrl-C ends a command at once (the shell reports 130).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from dspy_registry.v1 import access_pb2 as apb
from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import registry_pb2 as pb

from .config import ConfigError
from .errors import RegistryError
from .flags import add_connection_flags, settings_from_flags
from .registry import UNARY_ARTIFACT_LIMIT, Rollback
from .sync import SyncRegistry

EXIT_CALL_FAILED = 1
EXIT_USAGE = 2  # as argparse's own usage errors
EXIT_DEPLOYMENT_FAILED = 3

Command = Callable[[SyncRegistry, argparse.Namespace, "Output"], int]


class Output:
    """Where a command's results go: rich tables for people, JSON documents for `--json`."""

    def __init__(self, as_json: bool) -> None:
        self.json = as_json
        # Off a terminal rich would wrap at 80 columns and cut values short; scripts read them whole.
        width = None if sys.stdout.isatty() else 200
        self.console = Console(width=width, highlight=False)
        self.errors = Console(stderr=True, width=width, highlight=False)

    def document(self, value: Any) -> None:
        print(json.dumps(value, indent=2), flush=True)

    def message(self, message: Message, title: str = "") -> None:
        """One message: JSON, or its fields as a two-column table."""
        data = as_dict(message)
        if self.json:
            self.document(data)
            return
        table = Table(title=title or None, show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value")
        for key, value in data.items():
            table.add_row(key, value if isinstance(value, str) else json.dumps(value))
        self.console.print(table)

    def rows(self, messages: Iterable[Message], columns: dict[str, Callable[[Any], object]]) -> None:
        """A list: a JSON array, or a table with one column per entry of `columns`."""
        items = list(messages)
        if self.json:
            self.document([as_dict(m) for m in items])
            return
        table = Table()
        for header in columns:
            table.add_column(header)
        for item in items:
            table.add_row(*(str(get(item)) for get in columns.values()))
        self.console.print(table)


def as_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _enum_name(wrapper: Any, number: int, prefix: str) -> str:
    return str(wrapper.Name(number)).removeprefix(prefix)


def state_name(state: int) -> str:
    return _enum_name(dpb.DeploymentState, state, "DEPLOYMENT_STATE_")


def verdict_name(verdict: int) -> str:
    return _enum_name(dpb.HealthVerdict, verdict, "HEALTH_VERDICT_")


def _split_version(value: str) -> tuple[str, str]:
    """`name@1.0.0` -> (name, 1.0.0); `name` -> (name, latest)."""
    name, _, version = value.partition("@")
    return name, version or "latest"


def _pairs(values: list[str] | None, parse: Callable[[str], Any] = str) -> dict[str, Any]:
    """`k=v` options as a dict (values parsed by `parse`)."""
    out: dict[str, Any] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, not {item!r}")
        out[key] = parse(value)
    return out


def _json_value(text: str) -> Any:
    """A JSON value when it parses (numbers, booleans, lists), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


# -- signatures


def signature_register(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    spec = json.loads(Path(args.file).read_text())
    version = registry.register_signature(
        args.name,
        signature=spec,
        version=args.version or "",
        metadata=_pairs(args.metadata, _json_value) or None,
    )
    out.message(version, f"registered {version.name}")
    return 0


def signature_list(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    out.rows(
        registry.list_signatures(name_prefix=args.prefix),
        {"name": lambda s: s.name, "latest": lambda s: s.latest_version},
    )
    return 0


def signature_show(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    out.message(registry.get_signature(*_split_version(args.name)))
    return 0


# -- programs


def program_register(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    artifact = Path(args.file).read_bytes()
    signature, signature_version = _split_version(args.signature)
    options: dict[str, Any] = {
        "program": artifact,
        "signature_name": signature,
        "version": args.version or "",
        "metadata": _pairs(args.metadata, _json_value) or None,
        "signature_version": signature_version,
        "performance": _pairs(args.performance, float) or None,
        "labels": _pairs(args.label) or None,
    }
    if len(artifact) <= UNARY_ARTIFACT_LIMIT:
        version = registry.register_program(args.name, **options)
    else:
        # Streamed in chunks: a bar follows them (on stderr, so that stdout stays the result).
        columns = (TextColumn("uploading"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=out.errors) as bar:
            task = bar.add_task("upload", total=len(artifact))
            version = registry.upload_program(
                args.name, progress=lambda sent, _total: bar.update(task, completed=sent), **options
            )
    out.message(version, f"registered {version.name}")
    return 0


def program_list(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    out.rows(
        registry.list_programs(environment=args.environment, team=args.team, name_prefix=args.prefix),
        {"name": lambda p: p.name, "latest": lambda p: p.latest_version, "signature": lambda p: p.signature},
    )
    return 0


def program_show(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    """A version (`NAME@V`, or what `--environment` serves); for a bare NAME the latest version and,
    after it, which versions are deployed where (under --json, the version's document with an
    `environments` array: GetProgram's)."""
    name, version = _split_version(args.name)
    found = registry.get_program_version(name, version, environment=args.environment)
    if "@" in args.name or args.environment:
        out.message(found)
        return 0
    environments = registry.get_program(name).environments
    if out.json:
        out.document({**as_dict(found), "environments": [as_dict(e) for e in environments]})
        return 0
    out.message(found)
    out.console.print(_deployed_where(environments))
    return 0


def _deployed_where(environments: Iterable[pb.ProgramEnvironment]) -> Table:
    """One row per environment: what it serves, the deployment moving it, and when that changed."""
    table = Table(title="deployed where")
    for header in ("environment", "stable", "candidate", "deployment", "changed"):
        table.add_column(header)
    for e in environments:
        t, d = e.target, e.deployment
        candidate = (
            f"{t.candidate.version} at {t.candidate.weight_percent}%" if t.HasField("candidate") else ""
        )
        moving = f"{d.version}: {_step_text(d)}" if e.HasField("deployment") else ""
        changed = e.update_time.ToJsonString() if e.HasField("update_time") else ""
        table.add_row(e.environment, t.stable.version or "-", candidate, moving, changed)
    return table


def program_versions(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    out.rows(
        registry.list_program_versions(args.name),
        {
            "version": lambda v: v.version,
            "previous": lambda v: v.previous_version,
            "digest": lambda v: v.artifact.digest[:19],
            "performance": lambda v: ", ".join(f"{k}={x:g}" for k, x in sorted(v.performance.items())),
            "yanked": lambda v: f"yes: {v.yank_reason}" if v.yanked else "",
            "created": lambda v: v.create_time.ToJsonString(),
        },
    )
    return 0


def program_compare(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    out.message(
        registry.compare_program_versions(args.name, args.base, args.target_version),
        f"{args.base} -> {args.target_version}",
    )
    return 0


def program_upgrade_path(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    out.rows(
        registry.get_upgrade_path(args.name, args.from_version, args.to_version),
        {
            "from": lambda s: s.from_version,
            "to": lambda s: s.to_version,
            "step": lambda s: json.dumps({k: v for k, v in as_dict(s).items() if "version" not in k}),
        },
    )
    return 0


def program_yank(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    out.message(registry.yank_program_version(args.name, args.version, reason=args.reason, undo=args.undo))
    return 0


# -- deployments


def _step_text(deployment: dpb.Deployment) -> str:
    text = f"{deployment.name}: {state_name(deployment.state)}"
    if deployment.state == dpb.DEPLOYMENT_STATE_IN_PROGRESS:
        text += f", step {deployment.current_step}/{deployment.step_count} at {deployment.weight_percent}%"
    if deployment.state == dpb.DEPLOYMENT_STATE_PENDING_CHECKS:
        text += f" (waiting for checks: {', '.join(deployment.waiting_checks)})"
    if deployment.paused:
        text += f" (paused: {deployment.pause_reason})"
    return text


def _wait(registry: SyncRegistry, deployment: dpb.Deployment, timeout: float, out: Output) -> dpb.Deployment:
    """Polls the deployment until it ends: a line per change of state or step, and on a terminal a live
    bar of the candidate's weight. Under --json the lines go to stderr (stdout holds the document)."""
    console = out.errors if out.json else out.console
    deadline = time.monotonic() + timeout
    shown = ""
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"))
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("", total=100)
        while True:
            text = _step_text(deployment)
            if text != shown:
                console.print(text)
                shown = text
            done = deployment.state == dpb.DEPLOYMENT_STATE_SUCCEEDED
            bar.update(task, description=text, completed=100 if done else deployment.weight_percent)
            if deployment.state not in (
                dpb.DEPLOYMENT_STATE_PENDING_APPROVAL,
                dpb.DEPLOYMENT_STATE_PENDING_CHECKS,
                dpb.DEPLOYMENT_STATE_IN_PROGRESS,
            ):
                return deployment
            if time.monotonic() > deadline:
                return deployment
            time.sleep(0.2)
            deployment = registry.get_deployment(deployment.name)


def _ended(deployment: dpb.Deployment, out: Output) -> int:
    """The exit code for a deployment --wait saw: 0 on SUCCEEDED, else why not, on stderr."""
    if deployment.state == dpb.DEPLOYMENT_STATE_SUCCEEDED:
        return 0
    reason = next((t.reason for t in reversed(deployment.timeline) if t.reason), "")
    live = (dpb.DEPLOYMENT_STATE_IN_PROGRESS, dpb.DEPLOYMENT_STATE_PENDING_CHECKS)
    verb = "is still" if deployment.state in live else "ended"
    out.errors.print(f"error: {deployment.name} {verb} {state_name(deployment.state)}: {reason}".rstrip(": "))
    return EXIT_DEPLOYMENT_FAILED


def deploy(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    # No --strategy and no --canary: the environment's default strategy.
    weights = [int(w) for w in args.canary.split(",")] if args.canary else None
    deployment = registry.create_deployment(
        args.program,
        args.version,
        args.environment,
        strategy=args.strategy,
        canary_percent=weights,
        pause=args.pause,
        reason=args.reason,
        supersede=args.supersede,
        allow_breaking=args.allow_breaking,
    )
    if not args.wait:
        out.message(deployment)
        return 0
    deployment = _wait(registry, deployment, args.timeout, out)
    if out.json:
        out.message(deployment)
    return _ended(deployment, out)


def _deployment_action(call: Callable[[SyncRegistry, argparse.Namespace], Message]) -> Command:
    def command(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
        out.message(call(registry, args))
        return 0

    return command


def _rollback(registry: SyncRegistry, args: argparse.Namespace) -> Message:
    done: Rollback = registry.rollback_deployment(args.deployment, reason=args.reason)
    # Printed as the RPC's response, both deployments, as `--json` has always shown it.
    return dpb.RollbackDeploymentResponse(deployment=done.deployment, rolled_back=done.rolled_back)


def status(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    code = _status(registry, args, out)
    return _follow(registry, args, out) if args.watch else code


def _status(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    response: dpb.GetDeploymentStatusResponse = registry.get_deployment_status(args.program, args.environment)
    if out.json:
        out.message(response)
        return 0
    target, current = response.target, response.current_deployment
    out.console.print(f"[bold]{target.name}[/bold]  verdict: {verdict_name(response.verdict)}")
    versions = Table(title="target")
    for header in ("role", "version", "weight", "digest"):
        versions.add_column(header)
    candidate_weight = target.candidate.weight_percent if target.HasField("candidate") else 0
    versions.add_row("stable", target.stable.version, f"{100 - candidate_weight}%", target.stable.digest[:19])
    if target.HasField("candidate"):
        versions.add_row(
            "candidate", target.candidate.version, f"{candidate_weight}%", target.candidate.digest[:19]
        )
    out.console.print(versions)
    if current.name:
        out.console.print(f"deployment {_step_text(current)} ({current.version})")
    health = Table(title="health")
    for header in ("version", "role", "requests", "error rate", "p95 ms", "accuracy", "checks", "verdict"):
        health.add_column(header)
    for h in response.health:
        checks = "; ".join(
            f"{c.metric} {c.value:g} vs {c.threshold:g}: {verdict_name(c.verdict)}"
            if c.HasField("value")
            else f"{c.metric} -- vs {c.threshold:g}"
            for c in h.checks
        )
        health.add_row(
            h.version,
            _enum_name(dpb.TrafficRole, h.role, "TRAFFIC_ROLE_"),
            str(h.request_count),
            f"{h.error_rate:.3f}" if h.HasField("error_rate") else "-",
            f"{h.latency_p95_ms:g}" if h.HasField("latency_p95_ms") else "-",
            (f"{h.accuracy:.3f}" if h.HasField("accuracy") else "-")
            + (f" (baseline {h.baseline_accuracy:.3f})" if h.HasField("baseline_accuracy") else ""),
            checks,
            verdict_name(h.verdict),
        )
    out.console.print(health)
    sidecars = Table(title="sidecars")
    for header in ("sidecar", "principal", "runs", "last report"):
        sidecars.add_column(header)
    for s in response.sidecars:
        runs = ", ".join(
            f"{t.version} {_enum_name(dpb.ApplyResult, t.result, 'APPLY_RESULT_')}"
            + (f" ({t.error_detail.message})" if t.error_detail.message else "")
            for t in s.targets
            if (t.program, t.environment) == (target.program, target.environment)
        )
        sidecars.add_row(s.sidecar_id, s.principal, runs, s.last_report_time.ToJsonString())
    out.console.print(sidecars)
    out.console.print(f"leader: {response.leader or '(none)'}")
    return 0


def history(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    deployments = registry.list_deployments(args.program, args.environment or "")
    out.rows(
        (d for _, d in zip(range(args.limit), deployments, strict=False)),
        {
            "deployment": lambda d: d.name,
            "environment": lambda d: d.environment,
            "version": lambda d: d.version,
            "strategy": lambda d: _enum_name(dpb.Strategy, d.strategy.strategy, "STRATEGY_"),
            "state": lambda d: state_name(d.state),
            "created": lambda d: d.create_time.ToJsonString(),
            "reason": lambda d: d.reason,
        },
    )
    return 0


_LIVE_STATES = (
    dpb.DEPLOYMENT_STATE_PENDING_APPROVAL,
    dpb.DEPLOYMENT_STATE_PENDING_CHECKS,
    dpb.DEPLOYMENT_STATE_IN_PROGRESS,
)


def _follow(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    """`status --watch`: the target's rollout, event by event, until it ends: 0 when it SUCCEEDED,
    EXIT_DEPLOYMENT_FAILED when it rolled back, failed or was aborted. A deployment superseded is
    followed into the one that replaced it. No rollout in progress: nothing to follow, 0."""
    stream: Iterator[dpb.WatchEventsResponse] = registry.watch_events(args.program, args.environment)
    followed = ""
    for response in stream:
        kind = response.WhichOneof("kind")
        if kind == "snapshot":
            # The watch's own snapshot, not the status read before it: a rollout that ended in between
            # is not in it, and its end is then read from the deployment itself.
            live = [d for d in response.snapshot.deployments if d.state in _LIVE_STATES]
            if live:
                followed = live[0].name
                out.errors.print(f"following {_step_text(live[0])}")
                continue
            last = registry.get_deployment_status(args.program, args.environment).current_deployment
            if not last.name:
                out.errors.print("no deployment of this target to follow")
                return 0
            return _ended(registry.get_deployment(last.name), out)
        for event in response.events.events if kind == "events" else ():
            _print_event(event, response.revision, out)
            if event.state in _LIVE_STATES:
                followed = event.deployment
            elif event.deployment == followed and event.state != dpb.DEPLOYMENT_STATE_SUPERSEDED:
                return _ended(registry.get_deployment(followed), out)
    return EXIT_CALL_FAILED  # the server ended the stream (it is stopping): the rollout's end is unknown


def _print_event(event: dpb.DeploymentEvent, revision: int, out: Output) -> None:
    if out.json:
        print(json.dumps(as_dict(event)), flush=True)
        return
    line = (
        f"{event.time.ToJsonString()} {revision} "
        f"{_enum_name(dpb.DeploymentEventKind, event.kind, 'DEPLOYMENT_EVENT_KIND_')} "
        f"{event.program}@{event.version} {event.environment} {event.deployment} "
        f"{state_name(event.state)} {event.actor} {event.reason}"
    )
    print(line.rstrip(), flush=True)


def watch(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    stream: Iterator[dpb.WatchEventsResponse] = registry.watch_events(
        args.program or "", args.environment or "", start_revision=args.start_revision
    )
    for response in stream:
        kind = response.WhichOneof("kind")
        if kind == "snapshot":
            # On stderr: a script waits for it to know the watch is established.
            live = len(response.snapshot.deployments)
            print(f"watching from revision {response.revision}, {live} live deployments", file=sys.stderr)
            sys.stderr.flush()
        for event in response.events.events if kind == "events" else ():
            _print_event(event, response.revision, out)
    return 0


def check_report(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    """CI's report of one check of a version: `check report triage@1.1.0 load_test passed --url …`."""
    name, version = _split_version(args.version)
    if "@" not in args.version:
        raise ValueError(f"name the version tested, as NAME@VERSION, not {args.version!r}")
    check = registry.report_version_check(
        name, version, args.check, state=args.state, details_url=args.url, summary=args.summary
    )
    out.message(check, f"{check.name}: {_enum_name(dpb.CheckState, check.state, 'CHECK_STATE_')}")
    return 0


# -- environments


def env_list(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    out.rows(
        registry.list_environments(),
        {"name": lambda e: e.name, "description": lambda e: e.description, "etag": lambda e: e.etag},
    )
    return 0


def env_show(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    out.message(registry.get_environment(args.name))
    return 0


def env_set(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    """Sets fields by their proto path (policy.required_approvals=2), with the etag just read."""
    changes = _pairs(args.assignments, _json_value)
    current = registry.get_environment(args.name)
    patch: dict[str, Any] = {"name": args.name}
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = patch
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    environment = json_format.ParseDict(patch, dpb.Environment())
    out.message(registry.update_environment(environment, update_mask=list(changes), etag=current.etag))
    return 0


# -- webhooks


def webhook_create(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    """The signing secret comes from a file (never the command line: shell history), else is made here
    and shown once, as `token create` does; the server never returns it."""
    made = args.secret_file is None
    secret = _new_secret() if made else Path(args.secret_file).read_text().strip()
    selectors = [_split_selector(s) for s in args.select or ()]
    webhook = registry.create_webhook(
        args.id,
        url=args.url,
        secret=secret,
        event_kinds=args.event or (),
        selectors=selectors,
        description=args.description,
    )
    if out.json:
        document = as_dict(webhook)
        if made:
            document["secret"] = secret
        out.document(document)
        return 0
    if not made:
        out.message(webhook)
        return 0
    # The secret alone on stdout, so that `> hook.secret` keeps it for the receiver.
    out.errors.print(f"created {webhook.name}; its signing secret is shown once")
    print(secret)
    return 0


def _new_secret() -> str:
    """A secret in Standard Webhooks' form, `whsec_` and 32 random bytes in base64, as its libraries take it."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def webhook_secret_add(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    """A secret more, from a file or made here and shown once; each POST is signed with both until
    the old one is retired."""
    made = args.secret_file is None
    secret = _new_secret() if made else Path(args.secret_file).read_text().strip()
    added = registry.add_webhook_secret(args.id, secret)
    if out.json:
        document = as_dict(added)
        if made:
            document["secret_value"] = secret
        out.document(document)
    elif made:
        out.errors.print(f"added {added.secret.name}; the secret is shown once")
        print(secret)
    else:
        out.message(added.secret, f"added {added.secret.name}")
    return 0


def webhook_secret_retire(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    out.message(registry.retire_webhook_secret(args.name))
    return 0


def _split_selector(value: str) -> tuple[str, str]:
    program, _, environment = value.partition("/")
    return program, environment


def webhook_list(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    out.rows(
        registry.list_webhooks(),
        {
            "name": lambda w: w.name,
            "url": lambda w: w.url,
            "events": lambda w: (
                ",".join(
                    _enum_name(dpb.DeploymentEventKind, k, "DEPLOYMENT_EVENT_KIND_") for k in w.event_kinds
                )
                or "all"
            ),
            "selectors": lambda w: (
                ",".join(f"{s.program or '*'}/{s.environment or '*'}" for s in w.selectors) or "all"
            ),
            "secrets": lambda w: " ".join(s.name.rsplit("/", 1)[-1] for s in w.secrets),
        },
    )
    return 0


def webhook_delete(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    out.message(registry.delete_webhook(args.id))
    return 0


def webhook_deliveries(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    deliveries = registry.list_webhook_deliveries(args.id, states=args.state or ())
    out.rows(
        (d for _, d in zip(range(args.limit), deliveries, strict=False)),
        {
            "delivery": lambda d: d.name.rsplit("/", 1)[-1],
            "event": lambda d: _enum_name(dpb.DeploymentEventKind, d.event_kind, "DEPLOYMENT_EVENT_KIND_"),
            "state": lambda d: _enum_name(dpb.DeliveryState, d.state, "DELIVERY_STATE_"),
            "attempts": lambda d: d.attempts,
            "last response": lambda d: d.last_response_code or d.last_error,
            "queued": lambda d: d.create_time.ToJsonString(),
        },
    )
    return 0


# -- access


def principal_create(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    out.message(
        registry.create_principal(
            args.id, type=args.type, display_name=args.display_name, team=args.team, email=args.email
        )
    )
    return 0


def principal_list(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    out.rows(
        registry.list_principals(include_disabled=args.all),
        {
            "name": lambda p: p.name,
            "type": lambda p: _enum_name(apb.PrincipalType, p.type, "PRINCIPAL_TYPE_"),
            "team": lambda p: p.team,
        },
    )
    return 0


def principal_disable(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    out.message(registry.disable_principal(args.principal, reason=args.reason, undo=args.undo))
    return 0


def principal_enable(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    out.message(registry.disable_principal(args.principal, undo=True))
    return 0


def token_revoke(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    out.message(registry.revoke_token(args.name))
    return 0


def revoke(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    out.message(registry.revoke_permission(args.permission))
    return 0


def token_create(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    response = registry.create_token(args.principal, description=args.description, ttl=args.ttl)
    if out.json:
        out.message(response)
    else:
        # The secret alone on stdout, so that `> alice.token` makes a token file; it is shown only now.
        out.errors.print(f"created {response.token.name} (the secret is shown once)")
        print(response.secret)
    return 0


def token_list(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    out.rows(
        registry.list_tokens(args.principal or "-"),
        {"name": lambda t: t.name, "description": lambda t: t.description},
    )
    return 0


def grant(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    out.message(registry.grant_permission(args.principal, action=args.action, resource=args.resource))
    return 0


def audit(registry: SyncRegistry, args: argparse.Namespace, out: Output) -> int:
    events = registry.list_audit_events(principal=args.principal or "", resource=args.resource or "")
    out.rows(
        (e for _, e in zip(range(args.limit), events, strict=False)),
        {
            "time": lambda e: e.time.ToJsonString(),
            "principal": lambda e: e.principal,
            "method": lambda e: e.method.rsplit(".", 1)[-1],
            "resource": lambda e: e.resource,
            "outcome": lambda e: _enum_name(apb.AuditOutcome, e.outcome, "AUDIT_OUTCOME_"),
        },
    )
    return 0


# -- the parser and the run


def _connection_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every operator command takes, before its name or after it."""
    group = parser.add_argument_group("connection and output")
    add_connection_flags(group, token=True)
    group.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def add_operator_commands(parser: argparse.ArgumentParser, commands: Any) -> None:
    """Adds the operator commands to `dspy-registry`'s parser and subparsers (dspy_registry/cli.py calls this)."""
    _connection_options(parser)
    # After the command's name too; suppressed defaults, so that they do not undo the ones given before it.
    common = [connection_options()]

    def add(parent: Any, name: str, run: Command, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = parent.add_parser(name, help=help, parents=common)
        parser.set_defaults(operator=run)
        return parser

    def group(name: str, help: str) -> Any:
        parser = commands.add_parser(name, help=help)
        return parser.add_subparsers(dest=f"{name}_command", required=True)

    signatures = group("signature", "register, list and show signatures")
    p = add(signatures, "register", signature_register, "register a signature version from a JSON spec")
    p.add_argument("name")
    p.add_argument("--file", required=True, help="the SignatureSpec as proto3 JSON")
    p.add_argument("--version", help="SemVer (else bumped by what changed)")
    p.add_argument("--metadata", action="append", metavar="KEY=VALUE")
    p = add(signatures, "list", signature_list, "list signatures")
    p.add_argument("--prefix", default="")
    p = add(signatures, "show", signature_show, "show a signature version")
    p.add_argument("name", help="NAME or NAME@VERSION")

    programs = group("program", "register, list, show, compare and yank program versions")
    p = add(programs, "register", program_register, "register a program version (large files streamed)")
    p.add_argument("name")
    p.add_argument("--file", required=True, help="the artifact (DSPy program state JSON)")
    p.add_argument("--signature", required=True, help="SIGNATURE or SIGNATURE@VERSION")
    p.add_argument("--version", help="SemVer (else bumped)")
    p.add_argument("--metadata", action="append", metavar="KEY=VALUE")
    p.add_argument("--performance", action="append", metavar="METRIC=NUMBER")
    p.add_argument("--label", action="append", metavar="KEY=VALUE")
    p = add(programs, "list", program_list, "list programs")
    p.add_argument("--environment")
    p.add_argument("--team")
    p.add_argument("--prefix", default="")
    p = add(
        programs,
        "show",
        program_show,
        "show a program version (latest, or the one an environment serves); for a bare NAME, also "
        "which versions are deployed where",
    )
    p.add_argument("name", help="NAME or NAME@VERSION")
    p.add_argument("--environment")
    p = add(programs, "versions", program_versions, "list a program's versions, newest first")
    p.add_argument("name")
    p = add(programs, "compare", program_compare, "compare two versions")
    p.add_argument("name")
    p.add_argument("base")
    p.add_argument("target_version", metavar="target", nargs="?", default="latest")
    p = add(programs, "upgrade-path", program_upgrade_path, "the steps from one version to another")
    p.add_argument("name")
    p.add_argument("from_version")
    p.add_argument("to_version", nargs="?", default="latest")
    p = add(programs, "yank", program_yank, "mark a version yanked (--undo lifts it)")
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("--reason", default="")
    p.add_argument("--undo", action="store_true")

    p = add(commands, "deploy", deploy, "deploy a version to an environment")
    p.add_argument("program")
    p.add_argument("version")
    p.add_argument("environment")
    p.add_argument("--strategy", choices=["canary", "blue_green", "replace"], help="else the environment's")
    p.add_argument("--canary", metavar="WEIGHTS", help="canary step weights, e.g. 10,50")
    p.add_argument("--pause", type=float, help="seconds each canary step holds")
    p.add_argument("--reason", default="")
    p.add_argument(
        "--supersede",
        action="store_true",
        help="replace a deployment of this target still in progress (it ends SUPERSEDED); without it, "
        "the call is refused with FAILED_PRECONDITION while one is",
    )
    p.add_argument(
        "--allow-breaking",
        action="store_true",
        help="deploy a version whose signature is incompatible with the one the environment serves "
        "(a removed or retyped field), where the environment's policy requires a compatible one",
    )
    p.add_argument("--wait", action="store_true", help="follow the steps until the deployment ends")
    p.add_argument("--timeout", type=float, default=600, help="seconds --wait waits")

    actions: list[tuple[str, str, Callable[[SyncRegistry, argparse.Namespace], Message]]] = [
        (
            "promote",
            "advance a deployment now (--full: all steps)",
            lambda r, a: r.promote_deployment(a.deployment, full=a.full, reason=a.reason),
        ),
        (
            "approve",
            "approve (or --reject) a deployment pending approval",
            lambda r, a: r.approve_deployment(a.deployment, comment=a.reason, reject=a.reject),
        ),
        ("abort", "abort a deployment", lambda r, a: r.abort_deployment(a.deployment, reason=a.reason)),
        ("rollback", "roll a deployment back to the previous version", _rollback),
    ]
    for name, help, call in actions:
        p = add(commands, name, _deployment_action(call), help)
        p.add_argument("deployment", help="deployments/ID or ID")
        p.add_argument("--reason", "--comment", dest="reason", default="")
        if name == "promote":
            p.add_argument("--full", action="store_true")
        if name == "approve":
            p.add_argument("--reject", action="store_true")

    p = add(commands, "status", status, "a target: versions and weights, deployment, health, sidecars")
    p.add_argument("program")
    p.add_argument("environment")
    p.add_argument(
        "--watch",
        action="store_true",
        help="then follow the rollout in progress until it ends: exit 0 when it succeeds, 3 when it "
        "rolls back, fails or is aborted",
    )
    p = add(commands, "history", history, "a program's deployments, newest first")
    p.add_argument("program")
    p.add_argument("environment", nargs="?")
    p.add_argument("--limit", type=int, default=50)
    p = add(commands, "watch", watch, "tail deployment events")
    p.add_argument("program", nargs="?", help="a name or a glob")
    p.add_argument("environment", nargs="?")
    p.add_argument("--start-revision", type=int, default=0)

    checks = group("check", "report CI's checks of program versions (an environment's required checks)")
    p = add(checks, "report", check_report, "report a check's state for a version (the `check` action)")
    p.add_argument("version", metavar="NAME@VERSION")
    p.add_argument("check", help="the check's name, e.g. integration_tests")
    p.add_argument("state", choices=["passed", "failed", "running"])
    p.add_argument("--url", default="", help="where a person reads the run")
    p.add_argument("--summary", default="", help="what the run found, in a line")

    environments = group("env", "list, show and change environments")
    add(environments, "list", env_list, "list environments")
    p = add(environments, "show", env_show, "show an environment")
    p.add_argument("name")
    p = add(environments, "set", env_set, "set fields: policy.required_approvals=2 ...")
    p.add_argument("name")
    p.add_argument("assignments", nargs="+", metavar="PATH=VALUE")

    webhooks = group("webhook", "create, list and delete webhooks; their deliveries")
    p = add(webhooks, "create", webhook_create, "POST deployment events to a URL, signed")
    p.add_argument("id")
    p.add_argument("url")
    p.add_argument("--secret-file", help="the signing secret (else one is made and printed once)")
    kinds = [n.removeprefix("DEPLOYMENT_EVENT_KIND_").lower() for n in dpb.DeploymentEventKind.keys()][1:]
    p.add_argument("--event", action="append", choices=kinds, help="a kind to send (repeatable; else all)")
    p.add_argument("--select", action="append", metavar="PROGRAM/ENVIRONMENT", help="globs (repeatable)")
    p.add_argument("--description", default="")
    add(webhooks, "list", webhook_list, "list webhooks (never their secrets)")
    p = add(webhooks, "delete", webhook_delete, "delete a webhook; what it has pending is cancelled")
    p.add_argument("id", help="webhooks/ID or ID")
    p = add(webhooks, "deliveries", webhook_deliveries, "a webhook's deliveries, newest first")
    p.add_argument("id", help="webhooks/ID or ID")
    states = [n.removeprefix("DELIVERY_STATE_").lower() for n in dpb.DeliveryState.keys()][1:]
    p.add_argument("--state", action="append", choices=states)
    p.add_argument("--limit", type=int, default=50)
    webhook_secrets = webhooks.add_parser(
        "secret", help="rotate a webhook's signing secrets: add the new one, then retire the old"
    ).add_subparsers(dest="webhook_secret_command", required=True)
    p = add(webhook_secrets, "add", webhook_secret_add, "add a signing secret: POSTs are signed with each")
    p.add_argument("id", help="webhooks/ID or ID")
    p.add_argument("--secret-file", help="the new secret (else one is made and printed once)")
    p = add(
        webhook_secrets, "retire", webhook_secret_retire, "retire a signing secret: POSTs stop carrying it"
    )
    p.add_argument("name", help="webhooks/ID/secrets/SECRET, as `webhook secret add` printed it")

    principals = group("principal", "create and list principals")
    p = add(principals, "create", principal_create, "create a user or service account")
    p.add_argument("id")
    p.add_argument("--type", choices=["user", "service_account"], default="user")
    p.add_argument("--display-name", default="")
    p.add_argument("--team", default="")
    p.add_argument("--email", default="")
    p = add(principals, "list", principal_list, "list principals")
    p.add_argument("--all", action="store_true", help="disabled ones too")
    p = add(principals, "disable", principal_disable, "disable a principal: its calls fail at once")
    p.add_argument("principal")
    p.add_argument("--reason", default="")
    p.add_argument("--undo", action="store_true", help="enable it again")
    p = add(principals, "enable", principal_enable, "enable a disabled principal again (disable --undo)")
    p.add_argument("principal")

    tokens = group("token", "create and list tokens")
    p = add(tokens, "create", token_create, "create a token; prints the secret (once)")
    p.add_argument("principal")
    p.add_argument("--description", default="")
    p.add_argument("--ttl", type=float, help="seconds until it expires")
    p = add(tokens, "list", token_list, "list tokens (never their secrets)")
    p.add_argument("principal", nargs="?")
    p = add(tokens, "revoke", token_revoke, "revoke a token: principals/NAME/tokens/ID")
    p.add_argument("name")

    p = add(commands, "grant", grant, "grant an action on a name or glob")
    p.add_argument("principal")
    p.add_argument("action", choices=["read", "register", "deploy", "rollback", "approve", "admin", "check"])
    p.add_argument("resource")
    p = add(commands, "revoke", revoke, "revoke a grant: permissions/ID (as grant printed it)")
    p.add_argument("permission")
    p = add(commands, "audit", audit, "the audit log, newest first")
    p.add_argument("--principal")
    p.add_argument("--resource")
    p.add_argument("--limit", type=int, default=50)


def _print_error(err: RegistryError, out: Output) -> None:
    document: dict[str, Any] = {"code": err.code.name, "message": err.message}
    if err.field_violations:
        document["field_violations"] = [{"field": f, "description": d} for f, d in err.field_violations]
    if err.precondition_violations:
        document["precondition_violations"] = [
            {"type": t, "subject": s, "description": d} for t, s, d in err.precondition_violations
        ]
    if out.json:
        print(json.dumps({"error": document}, indent=2), file=sys.stderr)
        return
    lines = [f"error: {err.code.name}: {err.message}"]
    lines += [f"  {f}: {d}" for f, d in err.field_violations]
    lines += [f"  {t} {s}: {d}" for t, s, d in err.precondition_violations]
    print("\n".join(lines), file=sys.stderr)


def connection_options() -> argparse.ArgumentParser:
    """The connection options as a parent parser, for a command's own parser: they may follow its name."""
    return _connection_options(argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS))


def run_operator(args: argparse.Namespace) -> int:
    """Runs the operator command `args` names; the exit code."""
    out = Output(args.json)
    # Ctrl-C ends the process at once (exit 130): a KeyboardInterrupt in the main thread would leave the
    # client's loop thread inside a stream (`watch`) and the process hanging; the server drops the call.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        settings = settings_from_flags(args)
    except (ConfigError, OSError) as err:  # a bad value; a token file that cannot be read
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        # Resolved once, here: the client is given every setting, and looks for none again.
        with SyncRegistry.from_settings(settings) as registry:
            code: int = args.operator(registry, args, out)
            return code
    except RegistryError as err:
        _print_error(err, out)
        return EXIT_CALL_FAILED
    except BrokenPipeError:
        # The reader left (`| head`): say nothing, and keep Python from failing again on the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_CALL_FAILED
    except (OSError, ValueError, json_format.ParseError) as err:
        # A file that cannot be read, a spec that does not parse, a missing setting.
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CALL_FAILED

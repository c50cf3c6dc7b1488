"""`dspy-registry sidecar`: the watcher as a process, for serving code in any language.

For each watched program it keeps, in `--dir`:

    DIR/{program}/sha256-{hex}.json   each served artifact, by digest (.bin when not JSON)
    DIR/{program}/target.json         {"program", "environment", "revision",
                                       "stable": {"version", "digest", "file"},
                                       "candidate": {"version", "digest", "file", "weight_percent"} | null}
    DIR/ready                         once every program has a stable version (and --on-change ran)

Every file is written atomically (temporary file, fsync, rename), artifacts
before the target.json that names them, so a reader that follows target.json
always finds whole files. Artifacts no longer named are deleted afterwards.
After each change `--on-change` runs (through the shell) with
DSPY_REGISTRY_PROGRAM, DSPY_REGISTRY_ENVIRONMENT and DSPY_REGISTRY_TARGET_FILE
(the target.json path) set, and DSPY_REGISTRY_TARGET, the token file and TLS
set to the sidecar's own connection, so that a `dspy-registry` command in the
hook reaches the same server. A cache under DIR/.cache lets a restarted
sidecar serve before it reaches the server.

The server, the token and TLS come from the flags, else DSPY_REGISTRY_* variables,
else the client config file ($DSPY_REGISTRY_CONFIG ...), as for every client-side
command (client/config.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from .config import ConfigError, Settings
from .flags import add_connection_flags, settings_from_flags
from .logs import configure_logging
from .watcher import Loaded, ProgramWatcher, Serving, write_atomically

log = logging.getLogger("dspy_registry.sidecar")


def add_sidecar_arguments(parser: argparse.ArgumentParser) -> None:
    connection = parser.add_argument_group(
        "connection (else DSPY_REGISTRY_* variables, else the config file)"
    )
    add_connection_flags(connection, token=False)
    parser.add_argument("--program", action="append", required=True, help="a program to serve (repeatable)")
    parser.add_argument("--environment", required=True, help="the environment whose targets to follow")
    parser.add_argument("--dir", required=True, type=Path, help="where to write artifacts and target.json")
    parser.add_argument(
        "--id",
        default=os.environ.get("HOSTNAME", "").lower() or f"sidecar-{os.getpid()}",
        help="this sidecar's id in status reports (default: $HOSTNAME, e.g. the pod name)",
    )
    parser.add_argument("--on-change", default="", help="a shell command to run after each change")
    parser.add_argument("--heartbeat", type=float, default=10.0, help="seconds between status reports")
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="text lines, or one JSON object per line for a log collector (else "
        "DSPY_REGISTRY_LOG_FORMAT, else text)",
    )


class FileSidecar:
    def __init__(
        self, directory: Path, programs: list[str], on_change: str, hook_env: dict[str, str]
    ) -> None:
        self.dir = directory
        self.programs = programs
        self.on_change = on_change
        self.hook_env = hook_env  # the connection's variables, for a `dspy-registry` command in the hook
        self.ready: set[str] = set()

    @staticmethod
    def load(program: str, data: bytes, media_type: str) -> tuple[bytes, str]:
        return data, media_type

    def _file(self, program: str, loaded: Loaded) -> str:
        data, media_type = loaded.value
        name = loaded.digest.replace(":", "-") + (".json" if media_type.endswith("json") else ".bin")
        path = self.dir / program / name
        if not path.exists():
            write_atomically(path, data)
        return name

    async def on_swap(self, program: str, environment: str, serving: Serving) -> None:
        target: dict[str, Any] = {
            "program": program,
            "environment": environment,
            "revision": serving.revision,
            "stable": None,
            "candidate": None,
        }
        if serving.stable is not None:
            s = serving.stable
            target["stable"] = {"version": s.version, "digest": s.digest, "file": self._file(program, s)}
        if serving.candidate is not None:
            c = serving.candidate
            target["candidate"] = {
                "version": c.version,
                "digest": c.digest,
                "file": self._file(program, c),
                "weight_percent": serving.weight_percent,
            }
        path = self.dir / program / "target.json"
        write_atomically(path, json.dumps(target, indent=2).encode())
        named = {t["file"] for t in (target["stable"], target["candidate"]) if t}
        for old in (self.dir / program).glob("sha256-*"):
            if old.name not in named:
                old.unlink(missing_ok=True)
        if self.on_change:
            env = dict(os.environ, **self.hook_env)
            env |= {"DSPY_REGISTRY_PROGRAM": program, "DSPY_REGISTRY_ENVIRONMENT": environment}
            env["DSPY_REGISTRY_TARGET_FILE"] = str(path)
            code = await asyncio.to_thread(_shell, self.on_change, env)
            if code != 0:
                log.warning("--on-change exited with %s", code)
        # Ready once the hook has run too: by then the serving process has what it needs.
        if serving.stable is not None:
            self.ready.add(program)
        if self.ready >= set(self.programs):
            write_atomically(self.dir / "ready", str(serving.revision).encode())


def _shell(command: str, env: dict[str, str]) -> int:
    """Run `command` with /bin/sh; its exit code.

    posix_spawn, not fork: a forked child of a process with gRPC's threads can
    crash before it execs (we saw SIGSEGV in about one run in three).
    """
    pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", command], env)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def main(args: argparse.Namespace) -> int:
    """`dspy-registry sidecar`: 0 once stopped by SIGTERM or SIGINT; 2 for a setting that cannot be
    used (a bad value, a token or TLS file that cannot be read); 1 when it cannot start (its directory
    cannot be read or written)."""
    try:
        log_format = args.log_format or os.environ.get("DSPY_REGISTRY_LOG_FORMAT") or "text"
        if log_format not in ("text", "json"):
            raise ConfigError(f"DSPY_REGISTRY_LOG_FORMAT={log_format!r}: expected text or json")
        settings = settings_from_flags(args)
    except (ConfigError, OSError) as err:
        print(f"dspy-registry sidecar: error: {err}", file=sys.stderr)
        return 2
    configure_logging(log_format)
    try:
        asyncio.run(run(args, settings))
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


def _hook_env(args: argparse.Namespace, settings: Settings) -> dict[str, str]:
    """The connection's variables for the hook: its `dspy-registry` commands reach the same server."""
    env = {"DSPY_REGISTRY_TARGET": settings.target}
    if args.token_file:
        env["DSPY_REGISTRY_TOKEN_FILE"] = os.path.abspath(args.token_file)
    if args.config:
        env["DSPY_REGISTRY_CONFIG"] = os.path.abspath(args.config)
    tls = settings.tls
    env["DSPY_REGISTRY_TLS"] = "0" if tls is None else "1"
    if tls is not None:
        for name, path in (("TLS_CA", tls.ca), ("CLIENT_CERT", tls.cert), ("CLIENT_KEY", tls.key)):
            if path:
                env[f"DSPY_REGISTRY_{name}"] = os.path.abspath(path)
    return env


async def run(args: argparse.Namespace, settings: Settings) -> None:
    files = FileSidecar(args.dir, args.program, args.on_change, _hook_env(args, settings))
    (args.dir / "ready").unlink(missing_ok=True)  # not ready until this run has something to serve
    watcher = ProgramWatcher.from_settings(
        [(p, args.environment) for p in args.program],
        settings,  # resolved once, in main: nothing is looked up again
        sidecar_id=args.id,
        cache_dir=args.dir / ".cache",
        loader=FileSidecar.load,
        on_swap=files.on_swap,
        heartbeat=args.heartbeat,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with watcher:
        transport = "TLS" if settings.tls is not None else "plaintext"
        log.info(
            "sidecar %s watching %s in %s on %s (%s)",
            args.id,
            ", ".join(args.program),
            args.environment,
            settings.target,
            transport,
        )
        await stop.wait()

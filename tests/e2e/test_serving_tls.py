"""The serving path over TLS: `dspy-registry sidecar` processes configured the way a pod is (only a
config file, or only a client certificate), and `SyncProgramWatcher` inside a threaded HTTP server,
each against a server with a throwaway CA, following a canary and a rollback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dspy_registry.client import Registry, SyncProgramWatcher, Tls
from dspy_registry.server.app import App
from dspy_registry.v1 import deployment_pb2 as dpb
from tests.certificates import Authority, tls_config
from tests.e2e.conftest import SERVE
from tests.eventually import until
from tests.factories import dspy_state, spec_proto

SUBJECT = "CN=pod-mtls,O=dspy-registry tests"  # RFC 2253, as grpc reports it


@dataclass
class TlsServer:
    app: App
    address: str  # localhost:port: the name the server's certificate is for
    folder: Path  # ca.crt, admin.token
    ca: Authority


async def _start(folder: Path, *, mutual: bool) -> TlsServer:
    ca = Authority("serving CA")
    app = App(tls_config(folder, ca, mutual=mutual))
    port = await app.start()
    return TlsServer(app, f"localhost:{port}", folder, ca)


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[TlsServer]:
    server = await _start(tmp_path, mutual=False)
    yield server
    await server.app.stop(grace=0)


def _admin(server: TlsServer, client: str | None = None) -> Registry:
    """The admin's client: the token, the server's CA, and under mutual TLS a certificate `client`."""
    folder = server.folder
    tls = Tls(ca=folder / "ca.crt")
    if client is not None:
        server.ca.issue(client, server=False).save(folder, client)
        tls = Tls(ca=folder / "ca.crt", cert=folder / f"{client}.crt", key=folder / f"{client}.key")
    return Registry.connect(server.address, token_file=folder / "admin.token", tls=tls)


async def _register(registry: Registry, *versions: str) -> None:
    await registry.register_signature("sig", signature=spec_proto(), version="1.0.0")
    for version in versions:
        await registry.register_program(
            "p", program=dspy_state(version), signature_name="sig", version=version
        )
    await registry.create_deployment("p", versions[0], "staging", strategy="replace")


def _clean_env(home: Path, **more: str) -> dict[str, str]:
    """This process's environment without any DSPY_REGISTRY_* setting and with no user config file;
    `dspy-registry` on the PATH (for the hooks)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPY_REGISTRY_")}
    env["PATH"] = f"{SERVE.parent}{os.pathsep}{env['PATH']}"
    return env | {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")} | more


class Sidecar:
    def __init__(self, folder: Path, env: dict[str, str], *flags: str) -> None:
        self.dir = folder / "serving"
        self.log = folder / "sidecar.log"
        command = [
            str(SERVE),
            "sidecar",
            "--program",
            "p",
            "--environment",
            "staging",
            "--dir",
            str(self.dir),
        ]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [*command, "--heartbeat", "1", *flags],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=folder,
            )

    def target(self) -> dict[str, object] | None:
        try:
            found: dict[str, object] = json.loads((self.dir / "p" / "target.json").read_text())
        except FileNotFoundError:
            return None
        return found

    def serves(self, stable: str, candidate: str | None = None) -> bool:
        target = self.target()
        if target is None:
            return False
        now = target["stable"], target["candidate"]
        return (
            isinstance(now[0], dict)
            and now[0]["version"] == stable
            and (
                now[1] is None
                if candidate is None
                else isinstance(now[1], dict) and now[1]["version"] == candidate
            )
        )

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(15)


async def _canary_then_rollback(registry: Registry, serves: Callable[..., bool]) -> None:
    """1.1.0 as a 30 % canary held at its step, promoted, then rolled back: `serves(stable,
    candidate=)` must follow each change."""
    canary = await registry.create_deployment(
        "p", "1.1.0", "staging", strategy="canary", canary_percent=[30], pause=3600
    )
    await until(lambda: serves("1.0.0", candidate="1.1.0"), "the 30 % candidate")
    await registry.promote_deployment(canary.name, full=True)
    await until(lambda: serves("1.1.0"), "1.1.0 alone")
    await registry.rollback_deployment(canary.name, reason="worse")
    await until(lambda: serves("1.0.0"), "rolled back to 1.0.0")


async def test_a_sidecar_configured_by_its_config_file_alone_follows_a_canary_and_a_rollback(
    tls_server: TlsServer, tmp_path: Path
) -> None:
    async with _admin(tls_server) as registry:
        await _register(registry, "1.0.0", "1.1.0")
        # What a pod mounts: the client config file, naming the token file and the CA beside it.
        (tmp_path / "config.toml").write_text(
            f'target = "{tls_server.address}"\ntoken_file = "admin.token"\ntls_ca = "ca.crt"\n'
        )
        env = _clean_env(tmp_path, DSPY_REGISTRY_CONFIG=str(tmp_path / "config.toml"))
        # Each change: the server's status of the target, through the CLI with the sidecar's settings.
        hook = (
            "dspy-registry status p staging --json > status.$$; code=$?; mv status.$$ status.json; "
            "echo $code >> hooks.log"
        )
        sidecar = Sidecar(tmp_path, env, "--id", "pod-file", "--on-change", hook)
        try:
            await until(lambda: sidecar.serves("1.0.0"), "1.0.0 in target.json")
            await _canary_then_rollback(registry, sidecar.serves)
            target = sidecar.target()
            assert target is not None and target["candidate"] is None

            def hooks() -> list[str]:
                log = tmp_path / "hooks.log"
                return log.read_text().split() if log.exists() else []

            def rolled_back() -> bool:
                status = json.loads((tmp_path / "status.json").read_text())["target"]
                return status["stable"]["version"] == "1.0.0" and "candidate" not in status

            # Four changes (1.0.0, the candidate, 1.1.0, 1.0.0 again), each with its hook run; the last
            # one's status is the rolled-back target.
            await until(lambda: len(hooks()) >= 4 and rolled_back(), "a hook run after each change")
            assert set(hooks()) == {"0"}, sidecar.log.read_text()
            answer = await registry.get_deployment_status("p", "staging")
            assert [s.sidecar_id for s in answer.sidecars] == ["pod-file"]
        finally:
            code = sidecar.stop()
        assert code == 0, sidecar.log.read_text()
        assert f"on {tls_server.address} (TLS)" in sidecar.log.read_text()


async def test_with_mutual_tls_a_sidecar_whose_certificate_is_its_principal_needs_no_token(
    tmp_path: Path,
) -> None:
    server = await _start(tmp_path, mutual=True)
    try:
        async with _admin(server, client="operator") as registry:
            await _register(registry, "1.0.0", "1.1.0")
            await registry.create_principal("pod", type="service_account", certificate_subjects=[SUBJECT])
            await registry.grant_permission("pod", action="read", resource="p")
            server.ca.issue("pod-mtls", server=False).save(tmp_path, "pod")
            tls = ["--tls-ca", "ca.crt", "--tls-cert", "pod.crt", "--tls-key", "pod.key"]
            # The hook's command gets the sidecar's connection (flags here) through the variables.
            hook = "dspy-registry status p staging --json > /dev/null; echo $? >> hooks.log"
            sidecar = Sidecar(
                tmp_path,
                _clean_env(tmp_path),
                "--server",
                server.address,
                "--id",
                "pod-1",
                *tls,
                "--on-change",
                hook,
            )
            try:
                await until(lambda: sidecar.serves("1.0.0"), "1.0.0 in target.json")
                await _canary_then_rollback(registry, sidecar.serves)

                async def acked() -> bool:
                    answer = await registry.get_deployment_status("p", "staging")
                    return [
                        (s.sidecar_id, [(t.version, t.result) for t in s.targets]) for s in answer.sidecars
                    ] == [("pod-1", [("1.0.0", dpb.APPLY_RESULT_ACK)])]

                await until(acked, "pod-1's ACK of 1.0.0")
                hooks = tmp_path / "hooks.log"
                # A run after each of the four changes, each reaching the server with the pod's certificate.
                await until(lambda: hooks.exists() and len(hooks.read_text().split()) >= 4, "four hook runs")
                assert set(hooks.read_text().split()) == {"0"}, sidecar.log.read_text()
            finally:
                code = sidecar.stop()
            assert code == 0, sidecar.log.read_text()
    finally:
        await server.app.stop(grace=0)


async def test_a_plaintext_sidecar_against_a_tls_server_says_so(
    tls_server: TlsServer, tmp_path: Path
) -> None:
    async with _admin(tls_server) as registry:
        await _register(registry, "1.0.0")
    env = _clean_env(tmp_path, DSPY_REGISTRY_TOKEN_FILE=str(tmp_path / "admin.token"))
    sidecar = Sidecar(tmp_path, env, "--server", tls_server.address, "--id", "pod-plain")
    try:
        hint = f"connects to {tls_server.address} in plaintext: if the server serves TLS, name its CA"
        await until(lambda: hint in sidecar.log.read_text(), "the plaintext hint in the log")
        assert "watch ended (UNAVAILABLE" in sidecar.log.read_text()
        assert sidecar.target() is None and not (sidecar.dir / "ready").exists()
    finally:
        code = sidecar.stop()
    assert code == 0, sidecar.log.read_text()


async def test_sync_program_watcher_serves_threaded_http_requests_through_a_canary_and_a_rollback(
    tls_server: TlsServer, tmp_path: Path
) -> None:
    async with _admin(tls_server) as registry:
        await _register(registry, "1.0.0", "1.1.0")
        folder = tls_server.folder
        watcher = SyncProgramWatcher.connect(
            [("p", "staging")],
            sidecar_id="pod-http",
            target=tls_server.address,
            token_file=folder / "admin.token",
            tls=folder / "ca.crt",
            metrics_interval=0.5,
        )
        # The server runs on this test's loop: the watcher's blocking calls go to threads.
        await asyncio.to_thread(watcher.start)
        await asyncio.to_thread(watcher.wait_for, lambda w: w.get("p").version == "1.0.0")

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                try:
                    with watcher.route("p", routing_key=self.path) as program:
                        body = json.dumps({"version": program.version, "value": program.value}).encode()
                    self.send_response(200)
                except Exception as exc:
                    body = repr(exc).encode()
                    self.send_response(500)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=http.serve_forever, daemon=True).start()
        done = threading.Event()
        seen: list[str] = []
        failures: list[str] = []

        def load(worker: int) -> None:
            n = 0
            while not done.is_set():
                n += 1
                url = f"http://127.0.0.1:{http.server_port}/user-{worker}-{n}"
                try:
                    with urllib.request.urlopen(url, timeout=30) as response:
                        seen.append(json.loads(response.read())["version"])
                except Exception as exc:
                    failures.append(repr(exc))

        workers = [threading.Thread(target=load, args=(i,)) for i in range(4)]
        for w in workers:
            w.start()
        try:
            await _canary_then_rollback(
                registry, lambda stable, candidate=None: _holds(watcher, stable, candidate)
            )
            count = len(seen)
            await until(lambda: len(seen) > count + 20, "requests after the rollback")

            def ask() -> str:
                url = f"http://127.0.0.1:{http.server_port}/after"
                with urllib.request.urlopen(url, timeout=30) as response:
                    return str(json.loads(response.read())["version"])

            assert await asyncio.to_thread(ask) == "1.0.0"  # a request begun after the rollback
        finally:
            done.set()
            for w in workers:
                await asyncio.to_thread(w.join)
            http.shutdown()
            http.server_close()
            await asyncio.to_thread(watcher.stop)
        assert failures == []
        assert {"1.0.0", "1.1.0"} <= set(seen)

        async def reported() -> bool:  # the routed requests were measured and sent
            answer = await registry.get_deployment_status("p", "staging")
            return any(h.request_count > 0 for h in answer.health)

        await until(reported, "metric windows from the watcher")


def _holds(watcher: SyncProgramWatcher, stable: str, candidate: str | None) -> bool:
    serving = watcher.serving("p")
    held = serving.candidate.version if serving.candidate else None
    return serving.stable is not None and serving.stable.version == stable and held == candidate

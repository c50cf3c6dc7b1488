"""`dspy-registry doctor`: is this client set up to use the server? One line per check, each with a fix.

The checks run in the order a connection needs them, from the same settings every operator command
resolves (options, then the environment, then the config file): the settings themselves, the
server's address reachable over TCP, TLS as configured (and a TLS server not mistaken for a
plaintext one), a token, WhoAmI answered with it, the server's release against this client's, and
this machine's clock against the server's. A check that cannot run because an earlier one failed is
skipped, saying so. Exit code 2 when the settings cannot be used (as for every command), else 1
when any check failed; warnings alone exit 0.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from dspy_registry.v1 import access_pb2 as apb

from .cli import connection_options
from .cli_help import version
from .config import ConfigError, Settings, Tls
from .errors import RegistryError
from .flags import settings_from_flags
from .sync import SyncRegistry

CONNECT_TIMEOUT = 3.0
# Beyond this a token's expiry, `--ttl`, and webhook receivers' five minutes are judged on clocks apart.
SKEW_WARNING_SECONDS = 1.0
SKEW_FAILURE_SECONDS = 60.0

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"
EXIT_FAILED = 1
EXIT_USAGE = 2  # the settings cannot be used: the commands' usage error


@dataclass(frozen=True)
class Finding:
    state: str
    check: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.state:<4}  {self.check:<10} {self.detail}"
        return f"{text}\n      {'':<10} fix: {self.fix}" if self.fix else text


def add_doctor_command(commands: Any) -> None:
    commands.add_parser(
        "doctor",
        help="check this client's setup: address, TLS, token, WhoAmI, versions, clock",
        description=__doc__,
        parents=[connection_options()],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _settings(args: argparse.Namespace) -> tuple[Settings | None, Finding]:
    try:
        # As every other command resolves them: flags, variables, the config file, defaults.
        settings = settings_from_flags(args)
    except (OSError, ConfigError) as exc:  # a bad value; a token file that cannot be read
        return None, Finding(FAIL, "settings", str(exc), "fix the option, variable or config file it names")
    tls = "TLS" if settings.tls is not None else "plaintext"
    return settings, Finding(OK, "settings", f"server {settings.target} ({tls})")


def _host_port(target: str) -> tuple[str, int]:
    address = target.removeprefix("dns:///").removeprefix("ipv4:")
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "localhost", int(port) if port.isdigit() else 443


def _reachable(settings: Settings) -> Finding:
    host, port = _host_port(settings.target)
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        return Finding(
            FAIL,
            "reachable",
            f"cannot connect to {host}:{port}: {exc}",
            "start the server, or point --server (DSPY_REGISTRY_TARGET) at it",
        )
    return Finding(
        OK,
        "reachable",
        f"{host}:{port} accepted a connection in {1000 * (time.monotonic() - started):.1f} ms",
    )


def _handshake(host: str, port: int, context: ssl.SSLContext) -> None:
    with (
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=host),
    ):
        pass


def _tls(settings: Settings) -> Finding:
    host, port = _host_port(settings.target)
    if settings.tls is None:
        # A TLS server takes a plaintext client's HTTP/2 preface as garbage: say so before WhoAmI fails.
        probe = ssl.create_default_context()
        probe.check_hostname = False
        probe.verify_mode = ssl.CERT_NONE
        try:
            _handshake(host, port, probe)
        except (OSError, ssl.SSLError):
            return Finding(OK, "tls", "off: the server speaks plaintext, as configured")
        return Finding(
            FAIL,
            "tls",
            "the server speaks TLS, but this client is configured for plaintext",
            "pass --tls-ca with the CA that signed the server's certificate (`system` for public roots)",
        )
    return _verified(settings.tls, host, port)


def _verified(tls: Tls, host: str, port: int) -> Finding:
    try:
        context = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
        if tls.cert and tls.key:
            context.load_cert_chain(str(tls.cert), str(tls.key))
        _handshake(host, port, context)
    except ssl.SSLCertVerificationError as exc:
        return Finding(
            FAIL,
            "tls",
            f"the server's certificate is not trusted: {exc.verify_message}",
            "pass --tls-ca with the CA that signed it, and reach the server by a name its certificate lists",
        )
    except (OSError, ssl.SSLError) as exc:
        return Finding(
            FAIL,
            "tls",
            f"no TLS handshake with {host}:{port}: {exc}",
            "is the server started with --tls-cert?",
        )
    mutual = ", with this client's certificate" if tls.cert else ""
    return Finding(OK, "tls", f"handshake done, the server's certificate verified{mutual}")


def _token(settings: Settings) -> Finding:
    if settings.token is None:
        if settings.tls is not None and settings.tls.cert:
            return Finding(OK, "token", "none: the client certificate is the credential")
        return Finding(
            FAIL,
            "token",
            "no token in the options, the environment or the config file",
            "pass --token-file (or set DSPY_REGISTRY_TOKEN_FILE) with a token from `dspy-registry token create`",
        )
    # Judged from where the settings took the token, not from where it might have come: a token
    # variable wins over a token file's variable, whose file then need not exist.
    source = settings.token_file
    if source is None:
        return Finding(OK, "token", f"given by {settings.token_origin}")
    try:
        mode = source.stat().st_mode
    except OSError as exc:  # gone since it was read
        return Finding(FAIL, "token", f"{source}: {exc.strerror}", f"fix {settings.token_origin}")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return Finding(WARN, "token", f"{source} is readable by others", f"chmod 600 {source}")
    return Finding(OK, "token", f"from {source}, readable by its owner only")


def _who(registry: SyncRegistry) -> tuple[apb.WhoAmIResponse | None, float, float, Finding]:
    sent = time.time()
    try:
        who = registry.who_am_i()
    except RegistryError as exc:
        fixes = {
            grpc.StatusCode.UNAUTHENTICATED: "the token is unknown, revoked or expired, or its principal disabled: "
            "ask an admin for a new one (`dspy-registry token create PRINCIPAL`)",
            grpc.StatusCode.UNAVAILABLE: "the server did not answer gRPC: check the address, and TLS against "
            "how the server was started",
        }
        return (
            None,
            0.0,
            0.0,
            Finding(FAIL, "whoami", f"{exc.code.name}: {exc.message}", fixes.get(exc.code, "")),
        )
    received = time.time()
    grants = len(who.permissions)
    return who, sent, received, Finding(OK, "whoami", f"{who.principal.name}, {grants} grant(s)")


def _version(who: apb.WhoAmIResponse) -> Finding:
    mine = version()
    if not who.server_version:
        return Finding(
            WARN,
            "version",
            f"the server does not say its release (this client: {mine})",
            "upgrade the server",
        )
    if who.server_version != mine:
        return Finding(
            WARN,
            "version",
            f"server {who.server_version}, this client {mine}",
            f"install the server's release: pip install 'dspy-registry=={who.server_version}'",
        )
    return Finding(OK, "version", f"server and client are both {mine}")


def _clock(who: apb.WhoAmIResponse, sent: float, received: float) -> Finding:
    if not who.HasField("server_time"):
        return Finding(SKIP, "clock", "the server does not send its time")
    # The server read its clock somewhere between sending and receiving: the midpoint, within half the round trip.
    skew = who.server_time.seconds + who.server_time.nanos / 1e9 - (sent + received) / 2
    within = (received - sent) / 2
    detail = f"this machine is {abs(skew):.3f} s {'behind' if skew > 0 else 'ahead of'} the server (±{within:.3f} s)"
    fix = "synchronise this machine's clock (NTP, e.g. `timedatectl set-ntp true`)"
    if abs(skew) - within > SKEW_FAILURE_SECONDS:
        return Finding(FAIL, "clock", detail, fix)
    if abs(skew) - within > SKEW_WARNING_SECONDS:
        return Finding(WARN, "clock", detail, fix)
    return Finding(OK, "clock", detail)


def _checks(args: argparse.Namespace, report: Callable[[Finding], None]) -> bool:
    """Runs the checks in order; False when the settings could not be resolved (nothing else ran)."""
    settings, finding = _settings(args)
    report(finding)
    if settings is None:
        return False
    for check in (_reachable, _tls):
        finding = check(settings)
        report(finding)
        if finding.state == FAIL:
            report(Finding(SKIP, "whoami", "skipped: the connection must work first"))
            return True
    report(_token(settings))
    with SyncRegistry.from_settings(settings, retries=0, timeout=10) as registry:
        who, sent, received, finding = _who(registry)
    report(finding)
    if who is not None:
        report(_version(who))
        report(_clock(who, sent, received))
    return True


def run(args: argparse.Namespace) -> int:
    failed = False

    def report(finding: Finding) -> None:
        nonlocal failed
        failed = failed or finding.state == FAIL
        print(finding.line(), flush=True)

    resolved = _checks(args, report)
    if failed:
        print("some checks failed: see each fix above", file=sys.stderr)
    if not resolved:
        return EXIT_USAGE
    return EXIT_FAILED if failed else 0

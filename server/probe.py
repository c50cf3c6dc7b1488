"""`python -m dspy_registry.server.probe`: ask a server's grpc.health.v1 whether it serves; exit 0 if so.

The container's health check and the Kubernetes probes (deploy/), like grpc_health_probe but
shipped in the package: nothing to download into the image. Kubernetes' own `grpc:` probe speaks
plaintext only; this one speaks TLS and mutual TLS too.

    readiness  (default) the answer must be SERVING: migrations ran and the database answers
               (`--service dspy_registry.writes`: and writes can commit)
    liveness   `--alive`: any answer will do. A server whose database is away answers NOT_SERVING
               and is kept out of the load balancing by readiness; restarting it would not bring the
               database back, and would drop every watch stream it holds.

Exit status: 0 healthy, 1 not (the reason on stderr), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

EXIT_UNHEALTHY = 1
# config.DEFAULT_LISTEN, which is not imported: the server's modules would be most of a probe's
# cost, and the kubelet runs one every few seconds (tests/e2e/test_probe.py checks they agree).
DEFAULT_LISTEN = "127.0.0.1:50051"


def local_address(listen: str) -> str:
    """Where a probe in the server's own container reaches what `--listen` serves on."""
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"  # a wildcard listens on loopback too
    return f"{host}:{port}"


def parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="python -m dspy_registry.server.probe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--address",
        default=local_address(env("DSPY_REGISTRY_LISTEN", DEFAULT_LISTEN)),
        help="host:port of the server (default: where DSPY_REGISTRY_LISTEN serves, as seen from this host)",
    )
    p.add_argument("--service", default="", help="the health service name; '' is the whole server")
    p.add_argument("--alive", action="store_true", help="liveness: any answer, SERVING or not, passes")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    p.add_argument("--tls-ca", help="TLS: the CA bundle that signed the server's certificate")
    p.add_argument(
        "--tls-server-name",
        help="TLS: the name the server's certificate is for, when it is not the --address host "
        "(a probe dials 127.0.0.1; the certificate names the Service)",
    )
    p.add_argument("--tls-cert", help="mutual TLS: a client certificate (PEM), with --tls-key")
    p.add_argument("--tls-key", help="mutual TLS: the client certificate's private key (PEM)")
    return p


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if not args.tls_ca:
        return grpc.insecure_channel(args.address)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(args.tls_ca).read_bytes(),
        private_key=Path(args.tls_key).read_bytes() if args.tls_key else None,
        certificate_chain=Path(args.tls_cert).read_bytes() if args.tls_cert else None,
    )
    options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
    return grpc.secure_channel(args.address, credentials, options=options)


def check(args: argparse.Namespace) -> tuple[bool, str]:
    """Whether the server is healthy as `args` asks, and what it said."""
    with _channel(args) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        try:
            answer = health.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            # NOT_FOUND is an answer too: an unknown service name, from a server that is up.
            if args.alive and code == grpc.StatusCode.NOT_FOUND:
                return True, f"alive ({code.name}: {exc.details()})"
            return False, f"{args.address}: {code.name}: {exc.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    healthy = args.alive or answer.status == health_pb2.HealthCheckResponse.SERVING
    return healthy, status if healthy else f"{args.address}: {args.service or 'server'} is {status}"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser().error("--tls-cert and --tls-key go together")
    if (args.tls_cert or args.tls_server_name) and not args.tls_ca:
        parser().error("--tls-cert, --tls-key and --tls-server-name need --tls-ca")
    try:
        healthy, said = check(args)
    except OSError as exc:  # a certificate file that cannot be read
        print(f"probe: {exc}", file=sys.stderr)
        return EXIT_UNHEALTHY
    print(said, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else EXIT_UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())

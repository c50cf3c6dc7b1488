"""The connection flags of the commands (the operator commands, `dspy-registry sidecar`), and the
settings they resolve to with the variables and the config file below them (config.py)."""

from __future__ import annotations

import argparse
from typing import Any

from .config import Settings, resolve


def add_connection_flags(group: Any, *, token: bool) -> None:
    """--server, --token-file (and `token`: --token), --tls-ca, --tls-cert, --tls-key, --config."""
    group.add_argument("--server", "--target", dest="target", help="host:port (else DSPY_REGISTRY_TARGET)")
    group.add_argument("--token-file", help="a file holding the bearer token (else DSPY_REGISTRY_TOKEN_FILE)")
    if token:
        group.add_argument("--token", help="the bearer token itself (prefer --token-file: shell history)")
    group.add_argument(
        "--tls-ca", help="TLS with this CA bundle, `system` for the system roots (else DSPY_REGISTRY_TLS_CA)"
    )
    group.add_argument("--tls-cert", help="mutual TLS: this client certificate (PEM), with --tls-key")
    group.add_argument("--tls-key", help="mutual TLS: the client certificate's private key (PEM)")
    group.add_argument("--config", help="the client config file, TOML (else DSPY_REGISTRY_CONFIG)")


def settings_from_flags(args: argparse.Namespace) -> Settings:
    """The flags, then the variables, then the config file, then the defaults.

    Raises:
        ConfigError: A bad value in a variable or the config file, or a certificate without its key.
        OSError: A token file that cannot be read.
    """
    return resolve(
        args.target,
        token=getattr(args, "token", None),
        token_file=args.token_file,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        config_file=args.config,
    )

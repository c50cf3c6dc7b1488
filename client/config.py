"""Where the client connects and with what credentials.

Each setting is taken from the first place that has it:

1. the arguments of `Registry.connect` (`target`, `token` or `token_file`, `tls`);
2. the environment: DSPY_REGISTRY_TARGET, DSPY_REGISTRY_TOKEN, DSPY_REGISTRY_TOKEN_FILE;
3. a TOML file, $DSPY_REGISTRY_CONFIG or ~/.config/dspy-registry/config.toml, with the
   keys `target`, `token` or `token_file` (relative to the file), and `tls` (true for
   the system roots) or `tls_ca`, `tls_cert`, `tls_key` (paths, relative to the file);
4. the defaults: localhost:50051, no token, plaintext.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

DEFAULT_TARGET = "localhost:50051"
DEFAULT_CONFIG = Path("~/.config/dspy-registry/config.toml")


@dataclass(frozen=True)
class Tls:
    """TLS settings: `ca` verifies the server (None: the system roots); `cert` and `key` for mutual TLS."""

    ca: str | os.PathLike[str] | None = None
    cert: str | os.PathLike[str] | None = None
    key: str | os.PathLike[str] | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | os.PathLike[str] | None) -> bytes | None:
            return Path(path).expanduser().read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca), private_key=read(self.key), certificate_chain=read(self.cert)
        )


TlsArgument = bool | str | os.PathLike[str] | Tls | None


@dataclass(frozen=True)
class Settings:
    """The resolved connection settings."""

    target: str
    token: str | None
    tls: Tls | None


def config_path(env: Mapping[str, str]) -> Path:
    return Path(env.get("DSPY_REGISTRY_CONFIG") or DEFAULT_CONFIG).expanduser()


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with path.open("rb") as f:
        return tomllib.load(f)


def _as_tls(value: TlsArgument) -> Tls | None:
    if value is None or value is False:
        return None
    if value is True:
        return Tls()
    if isinstance(value, Tls):
        return value
    return Tls(ca=value)


def resolve(
    target: str | None = None,
    *,
    token: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    tls: TlsArgument = None,
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """The settings from arguments, then the environment, then the config file, then the defaults."""
    env = os.environ if env is None else env
    path = Path(config_file).expanduser() if config_file is not None else config_path(env)
    file = _read_file(path)
    here = path.parent

    def relative(value: object) -> str:
        return str(here / Path(str(value)).expanduser())

    resolved_target = target or env.get("DSPY_REGISTRY_TARGET") or file.get("target") or DEFAULT_TARGET
    if token is None and token_file is not None:
        token = Path(token_file).expanduser().read_text()
    if token is None:
        token = env.get("DSPY_REGISTRY_TOKEN") or None
    if token is None and env.get("DSPY_REGISTRY_TOKEN_FILE"):
        token = Path(env["DSPY_REGISTRY_TOKEN_FILE"]).expanduser().read_text()
    if token is None and file.get("token"):
        token = str(file["token"])
    if token is None and file.get("token_file"):
        token = Path(relative(file["token_file"])).read_text()

    if tls is None:
        if any(file.get(k) for k in ("tls_ca", "tls_cert", "tls_key")):
            tls = Tls(
                ca=relative(file["tls_ca"]) if file.get("tls_ca") else None,
                cert=relative(file["tls_cert"]) if file.get("tls_cert") else None,
                key=relative(file["tls_key"]) if file.get("tls_key") else None,
            )
        else:
            tls = bool(file.get("tls", False))
    return Settings(target=str(resolved_target), token=token.strip() if token else None, tls=_as_tls(tls))

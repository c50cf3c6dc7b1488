"""Where every client-side process connects, and with what credentials.

The CLI, `Registry`, `SyncRegistry`, `ProgramWatcher` and `dspy-registry sidecar` all resolve
their connection here, so that one setting means the same in each. A setting comes from the
first place that has it:

1. the arguments (`Registry.connect(target, token=, token_file=, tls=)`; the commands'
   `--server`, `--token`, `--token-file`, `--tls-ca`, `--tls-cert`, `--tls-key`);
2. the environment: DSPY_REGISTRY_TARGET, DSPY_REGISTRY_TOKEN, DSPY_REGISTRY_TOKEN_FILE,
   DSPY_REGISTRY_TLS (a boolean: TLS with the system roots), DSPY_REGISTRY_TLS_CA,
   DSPY_REGISTRY_CLIENT_CERT, DSPY_REGISTRY_CLIENT_KEY (not ..._TLS_CERT/_KEY: those are the
   server's own certificate, and a shell that exports them for `serve` runs the CLI too);
3. a TOML file: $DSPY_REGISTRY_CONFIG, else $XDG_CONFIG_HOME/dspy-registry/config.toml, else
   ~/.config/dspy-registry/config.toml, with the keys `target`, `token`, `token_file`, `tls`
   (true: the system roots), `tls_ca`, `tls_cert`, `tls_key` (paths relative to the file);
4. the defaults: localhost:50051, no token, plaintext.

TLS is resolved part by part: the server's CA from the first place naming one (`system`, or
`tls = true`, for the system roots), the client certificate and its key (mutual TLS) together from
the first place naming them; a place that names either turns TLS on, and `tls = false` (or
`tls=False`) at a higher place turns it off. A bad value — a file that does not parse, an unknown
key, a boolean that is not 1/0/true/false/yes/no, a certificate without its key — is a
`ConfigError` naming where it came from.
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
SYSTEM_ROOTS = "system"  # as a CA: the system's trust store
_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no"}
FILE_KEYS = ("target", "token", "token_file", "tls", "tls_ca", "tls_cert", "tls_key")


class ConfigError(ValueError):
    """A setting that cannot be used, with where it came from (a variable, a file's key)."""


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
    """The resolved connection settings, and where the token came from (doctor reports it)."""

    target: str
    token: str | None
    tls: Tls | None
    # The file the token was read from (None: given as a value, or no token), and the place that
    # gave the token or named its file: `--token-file`, `DSPY_REGISTRY_TOKEN`, `<config file>: token`….
    token_file: Path | None = None
    token_origin: str = ""


def parse_boolean(value: str, where: str) -> bool:
    """1/0/true/false/yes/no, in any case; else a ConfigError naming `where` the value came from."""
    word = value.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise ConfigError(f"{where}={value!r}: expected one of 1, 0, true, false, yes, no")


def config_path(env: Mapping[str, str]) -> Path:
    """The config file these variables name: $DSPY_REGISTRY_CONFIG, else the XDG location."""
    if env.get("DSPY_REGISTRY_CONFIG"):
        return Path(env["DSPY_REGISTRY_CONFIG"]).expanduser()
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path("~/.config").expanduser()
    return base / "dspy-registry" / "config.toml"


def read_file(path: Path) -> dict[str, Any]:
    """The file's settings ({} when there is no file), checked: known keys, each of its type."""
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not TOML: {err}") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read: {err.strerror}") from None
    for key, value in data.items():
        if key not in FILE_KEYS:
            raise ConfigError(f"{path}: unknown key {key!r} (known: {', '.join(FILE_KEYS)})")
        kind = bool if key == "tls" else str
        if not isinstance(value, kind):
            raise ConfigError(f"{path}: {key} must be a {'boolean' if kind is bool else 'string'}")
    return data


@dataclass(frozen=True)
class _TlsLayer:
    """What one place says of TLS; None: nothing (look further down)."""

    on: bool | None = None
    ca: str | None = None  # a path, or SYSTEM_ROOTS
    cert: str | None = None
    key: str | None = None


_PathArgument = str | os.PathLike[str] | None


def _layer(
    on: bool | None,
    ca: _PathArgument,
    cert: _PathArgument,
    key: _PathArgument,
    where: str,
    path: Path | None = None,
) -> _TlsLayer:
    def located(value: _PathArgument) -> str | None:
        if value is None or value == "":
            return None
        text = os.fspath(value)
        if path is None or text == SYSTEM_ROOTS:
            return text  # as given: relative to the working directory
        return str(path.parent / Path(text).expanduser())  # relative to the config file

    if bool(cert) != bool(key):
        raise ConfigError(f"{where}: a client certificate and its key go together (both or neither)")
    ca, cert, key = located(ca), located(cert), located(key)
    if on is True and ca is None:
        ca = SYSTEM_ROOTS  # TLS said on and no CA named at this place: the system roots
    if on is None and (ca or cert):
        on = True
    return _TlsLayer(on=on, ca=ca, cert=cert, key=key)


def _argument_layer(
    tls: TlsArgument, ca: _PathArgument, cert: _PathArgument, key: _PathArgument
) -> _TlsLayer:
    if tls is False:
        return _TlsLayer(on=False)
    if tls is True:
        return _TlsLayer(on=True, ca=SYSTEM_ROOTS)
    if isinstance(tls, Tls):
        return _layer(True, tls.ca, tls.cert, tls.key, "tls=")
    if tls is not None:
        ca = tls
    return _layer(None, ca, cert, key, "--tls-cert/--tls-key")


def _merge(layers: list[_TlsLayer]) -> Tls | None:
    on = next((layer.on for layer in layers if layer.on is not None), False)
    if not on:
        return None
    ca = next((layer.ca for layer in layers if layer.ca), None)
    pair = next((layer for layer in layers if layer.cert), None)
    return Tls(
        ca=None if ca in (None, SYSTEM_ROOTS) else ca,
        cert=pair.cert if pair else None,
        key=pair.key if pair else None,
    )


def _read_token(path: Path, where: str) -> str:
    try:
        return path.read_text()
    except OSError as err:
        # The same OSError (Registry.connect documents it), naming the setting that named the file.
        why = f"{where} names a token file that cannot be read: {err.strerror}"
        raise type(err)(err.errno, why, str(path)) from None


def resolve(
    target: str | None = None,
    *,
    token: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    tls: TlsArgument = None,
    tls_ca: str | os.PathLike[str] | None = None,
    tls_cert: str | os.PathLike[str] | None = None,
    tls_key: str | os.PathLike[str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """The settings from arguments, then the environment, then the config file, then the defaults.

    `tls` is `Registry.connect`'s argument (whole); `tls_ca` (`system` for the system roots),
    `tls_cert` and `tls_key` are the commands' flags, each a part that the lower places complete.

    Raises:
        ConfigError: A bad value in a variable or the file.
        OSError: A token file named cannot be read (FileNotFoundError: it does not exist); the
            message names the place that named it. Likewise a TLS file (CA, client certificate or
            key) of the settings resolved; the message names the file.
    """
    env = os.environ if env is None else env
    path = Path(config_file).expanduser() if config_file is not None else config_path(env)
    file = read_file(path)

    resolved_target = target or env.get("DSPY_REGISTRY_TARGET") or file.get("target") or DEFAULT_TARGET
    file_token = file.get("token_file")
    # The places that may give a token, in order, as (token, a file holding it, the place's name);
    # a file is read only when no place above it gave a token.
    places: list[tuple[str | None, Path | None, str]] = [
        (token, None, "--token"),
        (None, Path(token_file).expanduser() if token_file is not None else None, "--token-file"),
        (env.get("DSPY_REGISTRY_TOKEN") or None, None, "DSPY_REGISTRY_TOKEN"),
        (None, _env_path(env, "DSPY_REGISTRY_TOKEN_FILE"), "DSPY_REGISTRY_TOKEN_FILE"),
        (file.get("token") or None, None, f"{path}: token"),
        (None, path.parent / Path(file_token).expanduser() if file_token else None, f"{path}: token_file"),
    ]
    found: tuple[str, Path | None, str] | None = None
    for value, source, where in places:
        if value is None and source is not None:
            value = _read_token(source, where)
        if value is not None:
            found = (value.strip(), source, where)
            break
    resolved_token, read_from, origin = found if found and found[0] else (None, None, "")

    tls_variable = env.get("DSPY_REGISTRY_TLS")
    env_on = parse_boolean(tls_variable, "DSPY_REGISTRY_TLS") if tls_variable else None
    layers = [
        _argument_layer(tls, tls_ca, tls_cert, tls_key),
        _layer(
            env_on,
            env.get("DSPY_REGISTRY_TLS_CA"),
            env.get("DSPY_REGISTRY_CLIENT_CERT"),
            env.get("DSPY_REGISTRY_CLIENT_KEY"),
            "DSPY_REGISTRY_CLIENT_CERT/DSPY_REGISTRY_CLIENT_KEY",
        ),
        _layer(
            file.get("tls"), file.get("tls_ca"), file.get("tls_cert"), file.get("tls_key"), str(path), path
        ),
    ]
    resolved_tls = _merge(layers)
    if resolved_tls is not None:
        _check_readable(resolved_tls)
    return Settings(
        target=str(resolved_target),
        token=resolved_token,
        tls=resolved_tls,
        token_file=read_from,
        token_origin=origin,
    )


def _check_readable(tls: Tls) -> None:
    """The TLS files are read as a token file is: now, so that one that cannot be read is a setting that
    cannot be used (the commands' exit 2), not a failure to connect found later (exit 1, errno's words)."""
    for what, path in (("CA", tls.ca), ("client certificate", tls.cert), ("client key", tls.key)):
        if path:
            try:
                Path(path).expanduser().read_bytes()
            except OSError as err:
                why = f"the TLS {what} file cannot be read: {err.strerror}"
                raise type(err)(err.errno, why, os.fspath(path)) from None


def _env_path(env: Mapping[str, str], name: str) -> Path | None:
    return Path(env[name]).expanduser() if env.get(name) else None

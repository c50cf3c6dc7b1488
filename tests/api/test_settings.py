"""One configuration for every client-side process (client/config.py), and the server's variables
(server/config.py): where each setting comes from, TLS part by part, and bad values as one line that
names them, exit 2, for `serve`, the operator commands, the sidecar and doctor alike."""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

import pytest

from dspy_registry.client import ConfigError, Tls
from dspy_registry.client.config import DEFAULT_TARGET, resolve
from dspy_registry.server.config import (
    DEFAULT_DATABASE,
    add_serve_arguments,
    database_url,
    deprecated_settings,
    from_arguments,
)
from dspy_registry.server.config import ConfigError as ServeConfigError
from tests.e2e.conftest import SERVE


def test_the_config_file_is_found_by_variable_else_xdg_else_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for folder, target in (("xdg", "xdg:1"), ("home/.config", "home:1")):
        (tmp_path / folder / "dspy-registry").mkdir(parents=True)
        (tmp_path / folder / "dspy-registry" / "config.toml").write_text(f'target = "{target}"\n')
    named = tmp_path / "named.toml"
    named.write_text('target = "named:1"\n')
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # what ~ expands to
    assert resolve(env={}).target == "home:1"
    assert resolve(env={"XDG_CONFIG_HOME": str(tmp_path / "xdg")}).target == "xdg:1"
    assert resolve(
        env={"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "DSPY_REGISTRY_CONFIG": str(named)}
    ).target == ("named:1")
    assert resolve(env={"XDG_CONFIG_HOME": str(tmp_path / "none")}).target == DEFAULT_TARGET


def test_tls_comes_part_by_part_from_arguments_then_variables_then_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the flags' and variables' relative paths
    for name in ("file-ca.pem", "file.crt", "file.key", "env-ca.pem", "me.crt", "me.key", "c", "k"):
        (tmp_path / name).write_text("")  # the TLS files resolved are read then, as a token file is
    config = tmp_path / "config.toml"
    config.write_text('tls_ca = "file-ca.pem"\ntls_cert = "file.crt"\ntls_key = "file.key"\n')
    base = {"DSPY_REGISTRY_CONFIG": str(config)}
    assert resolve(env=base).tls == Tls(
        ca=str(tmp_path / "file-ca.pem"), cert=str(tmp_path / "file.crt"), key=str(tmp_path / "file.key")
    )
    # A variable's CA wins over the file's; the file's client certificate still completes it.
    env = base | {"DSPY_REGISTRY_TLS_CA": "env-ca.pem"}
    assert resolve(env=env).tls == Tls(
        ca="env-ca.pem", cert=str(tmp_path / "file.crt"), key=str(tmp_path / "file.key")
    )
    # The commands' flags: a certificate and key of their own, the CA from below; `system` roots.
    flags = resolve(tls_cert="me.crt", tls_key="me.key", env=env).tls
    assert flags == Tls(ca="env-ca.pem", cert="me.crt", key="me.key")
    assert resolve(tls_ca="system", env=base).tls == Tls(
        ca=None, cert=str(tmp_path / "file.crt"), key=str(tmp_path / "file.key")
    )
    # tls=False at a higher place turns TLS off; DSPY_REGISTRY_TLS=1 alone means the system roots.
    assert resolve(tls=False, env=env).tls is None
    assert resolve(env=base | {"DSPY_REGISTRY_TLS": "no"}).tls is None
    plain = {"DSPY_REGISTRY_CONFIG": str(tmp_path / "absent.toml")}
    assert resolve(env=plain | {"DSPY_REGISTRY_TLS": "YES"}).tls == Tls()
    assert resolve(
        env=plain | {"DSPY_REGISTRY_CLIENT_CERT": "c", "DSPY_REGISTRY_CLIENT_KEY": "k"}
    ).tls == Tls(cert="c", key="k")
    config.write_text("tls = true\n")
    assert resolve(env=base).tls == Tls()
    # A TLS file that cannot be read stays an OSError, as a token file's, naming the file and why.
    with pytest.raises(FileNotFoundError, match="the TLS client key file cannot be read: No such file"):
        resolve(tls_cert="me.crt", tls_key="absent.key", env=base)
    with pytest.raises(IsADirectoryError, match="the TLS CA file cannot be read: Is a directory"):
        resolve(tls_ca=str(tmp_path), env=base)


@pytest.mark.parametrize(
    ("file", "env", "says"),
    [
        ("target = [", {}, "not TOML"),
        ('tagret = "x:1"\n', {}, "unknown key 'tagret'"),
        ("tls = 1\n", {}, "tls must be a boolean"),
        ("target = 5\n", {}, "target must be a string"),
        ('tls_cert = "c.crt"\n', {}, "a client certificate and its key go together"),
        ("", {"DSPY_REGISTRY_TLS": "maybe"}, "DSPY_REGISTRY_TLS='maybe': expected one of 1, 0, true"),
        (
            "",
            {"DSPY_REGISTRY_CLIENT_KEY": "k"},
            "DSPY_REGISTRY_CLIENT_CERT/DSPY_REGISTRY_CLIENT_KEY: a client",
        ),
    ],
)
def test_a_bad_value_is_a_config_error_naming_it(
    tmp_path: Path, file: str, env: dict[str, str], says: str
) -> None:
    (tmp_path / "config.toml").write_text(file)
    with pytest.raises(ConfigError) as err:
        resolve(env={"DSPY_REGISTRY_CONFIG": str(tmp_path / "config.toml")} | env)
    assert says in str(err.value)
    if file:
        assert str(tmp_path / "config.toml") in str(err.value)


def test_the_settings_say_where_the_token_came_from(tmp_path: Path) -> None:
    (tmp_path / "a.token").write_text("from-a\n")
    (tmp_path / "config.toml").write_text('token_file = "a.token"\n')
    base = {"DSPY_REGISTRY_CONFIG": str(tmp_path / "config.toml")}
    missing = str(tmp_path / "missing.token")
    # The variable's token wins, and the token file's variable below it is not read.
    given = resolve(env=base | {"DSPY_REGISTRY_TOKEN": "t", "DSPY_REGISTRY_TOKEN_FILE": missing})
    assert (given.token, given.token_file, given.token_origin) == ("t", None, "DSPY_REGISTRY_TOKEN")
    from_file = resolve(env=base)
    assert (from_file.token, from_file.token_file) == ("from-a", tmp_path / "a.token")
    assert from_file.token_origin == f"{tmp_path / 'config.toml'}: token_file"
    assert resolve(token_file=tmp_path / "a.token", env={}).token_origin == "--token-file"
    none = resolve(env={"DSPY_REGISTRY_CONFIG": missing})
    assert (none.token, none.token_file, none.token_origin) == (None, None, "")
    # A token file that cannot be read stays an OSError (Registry.connect says so), naming its setting.
    with pytest.raises(FileNotFoundError, match="DSPY_REGISTRY_TOKEN_FILE names a token file"):
        resolve(env=base | {"DSPY_REGISTRY_TOKEN_FILE": missing})


def _serve_config(argv: list[str] | None = None) -> object:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return from_arguments(parser.parse_args(argv or []))


def test_serve_parses_its_variables_when_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, auth in (("true", False), ("1", False), ("YES", False), ("0", True), ("no", True)):
        monkeypatch.setenv("DSPY_REGISTRY_NO_AUTH", value)
        assert _serve_config().auth is auth  # type: ignore[attr-defined]
    monkeypatch.setenv("DSPY_REGISTRY_GRACE", "2.5")
    monkeypatch.setenv("DSPY_REGISTRY_LOG_LEVEL", "WARNING")
    config = _serve_config(["--no-auth"])
    assert (config.grace_seconds, config.log_level, config.auth) == (2.5, "warning", False)  # type: ignore[attr-defined]
    assert _serve_config(["--grace", "7"]).grace_seconds == 7.0  # type: ignore[attr-defined]
    for name, value, says in (
        ("DSPY_REGISTRY_GRACE", "10s", "DSPY_REGISTRY_GRACE='10s': not a number"),
        ("DSPY_REGISTRY_MAX_CONCURRENT_CALLS", "1.5", "'1.5': not an integer"),
        ("DSPY_REGISTRY_NO_AUTH", "on", "DSPY_REGISTRY_NO_AUTH='on': expected one of 1, 0, true"),
        ("DSPY_REGISTRY_LOG_FORMAT", "xml", "expected one of json, text"),
        ("DSPY_REGISTRY_SEMVER_GUARD", "strict", "expected one of enforce"),
    ):
        monkeypatch.setenv(name, value)
        with pytest.raises(ServeConfigError, match="^" + name):
            _serve_config()
        with pytest.raises(ServeConfigError) as err:
            _serve_config()
        assert says in str(err.value)
        monkeypatch.delenv(name)


def test_every_command_that_opens_the_store_takes_database_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """serve, migrate and admin reset-token share one --database: set but empty, the variable is
    unset for each (migrate and admin took the empty string as a URL, and refused it)."""
    from dspy_registry.cli import build_parser

    commands = (["serve"], ["migrate"], ["admin", "reset-token"])

    def urls() -> list[str]:
        parser = build_parser()  # the variable is read as the parser is built
        return [database_url(parser.parse_args(command)) for command in commands]

    monkeypatch.setenv("DSPY_REGISTRY_DATABASE", "")
    assert urls() == [DEFAULT_DATABASE] * 3
    monkeypatch.setenv("DSPY_REGISTRY_DATABASE", "postgresql://db/registry")
    assert urls() == ["postgresql://db/registry"] * 3
    assert [
        database_url(build_parser().parse_args([*c, "--database", "sqlite:///x.db"])) for c in commands
    ] == ["sqlite:///x.db"] * 3


def test_the_environments_file_has_its_own_variable_and_the_old_one_works_for_serve_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    environments = tmp_path / "environments.toml"
    environments.write_text("[environments.qa]\nauto_deploy = true\n")
    client = tmp_path / "client.toml"
    client.write_text('target = "localhost:50051"\ntoken_file = "admin.token"\n')
    monkeypatch.delenv("DSPY_REGISTRY_CONFIG", raising=False)

    def parsed(*argv: str) -> tuple[str, list[str]]:
        parser = argparse.ArgumentParser()
        add_serve_arguments(parser)
        args = parser.parse_args(list(argv))
        return from_arguments(args).config, deprecated_settings(args)

    monkeypatch.setenv("DSPY_REGISTRY_ENVIRONMENTS", str(environments))
    assert parsed() == (str(environments), [])
    monkeypatch.delenv("DSPY_REGISTRY_ENVIRONMENTS")
    # The old name: still read, with a warning; unless it names the client's file, which serve leaves.
    monkeypatch.setenv("DSPY_REGISTRY_CONFIG", str(environments))
    assert parsed() == (
        str(environments),
        [
            "DSPY_REGISTRY_CONFIG naming the environments file is deprecated: use DSPY_REGISTRY_ENVIRONMENTS "
            "(or --environments)"
        ],
    )
    assert parsed("--environments", str(environments)) == (str(environments), [])
    monkeypatch.setenv("DSPY_REGISTRY_CONFIG", str(client))
    assert parsed() == ("", [])


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DSPY_REGISTRY_")}
    return subprocess.run(
        [str(SERVE), *args], env=clean | env, capture_output=True, text=True, timeout=60, check=False
    )


def test_a_bad_variable_is_one_line_and_exit_2_for_each_command(tmp_path: Path) -> None:
    served = _run("serve", DSPY_REGISTRY_GRACE="10s")
    assert (served.returncode, served.stderr) == (
        2,
        "dspy-registry serve: error: DSPY_REGISTRY_GRACE='10s': not a number\n",
    )
    # The server's variable is no business of the operator commands': they run (and fail to connect).
    listed = _run("env", "list", "--server", "127.0.0.1:1", DSPY_REGISTRY_GRACE="10s")
    assert listed.returncode == 1 and "Traceback" not in listed.stderr
    listed = _run("env", "list", DSPY_REGISTRY_TLS="maybe")
    assert (listed.returncode, listed.stderr.count("\n")) == (2, 1)
    assert listed.stderr.startswith("error: DSPY_REGISTRY_TLS='maybe'")
    (tmp_path / "bad.toml").write_text("target = [")
    sidecar = _run(
        "sidecar",
        "--program",
        "p",
        "--environment",
        "e",
        "--dir",
        str(tmp_path),
        "--config",
        str(tmp_path / "bad.toml"),
    )
    assert (sidecar.returncode, sidecar.stderr.count("\n")) == (2, 1)
    assert sidecar.stderr.startswith(f"dspy-registry sidecar: error: {tmp_path / 'bad.toml'}: not TOML")
    # A token file that cannot be read is a setting that cannot be used, as a bad value is.
    missing = str(tmp_path / "missing.token")
    listed = _run("env", "list", DSPY_REGISTRY_TOKEN_FILE=missing)
    assert (listed.returncode, listed.stderr.count("\n")) == (2, 1)
    assert "DSPY_REGISTRY_TOKEN_FILE names a token file that cannot be read" in listed.stderr
    sidecar = _run(
        "sidecar", "--program", "p", "--environment", "e", "--dir", str(tmp_path), "--token-file", missing
    )
    assert (sidecar.returncode, sidecar.stderr.count("\n")) == (2, 1)
    assert "--token-file names a token file that cannot be read" in sidecar.stderr
    # A database URL of no backend's scheme: a usage error of each command that opens the store (serve
    # and migrate said "cannot start" and exit 1, admin exit 2).
    for command in (["serve"], ["migrate"], ["admin", "reset-token"]):
        flagged = _run(*command, "--database", "mysql://x")
        assert (
            flagged.returncode == 2
            and "argument --database: unsupported database URL 'mysql://x'" in flagged.stderr
        )
        variable = _run(*command, DSPY_REGISTRY_DATABASE="mysql://x")
        assert (variable.returncode, variable.stderr.count("\n")) == (2, 1), variable.stderr
        assert "DSPY_REGISTRY_DATABASE='mysql://x': unsupported database URL" in variable.stderr
    doctor = _run("doctor", DSPY_REGISTRY_TLS="maybe")
    assert doctor.returncode == 2 and doctor.stdout.startswith("FAIL  settings   DSPY_REGISTRY_TLS='maybe'")
    # A TLS file that cannot be read, as a token file: it was exit 1 for the commands and the sidecar
    # (errno's words, found as they connected), and "ok settings" for doctor.
    missing_ca = str(tmp_path / "missing-ca.crt")
    said = "the TLS CA file cannot be read: No such file or directory"
    listed = _run("env", "list", "--tls-ca", missing_ca)
    assert (listed.returncode, listed.stderr.count("\n")) == (2, 1) and said in listed.stderr
    sidecar = _run(
        "sidecar", "--program", "p", "--environment", "e", "--dir", str(tmp_path), "--tls-ca", missing_ca
    )
    assert (sidecar.returncode, sidecar.stderr.count("\n")) == (2, 1) and said in sidecar.stderr
    doctor = _run("doctor", DSPY_REGISTRY_TLS_CA=missing_ca)
    assert doctor.returncode == 2 and doctor.stdout.startswith(f"FAIL  settings   [Errno 2] {said}")


async def test_settings_named_by_a_config_file_are_resolved_once_and_nothing_is_filled_from_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ProgramWatcher.connect(config_file=…)` and the commands (SyncRegistry.from_settings) use the
    settings they resolved: a broken default config file is not read a second time (it was: the
    watcher and the CLI handed the resolved target to `connect`, which looked again)."""
    from dspy_registry.client import ProgramWatcher, SyncRegistry

    (tmp_path / "xdg" / "dspy-registry").mkdir(parents=True)
    (tmp_path / "xdg" / "dspy-registry" / "config.toml").write_text("target = [")  # not TOML
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("DSPY_REGISTRY_CONFIG", raising=False)
    good = tmp_path / "good.toml"
    good.write_text('target = "localhost:1"\n')
    watcher = ProgramWatcher.connect([("p", "e")], sidecar_id="pod", config_file=good)
    await watcher.registry.close()
    with SyncRegistry.from_settings(resolve(config_file=good)) as registry:
        assert registry.registry.channel is not None

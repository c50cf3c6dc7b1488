"""deploy/: the Kubernetes manifests render and are valid objects, and the Dockerfile is linted; every
flag, environment variable, port, path and probe they use is checked against the real argument parsers
and the code that reads the variables. No container daemon or cluster here: this is what can be tested.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import dockerfile
import kubernetes_validate
import pytest
import yaml

from dspy_registry.cli import build_parser
from dspy_registry.client import config as client_config
from dspy_registry.server import probe
from dspy_registry.server.config import Config, from_arguments
from tests.e2e.conftest import free_port
from tests.eventually import eventually

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUSTOMIZATIONS = ["base", "overlays/postgres", "overlays/sqlite", "examples/serving-pod"]
# The oldest Kubernetes whose native sidecars (init containers with restartPolicy Always) are on by
# default, and the newest the validator knows.
KUBERNETES_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
NAMESPACE = "dspy-registry"  # where docs/deploy.md installs the server; the serving example dials it
SHUTDOWN_MARGIN = (1, 10)  # seconds past --grace that the pod's termination grace allows, at least, at most
# What a variable from a Secret stands for here; shaped as the one such variable (the database URL) must be.
PLACEHOLDER = "postgresql://from-a-secret/dspy_registry"


def _kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kubectl is needed to render deploy/kubernetes (kubectl kustomize)")
        pytest.skip("kubectl not found: deploy/kubernetes is not rendered")
    return found


def render(kustomization: str) -> list[dict[str, Any]]:
    rendered = subprocess.run(
        [_kubectl(), "kustomize", str(DEPLOY / "kubernetes" / kustomization)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [o for o in yaml.safe_load_all(rendered.stdout) if o]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"one {kind} {name or ''} expected, found {len(found)}"
    return found[0]


class ReadEnviron(dict[str, str]):
    """os.environ as a container would have it, noting each name the code reads."""

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)


@pytest.fixture
def container_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    """`use(env)`: os.environ becomes `env` alone (no DSPY_REGISTRY_* of this machine), and is returned."""

    def use(env: Mapping[str, str]) -> ReadEnviron:
        environ = ReadEnviron({"HOME": str(tmp_path), "PATH": os.environ.get("PATH", ""), **env})
        monkeypatch.setattr(os, "environ", environ)
        return environ

    yield use


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """The container's variables; those from a Secret get a placeholder value."""
    return {e["name"]: e.get("value", PLACEHOLDER) for e in container.get("env", [])}


def registry_env_names(container: dict[str, Any]) -> set[str]:
    return {e["name"] for e in container.get("env", []) if e["name"].startswith("DSPY_REGISTRY_")}


def volume_at(pod: dict[str, Any], container: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """The pod volume that `path` in `container` is on, and the path inside it."""
    mounts = sorted(container.get("volumeMounts", []), key=lambda m: len(m["mountPath"]), reverse=True)
    for mount in mounts:
        if path.startswith(mount["mountPath"] + "/"):
            relative = PurePosixPath(path).relative_to(mount["mountPath"])
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            assert mount["name"] in volumes, f"volumeMount {mount['name']} names no volume"
            return volumes[mount["name"]], str(relative)
    raise AssertionError(f"{path} is on no volume of {container['name']}")


def secret_file(pod: dict[str, Any], container: dict[str, Any], path: str) -> tuple[str, str]:
    """(Secret name, key) that the file `path` in `container` comes from."""
    volume, key = volume_at(pod, container, path)
    assert "secret" in volume, f"{path} is not from a Secret"
    return volume["secret"]["secretName"], key


def serve_config(container: dict[str, Any], use_env: Any) -> tuple[Config, ReadEnviron]:
    """The server's Config from the container's args and env, through the real parser."""
    environ = use_env(env_of(container))
    parser = build_parser()  # the defaults read the environment here
    args = [*container.get("command", [])[1:], *container.get("args", [])]
    assert args[0] == "serve", args
    return from_arguments(parser.parse_args(args)), environ


def probe_args(command: list[str]) -> list[str]:
    """The arguments of an exec probe that runs the shipped probe module."""
    assert command[:3] == ["python", "-m", "dspy_registry.server.probe"], command
    assert importlib.util.find_spec(command[2]) is not None
    return command[3:]


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# -- the manifests render, and every object is valid


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_each_kustomization_renders_objects_valid_for_kubernetes(kustomization: str) -> None:
    objects = render(kustomization)
    assert objects
    for version in KUBERNETES_VERSIONS:
        for o in objects:
            # Strict: a misspelt or misplaced field fails too, not only a wrong type.
            kubernetes_validate.validate(o, version, strict=True)


# -- the server's manifests and its parser


@pytest.mark.parametrize("overlay", ["overlays/postgres", "overlays/sqlite"])
def test_the_servers_flags_variables_ports_and_probes_exist(overlay: str, container_env: Any) -> None:
    objects = render(overlay)
    deployment = one(objects, "Deployment", "dspy-registry")
    pod = deployment["spec"]["template"]["spec"]
    server = next(c for c in pod["containers"] if c["name"] == "server")
    config, environ = serve_config(server, container_env)
    unknown = registry_env_names(server) - environ.read
    assert not unknown, f"variables serve does not read: {unknown}"

    # The port it listens on is the container's `grpc` port, which the headless Service targets.
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert config.listen == f"0.0.0.0:{ports['grpc']}"
    service = one(objects, "Service", "dspy-registry")
    assert service["spec"]["clusterIP"] == "None"
    assert [(p["name"], p["targetPort"]) for p in service["spec"]["ports"]] == [("grpc", "grpc")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()

    # The termination grace covers --grace and the stop after it, and no more than that.
    low, high = SHUTDOWN_MARGIN
    assert config.grace_seconds + low <= pod["terminationGracePeriodSeconds"] <= config.grace_seconds + high

    # The admin token and TLS come from Secrets, at the keys Kubernetes and cert-manager use.
    assert secret_file(pod, server, config.admin_token_file) == ("dspy-registry-admin", "token")
    assert secret_file(pod, server, config.tls_cert) == ("dspy-registry-tls", "tls.crt")
    assert secret_file(pod, server, config.tls_key) == ("dspy-registry-tls", "tls.key")

    # Each probe runs the shipped probe, with arguments its parser takes, at the served port, over TLS.
    kinds = {}
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        args = probe.parser().parse_args(probe_args(server[name]["exec"]["command"]))
        assert port_of(args.address) == ports["grpc"] and args.address.startswith("127.0.0.1:")
        assert secret_file(pod, server, args.tls_ca) == ("dspy-registry-tls", "ca.crt")
        assert args.tls_server_name == service["metadata"]["name"]  # the certificate must name it
        assert server[name]["timeoutSeconds"] > args.timeout  # the probe gives up first, and says why
        kinds[name] = args.alive
    # Ready only while SERVING; alive (and started) while it answers at all.
    assert kinds == {"startupProbe": True, "readinessProbe": False, "livenessProbe": True}

    security = server["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]

    if overlay == "overlays/postgres":
        database = next(e for e in server["env"] if e["name"] == "DSPY_REGISTRY_DATABASE")
        assert database["valueFrom"]["secretKeyRef"] == {"name": "dspy-registry-database", "key": "dsn"}
        assert config.database == PLACEHOLDER and deployment["spec"]["replicas"] > 1
        assert (
            one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
        )
    else:
        assert config.database.startswith("sqlite:////")
        volume, _ = volume_at(pod, server, config.database.removeprefix("sqlite:///"))
        claim = one(objects, "PersistentVolumeClaim")
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        # One process owns a SQLite file: one replica, and the old one gone before the new starts.
        assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"


# -- the serving pod example


def test_the_serving_pods_sidecar_shares_its_directory_and_reaches_the_server(container_env: Any) -> None:
    objects = render("examples/serving-pod")
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    [sidecar] = pod["initContainers"]
    [serving] = pod["containers"]
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar, started before `serving`

    environ = container_env(env_of(sidecar))
    parser = build_parser()
    args = sidecar["args"]
    assert args[0] == "sidecar"
    parsed, unknown = parser.parse_known_args(args)
    assert not unknown, unknown
    try:
        client_config.resolve()  # what every client process resolves from its environment
    except FileNotFoundError:
        pass  # the token file it read is the pod's Secret, not here: the variable was read
    unknown_env = registry_env_names(sidecar) - environ.read
    assert not unknown_env, f"variables no client code reads: {unknown_env}"

    # The artifacts directory is an emptyDir both containers mount; the sidecar's startup probe waits
    # for the `ready` file it writes there, so the serving container starts with a program on disk.
    shared, _ = volume_at(pod, sidecar, str(parsed.dir / "x"))
    assert "emptyDir" in shared
    assert volume_at(pod, serving, str(parsed.dir / "x"))[0] is shared
    assert sidecar["startupProbe"]["exec"]["command"] == ["test", "-f", str(parsed.dir / "ready")]

    # Token and CA from Secrets; the config file from the ConfigMap the kustomization generates.
    token_file = env_of(sidecar)["DSPY_REGISTRY_TOKEN_FILE"]
    assert secret_file(pod, sidecar, token_file)[1] == "token"
    config_volume, key = volume_at(pod, sidecar, env_of(sidecar)["DSPY_REGISTRY_CONFIG"])
    config_map = one(objects, "ConfigMap", config_volume["configMap"]["name"])
    file = tomllib.loads(config_map["data"][key])
    assert secret_file(pod, sidecar, file["tls_ca"]) == ("dspy-registry-ca", "ca.crt")
    # Its target is the server's headless Service, as installed in docs/deploy.md.
    service = one(render("overlays/postgres"), "Service")
    name, port = service["metadata"]["name"], service["spec"]["ports"][0]["port"]
    assert file["target"] == f"dns:///{name}.{NAMESPACE}.svc.cluster.local:{port}"


# -- the Dockerfile


def _instructions() -> list[dockerfile.Command]:
    return list(dockerfile.parse_file(str(DEPLOY / "Dockerfile")))


def _final_stage() -> list[dockerfile.Command]:
    commands = _instructions()
    last = max(i for i, c in enumerate(commands) if c.cmd == "FROM")
    return commands[last:]


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    linted = subprocess.run(
        [str(hadolint), "--no-color", str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert linted.returncode == 0 and not linted.stdout, linted.stdout + linted.stderr


def test_the_images_command_variables_port_and_health_check_exist(container_env: Any) -> None:
    commands = _instructions()
    stages = [i for i, c in enumerate(commands) if c.cmd == "FROM"]
    assert len(stages) == 2  # built in one stage, run from another
    final = commands[stages[-1] :]
    assert any(c.cmd == "COPY" and "--from=build" in c.flags for c in final)
    [user] = [c.value[0] for c in final if c.cmd == "USER"]
    assert user.split(":")[0] not in ("0", "root")

    env: dict[str, str] = {}
    for c in final:
        if c.cmd == "ENV":
            env.update(zip(c.value[::2], c.value[1::2], strict=True))
    [entrypoint] = [list(c.value) for c in final if c.cmd == "ENTRYPOINT"]
    [cmd] = [list(c.value) for c in final if c.cmd == "CMD"]
    assert entrypoint == ["dspy-registry"]
    registry_env = {k: v for k, v in env.items() if k.startswith("DSPY_REGISTRY_")}
    environ = container_env(registry_env)
    config = from_arguments(build_parser().parse_args(cmd))
    assert not set(registry_env) - environ.read, "variables serve does not read"
    [exposed] = [int(c.value[0]) for c in final if c.cmd == "EXPOSE"]
    assert config.listen == f"0.0.0.0:{exposed}"
    assert config.database.startswith("sqlite:////")

    [health] = [c for c in final if c.cmd == "HEALTHCHECK"]
    assert health.value[0] == "CMD"
    args = probe.parser().parse_args(probe_args(list(health.value[1:])))
    assert args.address == f"127.0.0.1:{exposed}" and not args.alive

    # What the build stage copies exists, and the build context's ignore file lets it in.
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for c in commands[: stages[-1]]:
        if c.cmd == "COPY" and not c.flags:
            for source in c.value[:-1]:
                assert (ROOT / source).exists(), source
                assert f"!{source.rstrip('/')}" in [line.rstrip("/") for line in ignore], source


def test_the_images_environment_serves_answers_its_health_check_and_stops_on_its_signal(
    tmp_path: Path,
) -> None:
    """What the image runs, outside a container: its ENV (the data directory moved to a scratch folder,
    the port to a free one), its ENTRYPOINT and CMD, its HEALTHCHECK, and its STOPSIGNAL."""
    final = _final_stage()
    port = str(free_port())
    env = {
        k: v.replace("/var/lib/dspy-registry", str(tmp_path)).replace("50051", port)
        for c in final
        if c.cmd == "ENV"
        for k, v in zip(c.value[::2], c.value[1::2], strict=True)
        if k.startswith("DSPY_REGISTRY_")
    }
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **env}
    [entrypoint] = [list(c.value) for c in final if c.cmd == "ENTRYPOINT"]
    [cmd] = [list(c.value) for c in final if c.cmd == "CMD"]
    [health] = [list(c.value[1:]) for c in final if c.cmd == "HEALTHCHECK"]
    [stop] = [c.value[0] for c in final if c.cmd == "STOPSIGNAL"]
    with open(tmp_path / "server.log", "wb") as log:
        server = subprocess.Popen(
            [*entrypoint, *cmd], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        eventually(
            lambda: subprocess.run(health, env=env, capture_output=True, timeout=60).returncode == 0,
            "the image's health check passing",
        )
        assert (tmp_path / "registry.db").exists() and (tmp_path / "admin.token").exists()
        server.send_signal(getattr(signal, stop))
        assert server.wait(30) == 0
    finally:
        server.kill()
        server.wait()
    assert f'"address": "0.0.0.0:{port}"' in (tmp_path / "server.log").read_text()


def test_every_serve_flag_has_a_variable_named_after_it(container_env: Any) -> None:
    """What docs/deploy.md tells container users: `--grace` is DSPY_REGISTRY_GRACE, and so on."""
    environ = container_env({})
    parser = build_parser()
    [serve] = [
        p
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name, p in action.choices.items()
        if name == "serve"
    ]
    # Each flag by its first name: an alias kept for an old name (--config for --environments) has the
    # variable of the name it stands for.
    flags = [
        next(o for o in a.option_strings if o.startswith("--"))
        for a in serve._actions
        if any(o.startswith("--") for o in a.option_strings) and "--help" not in a.option_strings
    ]
    expected = {"DSPY_REGISTRY_" + f.removeprefix("--").replace("-", "_").upper() for f in flags}
    assert expected - environ.read == set()

"""The Python client's public surface, pinned: the names `dspy_registry.client` exports, which
arguments of each `Registry` method are positional, and the docstring each public method owes its
reader. A change here is a change to the public API, to make on purpose."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import dspy_registry.client
from dspy_registry.client import (
    RPC_METHODS,
    ProgramWatcher,
    Registry,
    SyncProgramWatcher,
    SyncRegistry,
    errors,
)
from dspy_registry.client._deprecated import RENAMED

EXPORTED = [
    "RPC_METHODS",
    "AccessDeniedError",
    "AlreadyExistsError",
    "ConfigError",
    "ConflictError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "LoadedProgram",
    "NotFoundError",
    "ProgramWatcher",
    "Registry",
    "RegistryError",
    "ResourceExhaustedError",
    "Rollback",
    "SyncProgramWatcher",
    "SyncRegistry",
    "Tls",
    "UnauthenticatedError",
    "UnavailableError",
]

# Each method and the arguments it takes positionally: the resource it addresses (for deployments,
# program, version and environment). Every other argument is keyword-only.
POSITIONAL: dict[str, list[str]] = {
    "register_signature": ["name"],
    "get_signature": ["name", "version"],
    "list_signatures": [],
    "list_signature_versions": ["name"],
    "check_signature_compatibility": ["name", "base_version"],
    "register_program": ["name"],
    "upload_program": ["name"],
    "get_program": ["name"],
    "get_program_version": ["name", "version"],
    "list_programs": [],
    "list_program_versions": ["name"],
    "get_artifact": ["name", "digest"],
    "compare_program_versions": ["name", "base_version", "target_version"],
    "get_upgrade_path": ["name", "from_version", "to_version"],
    "yank_program_version": ["name", "version"],
    "list_environments": [],
    "get_environment": ["name"],
    "update_environment": ["environment"],
    "create_deployment": ["name", "version", "environment"],
    "get_deployment": ["deployment_id"],
    "list_deployments": ["name", "environment"],
    "approve_deployment": ["deployment_id"],
    "promote_deployment": ["deployment_id"],
    "abort_deployment": ["deployment_id"],
    "rollback_deployment": ["deployment_id"],
    "get_deployment_status": ["name", "environment"],
    "report_version_check": ["name", "version", "check"],
    "watch_targets": ["program", "environment"],
    "watch_events": ["program", "environment"],
    "report_sidecar_status": ["sidecar_id"],
    "report_metrics": ["sidecar_id"],
    "create_webhook": ["webhook_id"],
    "list_webhooks": [],
    "delete_webhook": ["webhook_id"],
    "list_webhook_deliveries": ["webhook_id"],
    "add_webhook_secret": ["webhook_id", "secret"],
    "retire_webhook_secret": ["name"],
    "who_am_i": [],
    "create_principal": ["principal_id"],
    "list_principals": [],
    "disable_principal": ["principal"],
    "create_token": ["principal"],
    "list_tokens": ["principal"],
    "revoke_token": ["name"],
    "grant_permission": ["principal"],
    "revoke_permission": ["permission"],
    "list_permissions": [],
    "check_permission": ["resource"],
    "list_audit_events": [],
    # The conveniences that are not one RPC.
    "load_program": ["name", "version"],
    "get_latest_version": ["name"],
    "promote_version": ["name", "version", "target_environment"],
    "close": [],
}


# A method whose arguments are another's, documented there.
SAME_ARGUMENTS = {"upload_program": "register_program"}


def public_methods(cls: type) -> dict[str, Callable[..., Any]]:
    return {
        name: member
        for name in dir(cls)
        if not name.startswith("_") and inspect.isfunction(member := inspect.getattr_static(cls, name))
    }


def test_the_exported_names_are_pinned() -> None:
    assert dspy_registry.client.__all__ == EXPORTED


def test_every_public_name_of_the_package_is_exported() -> None:
    # As httpx's tests/test_exported_members.py: nothing public that __all__ does not name (the
    # package's modules, which importing sets as its attributes, aside).
    public = {
        name
        for name, value in vars(dspy_registry.client).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public == set(EXPORTED)


def test_only_the_resource_is_positional() -> None:
    methods = {name: m for name, m in public_methods(Registry).items() if name not in RENAMED}
    assert methods.keys() == POSITIONAL.keys()
    for name, method in methods.items():
        parameters = list(inspect.signature(method).parameters.values())[1:]  # self
        positional = [p.name for p in parameters if p.kind == p.POSITIONAL_OR_KEYWORD]
        assert positional == POSITIONAL[name], name
        assert all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in parameters), name
    assert set(RPC_METHODS.values()) <= POSITIONAL.keys()


def test_every_public_method_says_what_it_takes_returns_and_raises() -> None:
    undocumented = []
    for name, method in public_methods(Registry).items():
        doc = inspect.getdoc(method) or ""
        if name in RENAMED:
            # An alias names the method to use instead, and documents nothing else.
            if f"use `{RENAMED[name]}`" not in doc:
                undocumented.append(f"{name}: does not name {RENAMED[name]}")
            continue
        if name == "close":
            continue
        takes_arguments = len(inspect.signature(method).parameters) > 1
        sections = ["Returns:", "Raises:"] + (["Args:"] if takes_arguments else [])
        undocumented += [f"{name}: no {section}" for section in sections if section not in doc]
        if takes_arguments and name not in SAME_ARGUMENTS:
            # Every argument is described under Args:, by its name.
            args = doc.split("Args:", 1)[1].split("Returns:", 1)[0]
            described = set(re.findall(r"^    (\w+):", args, flags=re.M))
            named = set(list(inspect.signature(method).parameters)[1:])
            if not named <= described:
                undocumented.append(f"{name}: Args: leaves out {sorted(named - described)}")
    assert not undocumented
    for name, same in SAME_ARGUMENTS.items():
        # Its docstring sends the reader to the other's Args:, which must then hold for it too.
        assert inspect.signature(getattr(Registry, name)) == inspect.signature(getattr(Registry, same))
        assert f"As `{same}`" in (inspect.getdoc(getattr(Registry, name)) or "")


def test_the_raises_sections_name_the_clients_own_errors() -> None:
    errors = {name for name in EXPORTED if name.endswith("Error")}
    builtin = {"TypeError", "ValueError", "FileNotFoundError"}
    for name, method in public_methods(Registry).items():
        doc = inspect.getdoc(method) or ""
        if "Raises:" not in doc:
            continue
        raised = set(re.findall(r"^    (\w+):", doc.split("Raises:", 1)[1], flags=re.M))
        assert raised and raised <= errors | builtin, (name, raised - errors - builtin)


def test_the_sync_twin_has_every_method() -> None:
    twins = public_methods(SyncRegistry)
    assert public_methods(Registry).keys() - twins.keys() == set()
    for name, method in public_methods(Registry).items():
        if name != "close":
            assert inspect.signature(twins[name]) == inspect.signature(method), name


def test_the_error_tree_is_drawn_as_it_is() -> None:
    # Each branch of client/errors.py's tree: the class, then the status codes it stands for.
    drawn = {
        name: set(re.findall(r"\b[A-Z][A-Z_]+[A-Z]\b", rest.split(":")[0]))
        for name, rest in re.findall(r"^\s+[├└]── (\w+)\s+(.*)$", errors.__doc__ or "", flags=re.M)
    }
    subclasses = {c.__name__ for c in errors.RegistryError.__subclasses__()}
    assert drawn.keys() == subclasses
    for name, codes in drawn.items():
        mapped = {code.name for code, kind in errors._BY_CODE.items() if kind.__name__ == name}
        assert codes == mapped, name


def test_the_watchers_connect_as_the_registry_does() -> None:
    # ProgramWatcher.connect and its blocking twin take Registry.connect's connection arguments, by the
    # same names and defaults, beside the watcher's own.
    registry = inspect.signature(Registry.connect).parameters
    for connect in (ProgramWatcher.connect, SyncProgramWatcher.connect):
        parameters = inspect.signature(connect).parameters
        assert {name: parameters[name].default for name in registry} == {
            name: p.default for name, p in registry.items()
        }
    assert list(inspect.signature(SyncProgramWatcher.connect).parameters) == list(
        inspect.signature(ProgramWatcher.connect).parameters
    )

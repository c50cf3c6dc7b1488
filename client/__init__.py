"""dspy-registry's Python client: `Registry` (async), `SyncRegistry` (blocking), typed errors, and
for serving processes `ProgramWatcher` (async) and `SyncProgramWatcher` (threads).

    async with Registry.connect("localhost:50051", token_file="admin.token") as registry:
        loaded = await registry.load_program("sentiment", environment="production")

    async with ProgramWatcher.connect([("sentiment", "production")], sidecar_id="pod-1") as watcher:
        with watcher.route("sentiment", routing_key=user_id) as program:
            ...

See client/registry.py for the methods, client/config.py for where the target,
the token and TLS come from (the same for every client-side process),
client/watcher.py for the watcher, and client/errors.py for the exceptions.
tests/api/test_client_exports.py pins the names below: a change to them is a
change to the public API.
"""

from .config import ConfigError, Tls
from .errors import (
    AccessDeniedError,
    AlreadyExistsError,
    ConflictError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    RegistryError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from .registry import RPC_METHODS, LoadedProgram, Registry, Rollback
from .sync import SyncRegistry
from .sync_watcher import SyncProgramWatcher
from .watcher import ProgramWatcher

__all__ = [
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

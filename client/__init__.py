"""dspy-registry's Python client: `Registry` (async), `SyncRegistry` (blocking), and typed errors.

    async with Registry.connect("localhost:50051", token_file="admin.token") as registry:
        loaded = await registry.load_program("sentiment", environment="production")

See client/registry.py for the methods, client/config.py for where the target
and the token come from, and client/errors.py for the exceptions.
tests/api/test_client_exports.py pins the names below: a change to them is a
change to the public API.
"""

from .config import Tls
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

__all__ = [
    "RPC_METHODS",
    "AccessDeniedError",
    "AlreadyExistsError",
    "ConflictError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "LoadedProgram",
    "NotFoundError",
    "Registry",
    "RegistryError",
    "ResourceExhaustedError",
    "Rollback",
    "SyncRegistry",
    "Tls",
    "UnauthenticatedError",
    "UnavailableError",
]

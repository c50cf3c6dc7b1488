"""The call being served: who makes it, what it touches, and whether it was audited.

The api layer sets it for each RPC once the caller is authenticated; the
use cases read the caller from it, and the store writes the audit event of a
mutation from it inside the mutation's own transaction. Nothing here imports
grpc or a database driver.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from .domain.access import SYSTEM


@dataclass(kw_only=True)
class Call:
    method: str  # the full gRPC method, /dspy_registry.v1.RegistryService/RegisterProgram
    principal: str  # "" until authenticated
    token: str  # the token's resource name, or "" (client certificate)
    resource: str  # what the call is about, for the audit log
    request_id: str
    peer: str
    mutation: bool
    audited: bool = False  # set once its audit event is committed
    authorized: bool = False  # set once a rule resolved by the servicer has been checked


current_call: ContextVar[Call | None] = ContextVar("current_call", default=None)


def caller() -> str:
    """The principal making the current call ("system" outside any call)."""
    call = current_call.get()
    return call.principal if call is not None and call.principal else SYSTEM

"""The call being served: who makes it, what it touches, and whether it was audited.

The api layer makes one for each RPC once the caller is authenticated and
hands it on explicitly: a servicer passes it to the use case, which acts as
its `actor` and passes it to `Store.write(call)`, where the mutation's audit
event is written in the mutation's own transaction. The context variable
below only lets the api layer's servicers, the guard and the request logs
find the call their handler made; no use case or store reads it. Nothing
here imports grpc or a database driver.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from .domain.access import SYSTEM


@dataclass(kw_only=True, slots=True)  # one per RPC: no __dict__ to make
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

    @property
    def actor(self) -> str:
        """Who acts, as timelines, creators and approvals record it ("system" before authentication)."""
        return self.principal or SYSTEM


current_call: ContextVar[Call | None] = ContextVar("current_call", default=None)


def serving() -> Call:
    """The call the api layer is serving (its handler set it); a system call, audited by nobody, outside one."""
    call = current_call.get()
    if call is None:
        return Call(
            method="", principal=SYSTEM, token="", resource="", request_id="", peer="", mutation=False
        )
    return call

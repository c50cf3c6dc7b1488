"""Who is calling: the principal the access layer authenticated for this RPC."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import grpc

# Until access control lands (tokens, issue 3) every caller is anonymous; the
# auth interceptor will set this per call.
ANONYMOUS = "anonymous"
current_principal: ContextVar[str] = ContextVar("current_principal", default=ANONYMOUS)


def caller() -> str:
    return current_principal.get()


# The servicer context type every handler takes.
Context = grpc.aio.ServicerContext[Any, Any]

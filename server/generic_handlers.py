"""grpc's generated `add_*_to_server` functions, made to add generic handlers only (`GenericOnly`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc


class GenericOnly:
    """The server as grpc's generated `add_*_to_server` functions see it: every method generic.

    Those functions also register their methods with grpc.aio (`add_registered_method_handlers`),
    which then keeps one pending request per registered method, beside the one for every other
    method, and its main loop waits on them all again for each call it takes (`asyncio.wait`
    over their futures). Health's three methods and reflection's one made every call, the
    serving path's GetProgramVersion included, wait on five futures instead of one. Served
    through the generic handlers, as the contract's services are, they answer the same.
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self.server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]) -> None:
        self.server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        """Nothing: the generated code added the same handlers as a generic handler first."""

"""Composition root: config -> store -> use cases -> servicers -> grpc.aio server."""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from dspy_registry.v1 import access_pb2, deployment_pb2, registry_pb2

from .access_log import ACCESS_LOG
from .api.handlers import service_handler
from .api.pending import pending_service
from .api.registry import RegistryServicer
from .config import Config
from .domain.programs import UNARY_ARTIFACT_LIMIT
from .maintenance import Maintenance
from .store.base import Store, open_store
from .usecases.registry import Registry

log = logging.getLogger("dspy_registry.server")

SERVICES = (
    registry_pb2.DESCRIPTOR.services_by_name["RegistryService"],
    deployment_pb2.DESCRIPTOR.services_by_name["DeploymentService"],
    access_pb2.DESCRIPTOR.services_by_name["AccessService"],
)

# Room for the request's other fields around a 4 MiB unary artifact.
MAX_MESSAGE = UNARY_ARTIFACT_LIMIT + 256 * 1024


class App:
    """A running server. `start()` opens the store (migrations), then serves."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store: Store = open_store(config.database)
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.port = 0
        self.maintenance = Maintenance(self.store, request_retention=config.request_retention_seconds)

    async def start(self) -> int:
        await self.store.open()
        registry = Registry(
            self.store, guard_mode=self.config.semver_guard, upload_limit=self.config.upload_limit
        )
        self.server.add_generic_rpc_handlers(
            [service_handler(SERVICES[0], RegistryServicer(registry))]
            + [pending_service(s) for s in SERVICES[1:]]
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [s.full_name for s in SERVICES] + [
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        reflection.enable_server_reflection(names, self.server)
        self.port = self.server.add_insecure_port(self.config.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        await self.server.start()
        self.maintenance.start()
        # Migrations ran in store.open(): only now does health say SERVING.
        for name in ["", *(s.full_name for s in SERVICES)]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        host = self.config.listen.rsplit(":", 1)[0]
        log.info("serving", extra={"address": f"{host}:{self.port}", "database": _redact(self.store.url)})
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Health goes NOT_SERVING, in-flight calls get `grace` seconds, then the store closes."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.config.grace_seconds if grace is None else grace)
        await self.maintenance.stop()
        await self.store.close()
        ACCESS_LOG.flush()
        log.info("stopped")

    async def wait(self) -> None:
        await self.server.wait_for_termination()


def _redact(url: str) -> str:
    """Drop a password from a database URL before it reaches a log."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url

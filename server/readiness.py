"""`GET /healthz` and `GET /readyz`, as both HTTP ports answer them (the REST port, the metrics port).

    /healthz   200 while the process answers at all: liveness. A supervisor restarts a replica
               whose /healthz does not answer; nothing else makes it fail, since a restart
               cures neither a database that is away nor a full disk.
    /readyz    200 once the server has started and while its store answers reads; 503, with the
               reason, before that, while the database cannot be reached, and once it is
               stopping: a load balancer sends it no new calls then.

The body is JSON either way (`{"status": "ok"}`, `{"status": "unavailable", "reason": ...}`), as the
REST routes answer. The gRPC port tells the same through grpc.health.v1 (store_health.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from .store.base import Availability

HEALTH_PATHS = ("/healthz", "/readyz")


class Readiness:
    """Whether this replica should be sent calls; App keeps it up to date, any thread may ask."""

    def __init__(self, availability: Callable[[], Availability | None]) -> None:
        self._availability = availability  # the store health probe's last finding
        self.started = False
        self.stopping = False

    def why_not(self) -> str:
        """Why the replica is not ready; "" when it is."""
        if self.stopping:
            return "the server is stopping"
        if not self.started:
            return "the server is starting"
        found = self._availability()
        if found is None or not found.readable:
            return f"the store cannot be reached: {found.detail if found else 'not probed yet'}"
        return ""


def answer(path: str, readiness: Readiness) -> tuple[int, str] | None:
    """(HTTP status, JSON body) for a health path; None for any other path."""
    if path == "/healthz":
        return 200, _body({"status": "ok"})
    if path == "/readyz":
        why = readiness.why_not()
        return (
            (503, _body({"status": "unavailable", "reason": why})) if why else (200, _body({"status": "ok"}))
        )
    return None


def _body(value: object) -> str:
    return json.dumps(value) + "\n"

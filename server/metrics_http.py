"""The metrics port (`--metrics-listen`): `/metrics` for Prometheus, `/healthz` and `/readyz`, and a
404 for any other path.

prometheus_client's own `start_http_server` answers every path with the
metrics, which hides a typo in a scrape config and makes the port look like
more than it is; this is that server (a daemon thread per request, so that a
slow scraper never holds up the event loop) with a router in front.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from .readiness import Readiness, answer

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

StartResponse = Callable[..., Any]
NOT_FOUND = b'{"status": "not found", "paths": ["/metrics", "/healthz", "/readyz"]}\n'


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes come every few seconds: not one log line each."""


def routes(
    registry: CollectorRegistry, readiness: Readiness
) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        found = answer(path, readiness)
        status, body = (found[0], found[1].encode()) if found else (404, NOT_FOUND)
        reasons = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}
        start_response(f"{status} {reasons[status]}", [("Content-Type", "application/json")])
        return [body]

    return app


def serve(host: str, port: int, registry: CollectorRegistry, readiness: Readiness) -> WSGIServer:
    """Listen on host:port and answer from a daemon thread; the server, to shut down and close."""

    class Server(ThreadingWSGIServer):
        pass

    # An IPv6 host needs an IPv6 socket (WSGIServer's default family is IPv4).
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    Server.address_family = family
    server = make_server(str(address[0]), port, routes(registry, readiness), Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server

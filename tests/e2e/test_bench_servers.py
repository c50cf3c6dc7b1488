"""How the benchmarks start the servers they measure (bench/servers.py)."""

from __future__ import annotations

import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bench.servers import wait_serving
from tests.tcp_proxy import TcpProxy

REFUSED = 8  # connections refused before the server answers


def test_the_start_waiter_sees_a_server_that_refused_its_first_connections() -> None:
    """A server that refused the waiter's first connections is seen SERVING once it answers: with
    grpc's default reconnect back-off (1 s, then 1.6 times longer each time) the waiter's eighth
    connection came after the 30 s it allows, and its start-to-healthy figures came in steps."""
    server = grpc.server(ThreadPoolExecutor(2))
    checker = health.HealthServicer()
    checker.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    proxy = TcpProxy("127.0.0.1", port).start()
    proxy.cut()  # every connection closed as it arrives: a server not listening yet
    alive = subprocess.Popen(["sleep", "120"])  # the server's process, as wait_serving watches it
    failures: list[BaseException] = []

    def wait() -> None:
        try:
            with tempfile.TemporaryFile() as log:
                wait_serving(alive, f"127.0.0.1:{proxy.port}", log)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            failures.append(exc)

    waiter = threading.Thread(target=wait)
    try:
        waiter.start()
        while proxy.accepted < REFUSED and waiter.is_alive():
            waiter.join(0.05)
        proxy.resume()
        waiter.join(60)
        assert not waiter.is_alive()
        assert not failures, failures
        assert proxy.accepted > REFUSED  # it connected again, through the proxy, and was answered
    finally:
        alive.kill()
        alive.wait()
        proxy.close()
        server.stop(0)

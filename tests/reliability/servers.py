"""Server processes that a test SIGKILLs and starts again, and what the tests ask of them between kills."""

from __future__ import annotations

import signal
import sqlite3
import threading
from pathlib import Path

import grpc

from dspy_registry.v1 import deployment_pb2 as dpb
from dspy_registry.v1 import deployment_pb2_grpc as dpb_grpc
from tests.e2e.conftest import ServerProcess

# A killed server's connections fail at once, so that callers need not wait out gRPC's backoff:
# every start listens on a new port, and callers follow `Restartable.address`.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class Restartable:
    """One `dspy-registry serve` at a time on `database`, killed and started again by the test.

    `generation` counts the starts; a caller that sees it change knows its channel points at a
    dead process. Every start logs to the same file in `folder`, so that a failure shows the whole
    history of the store.
    """

    def __init__(
        self, database: str, folder: Path, name: str = "server", extra_args: list[str] | None = None
    ) -> None:
        self.database = database
        self.extra_args = list(extra_args or ())  # more `serve` flags, given to every start
        self.folder = folder
        self.name = name
        self.current: ServerProcess | None = None
        self.generation = 0
        self.kills = 0
        self.lock = threading.Lock()  # held while the process is replaced

    def start(self) -> Restartable:
        with self.lock:
            server = ServerProcess(self.database, self.folder / f"{self.name}.log", self.extra_args)
            server.start()
            self.current = server
            self.generation += 1
        return self

    def kill(self) -> None:
        """SIGKILL: no grace, no clean close of the store."""
        with self.lock:
            assert self.current is not None
            assert self.current.stop(signal.SIGKILL) == -signal.SIGKILL, self.current.log()
            self.kills += 1

    def stop(self) -> int:
        """SIGTERM, as an operator stops it; the exit code."""
        with self.lock:
            assert self.current is not None
            return self.current.stop(signal.SIGTERM, timeout=30)

    def ensure_dead(self) -> None:
        """For a test's cleanup: nothing of this server outlives the test."""
        server = self.current
        if server is not None and server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait()

    @property
    def alive(self) -> bool:
        server = self.current
        return server is not None and server.process is not None and server.process.poll() is None

    @property
    def address(self) -> str:
        assert self.current is not None
        return self.current.address

    @property
    def pid(self) -> int:
        assert self.current is not None and self.current.process is not None
        return self.current.process.pid

    def admin_token(self) -> str:
        assert self.current is not None
        return self.current.token_file.read_text().strip()

    def channel(self, token: str | None = None) -> grpc.Channel:
        """A channel to the process running now, as the admin or with `token`."""
        assert self.current is not None
        return self.current.channel(token)

    def log(self) -> str:
        assert self.current is not None
        return self.current.log()


def current_revision(channel: grpc.Channel) -> int:
    """The store's revision as a server sees it: the revision of a fresh WatchTargets snapshot."""
    stream = dpb_grpc.DeploymentServiceStub(channel).WatchTargets(dpb.WatchTargetsRequest(), timeout=10)
    try:
        first = next(stream)
    finally:
        stream.cancel()
    assert first.WhichOneof("kind") == "snapshot", first
    return int(first.revision)


def sqlite_path(database: str) -> Path | None:
    """The file of a sqlite:/// URL; None for PostgreSQL."""
    return Path(database.removeprefix("sqlite:///")) if database.startswith("sqlite:///") else None


def integrity_check(path: Path) -> str:
    """SQLite's own verdict on the file ("ok"), read while no server has it open."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()
    return "; ".join(str(r[0]) for r in rows)

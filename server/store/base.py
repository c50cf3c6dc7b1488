"""The Store protocol: the one interface both backends implement."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from ..calls import Call
from .commits import CommitListeners
from .records import Records
from .timing import TransactionTimer


@dataclass(frozen=True)
class Availability:
    """What the store can do right now, as its last probe found it.

    `readable` false: the database cannot be reached (calls get UNAVAILABLE).
    `writable` false with `readable` true: reads work but writes are refused
    (a SQLite disk that is full: writes get RESOURCE_EXHAUSTED). `detail`
    says why, for the log line and the operator.
    """

    readable: bool
    writable: bool
    detail: str = ""


AVAILABLE = Availability(readable=True, writable=True)


@dataclass
class WriteCounts:
    """Write transactions this store committed since it was made: the revisioned ones (`write()`),
    and telemetry's (`telemetry()`). What a fleet costs the store is read here, not timed."""

    revisioned: int = 0
    telemetry: int = 0


class Store(Protocol):
    """A revisioned store.

    `write()` is one transaction, serialized with every other write: it sees
    every earlier commit, its events get the next revision, and it commits on
    a clean exit or rolls back on an exception. `read()` lends a connection
    for reads that need no transaction.
    """

    url: str
    commits: CommitListeners  # told of each committed transaction's events, in order
    timer: TransactionTimer  # told how long each read() and write() took
    writes: WriteCounts

    async def open(self) -> None:
        """Connect and apply pending migrations."""

    async def close(self) -> None:
        """Finish in-flight work and release every connection."""

    async def ping(self, timeout: float) -> Availability:
        """Probe the database with a trivial query answered within `timeout` seconds.

        The server calls it every second (server/store_health.py). A store
        found unreachable refuses calls at once with StoreUnavailable, rather
        than letting them wait on a database that does not answer, until a
        later ping finds it back.
        """

    def read(self) -> AbstractAsyncContextManager[Records]: ...

    def write(self, call: Call | None = None) -> AbstractAsyncContextManager[Records]:
        """One write transaction; `call`, the mutation it serves, whose audit event it then writes
        (see Records.finish). Background work passes none."""
        ...

    def telemetry(self) -> AbstractAsyncContextManager[Records]:
        """One write transaction outside the revision order, for sidecar presence and metric rollups:
        it takes no revision (Records.append refuses), notifies no listener, and on PostgreSQL does
        not lock the revision row, so it never waits for a deployment nor makes one wait. On SQLite,
        which has one writer, it joins the writer's queue (and its group commit) like any write."""
        ...

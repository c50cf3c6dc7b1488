"""The Store protocol: the one interface both backends implement."""

from __future__ import annotations

from collections.abc import Callable
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


@dataclass(frozen=True)
class Claim:
    """What one poll of the leader lock found: whether this replica holds it, and who does ("" when
    no replica does, or when it could not be told)."""

    held: bool
    leader: str


# PostgreSQL keeps 63 bytes of a connection's application_name, where the leader lock names its replica.
MAX_REPLICA_NAME = 42


def check_replica_name(name: str) -> str:
    """`name`, if it can name a replica (ValueError if not)."""
    if not name or len(name) > MAX_REPLICA_NAME or not name.isascii() or not name.isprintable():
        raise ValueError(
            f"a replica name must be 1 to {MAX_REPLICA_NAME} printable ASCII characters, not {name!r}"
        )
    return name


class LeaderLock(Protocol):
    """One replica's claim on the store-wide leader lock (server/leader.py says what leading means).

    The lock is held for as long as a connection of the lock's own stays open, so that a replica
    that dies or loses the database loses it too, and another replica's next poll takes it.
    """

    async def poll(self) -> Claim:
        """Take the lock if it is free, or check that this replica still holds it; who holds it.
        Never raises: a database that cannot be reached is `Claim(False, "")`."""
        ...

    async def release(self) -> None:
        """Give the lock up (close its connection); a later poll may take it again."""


class SoleLeader:
    """The leader lock of a store only one server can open (SQLite): that server always leads."""

    def __init__(self, replica: str) -> None:
        self.replica = replica

    async def poll(self) -> Claim:
        return Claim(True, self.replica)

    async def release(self) -> None:
        pass


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

    def leader_lock(self, replica: str, lost: Callable[[], None]) -> LeaderLock:
        """This replica's claim, by the name it is known by, on the lock that elects one leader
        among the servers on this store; `lost` is called at once if a held lock's connection
        drops (the lock went with it)."""
        ...

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

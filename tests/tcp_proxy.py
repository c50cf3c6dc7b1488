"""A TCP proxy in front of PostgreSQL that the test can break: the network between a server and its database.

It runs its own event loop in a thread, so that a test may block (start a
server process, make a synchronous call) while the proxy keeps forwarding.

    forward      bytes flow both ways (the start, and `resume()`)
    stall()      nothing flows, every socket stays open: a partition, or a database that hangs;
                 new connections are accepted and held, and a side that closes its socket is not
                 heard of by the other. `resume()` lets everything flow again.
    cut()        every connection is closed at once, and new ones are closed as they arrive:
                 the database went away
    starting()   every connection is closed, and new ones are answered like a PostgreSQL that
                 is starting up (FATAL 57P03 "the database system is starting up"): a restart
                 or a failover in progress
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit, urlunsplit

FORWARD, STALL, CUT, STARTING = "forward", "stall", "cut", "starting"
_SSL_REQUEST = 80877103


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.mode = FORWARD
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._transports: set[asyncio.WriteTransport] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def in_front_of(cls, url: str) -> TcpProxy:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 5432).start()

    def url(self, url: str) -> str:
        """`url` (postgresql://user@host:port/db) with this proxy as its host and port."""
        parts = urlsplit(url)
        user = f"{parts.username}@" if parts.username else ""
        return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{self.port}"))

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def close(self) -> None:
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def stall(self) -> None:
        self._call(self._set(STALL))

    def cut(self) -> None:
        self._call(self._set(CUT))

    def starting(self) -> None:
        self._call(self._set(STARTING))

    def resume(self) -> None:
        self._call(self._set(FORWARD))

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._drop_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _set(self, mode: str) -> None:
        assert self._flowing is not None
        self.mode = mode
        if mode == FORWARD:
            self._flowing.set()
            return
        self._flowing.clear()
        if mode in (CUT, STARTING):
            self._drop_all()

    def _drop_all(self) -> None:
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None and self._flowing is not None
        self._tasks.add(task)
        self.accepted += 1
        try:
            if self.mode == CUT:
                writer.transport.abort()
                return
            if self.mode == STARTING:
                await _answer_starting_up(reader, writer)
                return
            self._transports.add(writer.transport)
            await self._flowing.wait()  # a stalled proxy holds new connections too
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                writer.transport.abort()
                return
            self._transports.add(up_writer.transport)
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()
            self._transports.discard(writer.transport)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()  # stalled: hold what was read, and read no more
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        # One side closed: so does the other, as TCP would; but not across a stall, as across a
        # partition, where the other side hears nothing until the network is back.
        await self._flowing.wait()
        writer.transport.abort()
        self._transports.discard(writer.transport)


async def _answer_starting_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Speak just enough of the protocol to refuse like a PostgreSQL that is starting up."""
    length, code = struct.unpack("!ii", await reader.readexactly(8))
    if code == _SSL_REQUEST:
        writer.write(b"N")  # no TLS here; the client goes on with its startup message
        length, code = struct.unpack("!ii", await reader.readexactly(8))
    await reader.readexactly(length - 8)
    fields = b"".join(
        kind + text.encode() + b"\0"
        for kind, text in (
            (b"S", "FATAL"),
            (b"V", "FATAL"),
            (b"C", "57P03"),
            (b"M", "the database system is starting up"),
        )
    )
    writer.write(b"E" + struct.pack("!i", len(fields) + 5) + fields + b"\0")
    with contextlib.suppress(OSError):
        await writer.drain()
    writer.close()

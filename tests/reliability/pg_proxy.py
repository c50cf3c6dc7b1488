"""A TCP proxy in front of PostgreSQL that makes one replica hear of the others' commits late.

Every connection is passed through unchanged, but once a client sends
`LISTEN` on one, what PostgreSQL sends back on that connection (the NOTIFY of
each commit) is held for `delay` seconds. The replica's queries answer at
once; only its news of other replicas' writes lags, as it does on a busy
network. It runs on a thread of its own, so that a test may block on its
server processes meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time

Chunk = tuple[float, bytes]  # (when to pass it on, what)
# asyncpg's LISTEN; not the `UNLISTEN *` it sends on every pooled connection it takes back.
LISTEN = re.compile(rb"(?<![A-Z])LISTEN\b")


class LaggingListenProxy:
    def __init__(self, delay: float, upstream: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        self.delay = delay
        self.upstream = upstream
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []  # both ends of every connection

    def start(self) -> LaggingListenProxy:
        self._thread.start()
        assert self._ready.wait(10), "the proxy did not start"
        return self

    def url(self, database_url: str) -> str:
        """`database_url` with its host and port replaced by the proxy's."""
        rest = database_url.split("@", 1)[1].split("/", 1)[1]
        return f"postgresql://postgres@127.0.0.1:{self.port}/{rest}"

    def stop(self) -> None:
        """Close every connection still open, then the proxy itself."""
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()  # each connection's pumps then read the end and finish
        current = asyncio.current_task()
        pumps = [t for t in asyncio.all_tasks() if t is not current]
        if pumps:  # none left when every connection had already ended (asyncio.wait refuses an empty set)
            await asyncio.wait(pumps, timeout=5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            self._loop.close()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self.upstream)
        self._writers += [client_w, server_w]
        listening = asyncio.Event()
        held: asyncio.Queue[Chunk | None] = asyncio.Queue()

        async def upstream() -> None:
            while data := await client_r.read(65536):
                if LISTEN.search(data):
                    listening.set()
                server_w.write(data)
                await server_w.drain()
            server_w.close()

        async def downstream() -> None:
            while data := await server_r.read(65536):
                await held.put((time.monotonic() + (self.delay if listening.is_set() else 0.0), data))
            await held.put(None)

        async def release() -> None:
            while (chunk := await held.get()) is not None:
                due, data = chunk  # in order: a chunk is due no sooner than the one before it
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                client_w.write(data)
                await client_w.drain()
            client_w.close()

        tasks = [asyncio.ensure_future(f()) for f in (upstream, downstream, release)]
        try:
            with contextlib.suppress(ConnectionError, OSError):
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            client_w.close()
            server_w.close()

"""A TCP proxy that cuts connections, like a load balancer restarting.

The proxy watches what clients send; the first request on a connection that
contains ``only`` (any request when empty) takes the next byte budget from
``cuts``. Once that many bytes have gone back to the client after that
request, both sides are closed, often in the middle of an event. No budget
(an empty queue) means no cut. Keep-alive connections are handled: a page
and its EventSource may share one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque


class _Connection:
    def __init__(self) -> None:
        self.budget: int | None = None
        self.armed = False


class CuttingProxy:
    def __init__(self, target_port: int, *, only: bytes = b"") -> None:
        self.target_port = target_port
        self.only = only
        self.port = 0
        self.cuts: deque[int] = deque()
        self.connections = 0  # connections that carried a matching request
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> CuttingProxy:
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="cutting-proxy", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._thread is not None
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.transport.abort()
            return
        conn = _Connection()
        upstream = asyncio.ensure_future(self._requests(client_r, server_w, conn))
        downstream = asyncio.ensure_future(_responses(server_r, client_w, conn))
        try:
            await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (upstream, downstream):
                task.cancel()
            for writer in (client_w, server_w):
                writer.transport.abort()

    async def _requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Connection
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if not conn.armed and self.only in data:
                    conn.armed = True
                    self.connections += 1
                    conn.budget = self.cuts.popleft() if self.cuts else None
                writer.write(data)
                await writer.drain()


async def _responses(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Connection
) -> None:
    with contextlib.suppress(OSError, asyncio.CancelledError):
        while data := await reader.read(65536):
            if conn.budget is not None:
                data = data[: conn.budget]
                conn.budget -= len(data)
            writer.write(data)
            await writer.drain()
            if conn.budget == 0:
                return

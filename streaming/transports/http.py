"""Requests and responses of the streaming API, over plain ASGI messages.

The hot routes skip Django's request/middleware stack (see
``transports.consumer``): they parse what they need from the ASGI scope,
authenticate through the cached token resolver, and stream. A streaming
response runs its reader and a disconnect watcher side by side, so a client
that goes away stops its reader at once; and it watches its identity
(accounts.revocation), so a revoked or expired one ends it at once, with a
last error in the response's own format.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import socket
import struct
import termios
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from django.conf import settings

from accounts import revocation
from accounts.identity import AppIdentity
from streaming.core.log import CursorTrimmed
from streaming.core.reader import UNREADABLE, Reader, ReaderStalled
from streaming.transports.errors import ApiError

logger = logging.getLogger("sluice.http")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets

STREAM_HEADERS = [
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


@dataclass(slots=True)
class ApiRequest:
    method: str
    path: str
    headers: dict[str, str]
    query: dict[str, str]
    body: bytes
    client_ip: str | None
    path_params: dict[str, Any] = field(default_factory=dict)
    receive: Receive | None = None

    def accepts(self, media_type: str) -> bool:
        return media_type in self.headers.get("accept", "")


@dataclass(slots=True)
class JsonResponse:
    body: Any
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)

    async def send(self, send: Send, receive: Receive) -> None:
        payload = self.body if isinstance(self.body, bytes) else orjson.dumps(self.body)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(payload)),
        ]
        headers += [(k.encode(), v.encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


@dataclass(slots=True)
class StreamResponse:
    """Streams what ``reader`` delivers, each write as soon as it is encoded.

    With ``hold``, the status line waits until ``hold()`` returns: None to
    stream, or a JsonResponse to send instead (a failure before the first
    event becomes an HTTP error). ``on_gone`` runs if the client leaves
    while the response is held.

    The reader runs in the request's own task, so the first event reaches
    the socket in the same step that learns of it; a watcher task cancels
    that task when the client disconnects, and a revocation watch when the
    ``identity`` behind the response is revoked (its last words are then the
    reader's encoder's ``farewell``).
    """

    reader: Reader[bytes]
    content_type: bytes
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hold: Callable[[], Awaitable[JsonResponse | None]] | None = None
    on_gone: Callable[[], None] | None = None
    identity: AppIdentity | None = None

    async def send(self, send: Send, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None
        started = False
        gone = False
        revoked = ""

        def client_left(watch: asyncio.Future[None]) -> None:
            nonlocal gone
            if not watch.cancelled() and watch.exception() is None:
                gone = True
                task.cancel()

        def identity_revoked(reason: str) -> None:
            nonlocal revoked
            if not gone:
                revoked = reason
                self.reader.stop_reason = "revoked"
                task.cancel()

        watch = asyncio.ensure_future(wait_disconnect(receive))
        watch.add_done_callback(client_left)
        identity_watch = None
        if self.identity is not None:
            identity_watch = revocation.watch(self.identity, identity_revoked)
        try:
            if self.hold is not None:
                instead = await self.hold()
                if instead is not None:
                    await instead.send(send, receive)
                    return
            headers = [(b"content-type", self.content_type), *STREAM_HEADERS]
            headers += [(k.encode(), v.encode()) for k, v in self.headers.items()]
            await send({"type": "http.response.start", "status": self.status, "headers": headers})
            started = True
            await self._deliver(send)
        except asyncio.CancelledError:
            if revoked and not gone:
                task.uncancel()
                await self._end_revoked(send, receive, revoked, started=started)
                return
            if not gone:
                raise
            task.uncancel()
            if not started and self.on_gone is not None:
                self.on_gone()
        except OSError:
            pass  # the connection broke under a send
        finally:
            if identity_watch is not None:
                identity_watch.close()
            watch.remove_done_callback(client_left)
            watch.cancel()

    async def _end_revoked(
        self, send: Send, receive: Receive, reason: str, *, started: bool
    ) -> None:
        """The identity behind the response was revoked: say so, then end the response."""
        message = f"{revocation.describe(reason)}; the stream was ended"
        error = ApiError(revocation.http_status(reason), message, code=reason)
        if not started:
            with contextlib.suppress(OSError):
                await JsonResponse(error.body(), status=error.status).send(send, receive)
            return
        last = self.reader.encoder.farewell(error.failure())
        try:
            # A client that does not read its last words is cut off like any stalled reader.
            limit = settings.SLUICE_READER_STALL_SECONDS
            await asyncio.wait_for(
                send({"type": "http.response.body", "body": last, "more_body": False}), limit
            )
            # The connection goes with the identity, once those words are read.
            await close_when_read(send, limit)
        except TimeoutError:
            await abort_connection(send)
        except OSError:
            pass

    async def _deliver(self, send: Send) -> None:
        async def write(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        # A reader that cannot take data for READER_STALL_SECONDS is cut off; it can resume.
        stall = settings.SLUICE_READER_STALL_SECONDS
        try:
            await self.reader.run(write, stall=stall)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except ReaderStalled:
            logger.info("reader stalled for %ss: disconnecting it", stall)
            await abort_connection(send)
        except UNREADABLE as error:
            # The events still to send are gone (a stream read through Redis
            # expired under its reader) or cannot be read now. The head is out:
            # the response can only break, so the client sees an unfinished
            # stream (and can try to resume), not a clean end.
            reason = str(error) if isinstance(error, CursorTrimmed) else type(error).__name__
            logger.warning("%s: breaking the response", reason)
            await break_response(send, stall)


async def break_response(send: Send, limit: float) -> None:
    """End a started response unfinished: what was written still reaches the
    client, then the connection closes without the body's last chunk.

    uvicorn reports the closed connection as a disconnect once its buffer is
    flushed, and the response's disconnect watcher then cancels this wait. A
    client that does not read for ``limit`` seconds is cut off instead.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None or not hasattr(transport, "abort"):
        return
    transport.close()
    await asyncio.sleep(limit)
    await abort_connection(send)


async def abort_connection(send: Send) -> None:
    """Drop the client's connection now, discarding what is buffered for it.

    ASGI has no way to abort a response. Returning early makes uvicorn close
    the transport gracefully, which waits to flush its buffer to a client
    that reads nothing: the socket and its buffers would stay forever. So
    reach uvicorn's transport through its ``send`` (a bound method of the
    request cycle), and reset the connection: with SO_LINGER 0, closing sends
    RST instead of leaving the kernel to flush its send buffer to a reader
    that never takes it. Elsewhere (daphne, whose ``send`` never waits)
    returning is all we can do.

    The transport reports the lost connection in the next loop iteration:
    waiting for it lets uvicorn see a client that is gone, not an app that
    returned without finishing its response (which it logs as an error).
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None or not hasattr(transport, "abort"):
        return
    reset_transport(transport)
    await asyncio.sleep(0)


async def close_when_read(send: Send, limit: float) -> None:
    """Close the connection once the client has taken everything written to it;
    reset it if the client takes nothing more for ``limit`` seconds.

    What the server has written may sit in the kernel's buffers (a full server
    buffer is what makes a send wait, and it may not be full): a graceful close
    then leaves the client's end open behind bytes it does not read.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None or not hasattr(transport, "abort") or transport.is_closing():
        return
    left, deadline = unsent(transport), time.monotonic() + limit
    while left and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        now = unsent(transport)
        if now < left:  # it reads: give it ``limit`` again
            left, deadline = now, time.monotonic() + limit
    if left:
        reset_transport(transport)
    else:
        transport.close()
    await asyncio.sleep(0)


def unsent(transport: Any) -> int:
    """Bytes written to ``transport`` that its peer has not acknowledged: in the
    transport's buffer, and in the kernel's send queue (SIOCOUTQ)."""
    left = int(transport.get_write_buffer_size())
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            reply = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
            left += struct.unpack("i", reply)[0]
    return left


def reset_transport(transport: Any) -> None:
    """Close ``transport``'s connection with a reset (RST), dropping what is buffered."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


async def wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def unknown_url(scope: Scope, receive: Receive, send: Send) -> None:
    """An API path that does not exist: a JSON 404 an SDK can read, not an HTML page."""
    error = ApiError(404, f"Invalid URL ({scope['method']} {scope['path']})", code="unknown_url")
    await JsonResponse(error.body(), status=404).send(send, receive)

"""The WebSocket transport: several streams on one socket, JSON messages.

Client -> server: ``chat.create`` (a chat request plus ``request_id``),
``stream.resume`` (``stream_id``, ``after``), ``stream.cancel``, ``ping``.
Server -> client: ``stream.created``, ``chunk``, ``stream.done``, ``error``,
``pong``. Closing the socket stops the readers, not the streams: they can be
resumed on a new socket.

The socket lives as long as its identity: when its token is revoked or
expires, or its app is disabled or deleted, the server closes it with code
4401 and the reason ("token revoked", "token expired", "app disabled", "app
deleted"); see accounts.revocation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson
from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from accounts import revocation
from accounts.auth import authenticate
from accounts.identity import AppIdentity, AuthError
from audit.writer import audit_refusing
from gateway.database import DATABASE_UNAVAILABLE
from streaming.core.admission import Admission
from streaming.core.log import CursorTrimmed
from streaming.core.reader import UNREADABLE, Reader, ReaderStalled, StreamHandle
from streaming.core.session import StreamSession
from streaming.core.shutdown import draining
from streaming.observability import metrics
from streaming.observability.logging import bind, request_id
from streaming.providers import ChatRequest
from streaming.routing.routes import ResolvedRoute
from streaming.transports.api import _route_for
from streaming.transports.encoders.chat import ChatChunks, ChatWebSocket
from streaming.transports.errors import ApiError, audit_unavailable, database_unavailable
from streaming.transports.http import abort_connection, reset_transport
from streaming.transports.limits import admit_chat
from streaming.transports.refused import RECORD_HEADER, recorded_if_refused
from streaming.transports.schema import check_depth, parse_chat_request
from streaming.transports.streams import check_cursor, find_stream, request_cancel
from streaming.transports.ws_frames import SEND_MANY

logger = logging.getLogger("sluice.ws")

TICKET_SUBPROTOCOL = "sluice.ticket."
IDLE_CLOSE_CODE = 4408  # like HTTP 408: the socket sent nothing and followed nothing
TRY_AGAIN_LATER = 1013  # RFC 6455's "try again later": the database is unreachable
STALLED_CLOSE_CODE = 4008  # the socket took nothing for READER_STALL_SECONDS


def _reply_to(message: Any) -> dict[str, Any]:
    """The ids an error echoes back, if they are plain values (an echoed
    document could be anything the client sent)."""
    if not isinstance(message, dict):
        return {}
    return {
        name: value
        for name in ("request_id", "stream_id")
        if isinstance(value := message.get(name), str | int | float | bool)
    }


class StreamConsumer(AsyncWebsocketConsumer):
    """Thin: parse, check, hand off to a StreamSession, relay its log."""

    # Not on the channel layer. Nothing reaches a stream socket through it (streams
    # come from their log; what instances share goes through Redis directly), and
    # a socket on the layer died with it: when Redis was down, every WebSocket
    # was closed, even those streaming from this very process.
    channel_layer_alias = None

    identity: AppIdentity
    readers: dict[str, asyncio.Task[None]]
    relaying: dict[str, Reader[list[bytes]]]  # the Readers those tasks run
    watch: revocation.Watch | None = None
    ended: str = ""  # the revocation that closed the socket
    closing: asyncio.Future[None] | None = None

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels' own dispatch first closes stale database connections: a hop to
        # the process's one sync thread before each message, and one more after a
        # disconnect (``websocket_disconnect``), four for a socket that runs one
        # stream. As in transports.consumer, every query on this path runs through
        # database_sync_to_async, which closes them itself.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        # Channels' own, without its groups (this consumer has no channel layer)
        # and its closing of database connections (see ``dispatch``).
        await self.disconnect(message["code"])
        raise StopConsumer

    async def connect(self) -> None:
        bind(request_id=request_id(self.scope["headers"]))
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.scope["headers"]
        }
        query = dict(parse_qsl(self.scope.get("query_string", b"").decode("latin-1")))
        subprotocol = next(
            (p for p in self.scope.get("subprotocols", []) if p.startswith(TICKET_SUBPROTOCOL)),
            None,
        )
        ticket = query.get("ticket") or (
            subprotocol[len(TICKET_SUBPROTOCOL) :] if subprotocol else None
        )
        try:
            self.identity = await authenticate(
                headers.get("authorization"), ticket=ticket, scope="chat", purpose="chat"
            )
        except AuthError:
            await self.close()  # before accept: the handshake is refused (HTTP 403)
            return
        except DATABASE_UNAVAILABLE as error:
            # A token not cached and no database to look it up in: try again later.
            logger.warning("database unavailable on websocket connect: %s", type(error).__name__)
            await self.accept(subprotocol=subprotocol)
            await self.close(code=TRY_AGAIN_LATER, reason="database unavailable")
            return
        self.readers = {}
        self.relaying = {}
        self.client_ip = (self.scope.get("client") or [None])[0]
        await self.accept(subprotocol=subprotocol)
        self.watch = revocation.watch(self.identity, self._revoked)
        self._idle_watch()

    def _revoked(self, reason: str) -> None:
        """The identity was revoked or expired: no more streams, and the socket closes."""
        self.ended = reason
        for reader in self.relaying.values():
            reader.stop_reason = "revoked"  # for the audit's deliveries
        self._stop_readers()
        self.closing = asyncio.ensure_future(self._close_revoked(reason))

    async def _close_revoked(self, reason: str) -> None:
        await self._close(revocation.CLOSE_CODE, revocation.describe(reason))

    def _stop_readers(self) -> None:
        for task in getattr(self, "readers", {}).values():
            task.cancel()
        idle = getattr(self, "idle_timer", None)
        if idle is not None:
            idle.cancel()

    # -- idle sockets: no message received and no stream followed for WS_IDLE_SECONDS
    def _idle_watch(self) -> None:
        loop = asyncio.get_running_loop()
        self.last_active = loop.time()
        self.idle_timer = loop.call_later(settings.SLUICE_WS_IDLE_SECONDS, self._idle_check)

    def _idle_check(self) -> None:
        # One timer per socket, re-armed only when it fires: receiving costs a clock read.
        loop = asyncio.get_running_loop()
        limit = settings.SLUICE_WS_IDLE_SECONDS
        quiet = 0.0 if self.readers else loop.time() - self.last_active
        if quiet < limit:
            self.idle_timer = loop.call_later(limit - quiet, self._idle_check)
            return
        metrics.CONNECTIONS_TIMED_OUT.labels(phase="ws_idle").inc()
        reason = f"idle: no message and no stream for {limit:g} s"
        self.idle_close = loop.create_task(self._close(IDLE_CLOSE_CODE, reason))

    async def disconnect(self, code: int) -> None:
        if self.watch is not None:
            self.watch.close()
        self._stop_readers()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.ended:
            return  # closing: what arrives after a revocation is not acted on
        self.last_active = asyncio.get_running_loop().time()
        message: Any = None
        try:
            message = orjson.loads(text_data or bytes_data or b"")
            if not isinstance(message, dict):
                raise ApiError(400, "a message must be a JSON object", code="invalid_message")
            check_depth(message)
            await self._dispatch(message)
        except orjson.JSONDecodeError:
            await self._error(
                ApiError(400, "a message must be valid JSON", code="invalid_json"), {}
            )
        except ApiError as error:
            await self._error(error, _reply_to(message))
        except DATABASE_UNAVAILABLE as error:
            logger.warning("database unavailable on a websocket message: %s", type(error).__name__)
            await self._error(database_unavailable(), _reply_to(message))
        except Exception:
            # A bug handling this one message: it alone gets an error (said
            # once, with its traceback, here); the socket and its other
            # streams carry on.
            logger.exception("websocket message failed")
            failure = ApiError(500, "the message could not be handled", code="internal_error")
            with contextlib.suppress(Exception):
                await self._error(failure, _reply_to(message))

    async def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "chat.create":
            if audit_refusing():
                raise audit_unavailable()
            await self._create(message)
        elif kind == "stream.resume":
            await self._resume(message)
        elif kind == "stream.cancel":
            stream_id = str(message.get("stream_id", ""))
            await request_cancel(await find_stream(self.identity, stream_id))
        elif kind == "ping":
            await self.send(text_data='{"type":"pong"}')
        else:
            raise ApiError(400, f"unknown message type {kind!r}", code="invalid_message")

    async def _create(self, message: dict[str, Any]) -> None:
        body = {k: v for k, v in message.items() if k not in ("type", "request_id")}
        body["stream"] = True
        chat = parse_chat_request(body)
        with recorded_if_refused(
            self.identity,
            "ws",
            chat.model,
            self.client_ip,
            messages=chat.messages,
            params={**chat.params, "stream": True},
        ):
            admitted = await self._admit(chat)
        if admitted is None:
            return  # revoked while the route was looked up
        route, admission = admitted
        session = StreamSession(
            identity=self.identity,
            request=chat,
            route=route,
            protocol="ws",
            client_ip=self.client_ip,
            admission=admission,
        )
        session.start()
        created = {
            "type": "stream.created",
            "request_id": message.get("request_id"),
            "stream_id": session.id,
        }
        limits = session.limit_headers()
        if limits:  # the x-ratelimit-* values an HTTP response would carry
            created["ratelimit"] = limits
        await self.send(text_data=orjson.dumps(created).decode())
        self._follow(session, 0, resumed=False)

    async def _admit(self, chat: ChatRequest) -> tuple[ResolvedRoute, Admission] | None:
        """``chat``'s route and admission; an ApiError if it is refused, None if
        the socket was revoked while the route was looked up."""
        route = await _route_for(self.identity, chat.model)
        if self.ended:
            return None
        if draining():
            raise ApiError(
                503,
                "this gateway instance is shutting down; reconnect (another instance will answer)",
                code="shutting_down",
            )
        return route, await admit_chat(self.identity, chat, route)

    async def _resume(self, message: dict[str, Any]) -> None:
        handle = await find_stream(self.identity, str(message.get("stream_id", "")))
        after = message.get("after", 0)
        if not isinstance(after, int) or isinstance(after, bool) or after < 0:
            raise ApiError(400, "'after' must be a non-negative integer", code="invalid_cursor")
        await check_cursor(handle, after)
        self._follow(handle, after, resumed=True)

    def _follow(self, handle: StreamHandle, cursor: int, *, resumed: bool) -> None:
        previous = self.readers.pop(handle.id, None)
        if previous is not None:
            previous.cancel()
        task = asyncio.ensure_future(self._relay(handle, cursor, resumed))
        self.readers[handle.id] = task
        task.add_done_callback(lambda done: self._forget(handle.id, done))

    def _forget(self, stream_id: str, task: asyncio.Task[None]) -> None:
        if self.readers.get(stream_id) is task:
            del self.readers[stream_id]
            self.relaying.pop(stream_id, None)
            self.last_active = asyncio.get_running_loop().time()  # idle from now

    async def _relay(self, handle: StreamHandle, cursor: int, resumed: bool) -> None:
        chunks = ChatChunks(handle.id, handle.created, handle.model_at(cursor))
        reader = Reader(
            handle,
            cursor,
            ChatWebSocket(chunks, handle.id),
            resumed=resumed,
            size=_frames_size,
            observers=[metrics.ReaderTracker("ws", handle, cursor, resumed=resumed)],
            transport="ws",
            actor=self.identity.name,
        )
        if self.ended:
            reader.stop_reason = "revoked"  # the socket's identity went while it was set up
        self.relaying[handle.id] = reader
        write = _batch_writer(self.base_send, self.scope)

        try:
            # A socket that cannot take a batch for READER_STALL_SECONDS is cut; it can resume.
            await reader.run(write, stall=settings.SLUICE_READER_STALL_SECONDS)
            if getattr(handle, "handing_over", False):
                # Handed over at shutdown: the client resumes on another instance.
                await self._close(1001, "the gateway is shutting down; resume elsewhere")
        except ReaderStalled:
            await self._cut_off()
        except UNREADABLE as error:
            # The events still to send are gone (the stream expired under its
            # reader) or cannot be read now. Other streams share the socket:
            # this one alone ends, with an error saying no more will come.
            reason = str(error) if isinstance(error, CursorTrimmed) else type(error).__name__
            logger.warning("stream %s: relay ended: %s", handle.id, reason)
            failure = (
                ApiError(409, f"{error}; no more of it can be sent", code="cursor_out_of_range")
                if isinstance(error, CursorTrimmed)
                else ApiError(503, "the stream cannot be read now", code="stream_unavailable")
            )
            with contextlib.suppress(Exception):
                await self._error(failure, {"stream_id": handle.id})
        except OSError:
            pass  # the client went away while a frame was sent (uvicorn's ClientDisconnected)
        except Exception:
            # A bug. Said once, here, with its traceback (a task's exception is
            # otherwise only logged when the task is collected), and the client
            # is told this stream will send no more instead of waiting for it.
            logger.exception("stream %s: relay failed", handle.id)
            failure = ApiError(500, "the stream could not be relayed", code="internal_error")
            with contextlib.suppress(Exception):
                await self._error(failure, {"stream_id": handle.id})

    async def _close(self, code: int, reason: str) -> None:
        """Close the socket with ``code`` and ``reason``. The close frame waits behind
        what is buffered for the client: one that takes nothing for
        READER_STALL_SECONDS is reset instead (see ``_cut_off``).

        The server writes the frame at once when its own buffer is under its
        high-water mark, though the kernel's may be full of bytes the client
        will never read: the connection then stayed open for good (the server
        closes its transport gracefully, after flushing). So a connection that
        has not ended READER_STALL_SECONDS after its close frame is reset too.
        """
        stall = settings.SLUICE_READER_STALL_SECONDS
        try:
            await asyncio.wait_for(self.close(code=code, reason=reason), stall)
        except TimeoutError:
            await self._cut_off()
            return
        except Exception:
            return  # the client went first: nothing to close
        protocol = getattr(self.base_send, "__self__", None)
        if getattr(protocol, "transport", None) is not None:
            asyncio.get_running_loop().call_later(stall, _reset_unless_gone, protocol)

    async def _cut_off(self) -> None:
        """Drop a socket that took nothing for READER_STALL_SECONDS; its streams can be resumed.

        As over HTTP (``http.abort_connection``), the connection is reset and what
        is buffered for it dropped: a close frame would wait behind that buffer, and
        the socket with it, for as long as the client does not read. Where the server
        offers no way to reset (daphne, whose sends never wait), it is closed with
        code 4008.
        """
        if getattr(getattr(self.base_send, "__self__", None), "transport", None) is not None:
            await abort_connection(self.base_send)
            return
        with contextlib.suppress(Exception):
            await self.close(code=STALLED_CLOSE_CODE)

    async def _error(self, error: ApiError, message: dict[str, Any]) -> None:
        payload = {
            "type": "error",
            "request_id": message.get("request_id"),
            "stream_id": message.get("stream_id"),
            "status": error.status,
            **error.body(),
        }
        if RECORD_HEADER in error.headers:  # a refusal: the request id of its record
            payload["record_id"] = error.headers[RECORD_HEADER]
        if "retry-after-ms" in error.headers:  # a limit: seconds until it frees, as Retry-After
            payload["retry_after"] = int(error.headers["retry-after-ms"]) / 1000
        await self.send(text_data=orjson.dumps(payload).decode())


def _reset_unless_gone(protocol: Any) -> None:
    """Reset the connection of uvicorn's WebSocket ``protocol`` unless it has ended."""
    if not getattr(protocol, "disconnected", True):
        reset_transport(protocol.transport)


def _batch_writer(send: Any, scope: dict[str, Any]) -> Callable[[list[bytes]], Awaitable[None]]:
    """How a reader's batch of messages goes out: in one write where the server
    offers it (``ws_frames.SEND_MANY``), else one ASGI send per message. Either
    way through the raw ASGI ``send``: per message, the consumer's own cost more."""
    if SEND_MANY in scope.get("extensions", {}):

        async def write_all(frames: list[bytes]) -> None:
            await send({"type": SEND_MANY, "texts": frames})

        return write_all

    async def write_each(frames: list[bytes]) -> None:
        for frame in frames:
            await send({"type": "websocket.send", "text": frame.decode()})

    return write_each


def _frames_size(frames: list[bytes]) -> int:
    return sum(map(len, frames))

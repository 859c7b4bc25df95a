"""Many WebSocket text messages in one write: the ``sluice.websocket.send_many`` extension.

ASGI sends one WebSocket message per ``websocket.send``, and uvicorn writes
each to the socket as it comes: a reader's batch of a hundred token chunks
was a hundred frames serialized one by one and a hundred ``write`` calls to
the kernel, where the same batch over Server-Sent Events is one write.
``BatchingWebSocketProtocol`` (uvicorn's websockets-sansio protocol) offers
the ``sluice.websocket.send_many`` scope extension; an app that sees it may
send ``{"type": "sluice.websocket.send_many", "texts": [bytes, ...]}``:
each item becomes one text message, exactly the frames ``websocket.send``
would have made, written to the transport at once.

Flow control is the same as uvicorn's for one message: the send waits while
the transport is over its high-water mark, then writes the whole batch
(which the reader bounds, see ``streaming.core.reader.follow``).
"""

from __future__ import annotations

import struct
from typing import Any

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.protocol import State
from websockets.server import ServerProtocol

SEND_MANY = "sluice.websocket.send_many"

_TEXT_FIN = 0x81  # FIN, no RSV bits, opcode 1 (text); a server's frames are not masked
_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def text_frames(texts: list[bytes]) -> bytes:
    """Unfragmented, unmasked text frames of UTF-8 ``texts``, end to end (RFC 6455 5.2)."""
    out = bytearray()
    for text in texts:
        size = len(text)
        if size < 126:
            out += _SHORT.pack(_TEXT_FIN, size)
        elif size < 65536:
            out += _MEDIUM.pack(_TEXT_FIN, 126, size)
        else:
            out += _LONG.pack(_TEXT_FIN, 127, size)
        out += text
    return bytes(out)


def serialize_texts(conn: ServerProtocol, texts: list[bytes]) -> bytes:
    """What ``conn`` would write for ``texts`` sent one by one.

    Framed here when nothing transforms the frames (no extension negotiated,
    no fragmented message under way), which is the same bytes for less work;
    otherwise (permessage-deflate) by ``conn`` itself, frame by frame.
    Raises InvalidState if the connection is not open.
    """
    if conn.state is not State.OPEN:
        raise InvalidState(f"connection is {conn.state.name.lower()}")
    pending = conn.data_to_send()  # normally nothing: uvicorn writes after each event
    if not conn.extensions and not conn.expect_continuation_frame:
        return b"".join(pending) + text_frames(texts)
    for text in texts:
        conn.send_text(text)
    return b"".join(pending + conn.data_to_send())


class BatchingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol with ``sluice.websocket.send_many``."""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # None: the handshake was refused
        if scope is not None:
            # The app's task has not run yet: it sees the extension.
            scope["extensions"][SEND_MANY] = {}

    async def send(self, message: Any) -> None:
        if message["type"] != SEND_MANY:
            await super().send(message)
            return
        texts: list[bytes] = message["texts"]
        if self.close_sent or not self.handshake_complete or self.initial_response is not None:
            for text in texts:  # uvicorn's own answer to a send out of turn
                await super().send({"type": "websocket.send", "text": text.decode()})
            return
        await self.writable.wait()
        if self.disconnected:
            raise ClientDisconnected()
        try:
            data = serialize_texts(self.conn, texts)
        except InvalidState:
            raise ClientDisconnected() from None
        self.transport.write(data)

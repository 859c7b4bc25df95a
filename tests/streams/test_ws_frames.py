"""A batch of WebSocket messages in one write is the frames one send each would make.

No server: websockets' own sans-io protocols on both sides. The server side
frames a batch (``ws_frames.serialize_texts``); a websockets client parses the
bytes back into messages, with and without permessage-deflate.
"""

from __future__ import annotations

import pytest
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidState
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from streaming.transports.ws_frames import serialize_texts, text_frames

# Each length field size of RFC 6455 5.2, at its edges, and non-ASCII text.
TEXTS = [
    b"",
    b"x" * 125,
    b"y" * 126,
    b"z" * 65535,
    b"w" * 65536,
    '{"chunk":"déjà vu ✓"}'.encode(),
]


def _pair(*, deflate: bool) -> tuple[ServerProtocol, ClientProtocol]:
    """A server and a client after an opening handshake, in memory."""
    offer = [ClientPerMessageDeflateFactory()] if deflate else []
    client = ClientProtocol(parse_uri("ws://127.0.0.1/v1/ws"), extensions=offer, max_size=None)
    server = ServerProtocol(extensions=[ServerPerMessageDeflateFactory()] if deflate else [])
    client.send_request(client.connect())
    server.receive_data(b"".join(client.data_to_send()))
    (request,) = server.events_received()
    assert isinstance(request, Request)
    server.send_response(server.accept(request))
    client.receive_data(b"".join(server.data_to_send()))
    client.events_received()
    assert server.state is client.state is State.OPEN
    assert bool(server.extensions) is deflate
    return server, client


def _received(client: ClientProtocol, data: bytes) -> list[bytes]:
    client.receive_data(data)
    frames = client.events_received()
    assert all(isinstance(f, Frame) and f.opcode is Opcode.TEXT and f.fin for f in frames)
    return [bytes(f.data) for f in frames if isinstance(f, Frame)]


def test_text_frames_are_the_frames_websockets_makes() -> None:
    one_by_one = b"".join(Frame(Opcode.TEXT, text).serialize(mask=False) for text in TEXTS)
    assert text_frames(TEXTS) == one_by_one


@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "permessage-deflate"])
def test_a_client_reads_every_message_of_a_batch(deflate: bool) -> None:
    server, client = _pair(deflate=deflate)
    data = serialize_texts(server, TEXTS) + serialize_texts(server, TEXTS[::-1])
    if deflate:
        assert len(data) < sum(map(len, TEXTS))  # compressed by the negotiated extension
    assert _received(client, data) == TEXTS + TEXTS[::-1]


def test_a_batch_goes_after_what_the_connection_has_queued() -> None:
    server, _ = _pair(deflate=False)
    server.send_ping(b"hb")
    data = serialize_texts(server, [b'{"type":"pong"}'])
    assert data.startswith(Frame(Opcode.PING, b"hb").serialize(mask=False))


def test_a_batch_on_a_closing_connection_is_refused() -> None:
    server, _ = _pair(deflate=False)
    server.send_close(1000)
    server.data_to_send()
    with pytest.raises(InvalidState):
        serialize_texts(server, [b"late"])

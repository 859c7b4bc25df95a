"""WebSocket readers under the production server: batches in one write, still bounded.

A reader's batch of messages goes out in one write (streaming.transports.
ws_frames). A socket that stops reading is still cut off after
SLUICE_READER_STALL_SECONDS, and its stream can be resumed from the last
message it saw, missing nothing; revoked, it is reset after that long too,
where its close frame cannot get through. permessage-deflate is negotiated only where
SLUICE_WS_COMPRESSION turns it on, and a compressed stream reads the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.sync.client import connect
from websockets.uri import parse_uri

from tests.conftest import Actor, wait_for_audit
from tests.e2e.slow_readers import (
    BIG_TOKENS,
    revoke,
    small_buffer_socket,
    stalling_gateway,
    wait_disconnected,
)
from tests.fakes.upstream import FakeUpstream
from tests.live import GatewayServer, server_env

pytestmark = [pytest.mark.timeout(120), pytest.mark.django_db(transaction=True)]

TOKENS = [f" token{i}" for i in range(400)]


@pytest.fixture(scope="module")
def stall_gateway(django_db_setup: None) -> Iterator[GatewayServer]:
    # Long enough for a revocation to come first, short enough to wait for.
    yield from stalling_gateway(stall_seconds="3")


@pytest.fixture(scope="module")
def deflate_gateway(django_db_setup: None) -> Iterator[GatewayServer]:
    server = GatewayServer(env=server_env(SLUICE_WS_COMPRESSION="1")).start()
    yield server
    server.stop()


def _ws_url(gateway: GatewayServer) -> str:
    return gateway.url.replace("http", "ws") + "/v1/ws"


def _create(model: str) -> str:
    chat = {"model": model, "messages": [{"role": "user", "content": "go"}]}
    return orjson.dumps({"type": "chat.create", "request_id": "r", **chat}).decode()


def _content(message: dict[str, Any]) -> str:
    choices = message["chunk"].get("choices") or [{}]
    return str((choices[0].get("delta") or {}).get("content") or "")


class StalledSocket:
    """A websockets client over a raw socket with a tiny receive buffer, that
    stops reading when the test stops calling ``read``."""

    def __init__(self, gateway: GatewayServer, actor: Actor) -> None:
        self.sock = small_buffer_socket(gateway)
        self.conn = ClientProtocol(parse_uri(_ws_url(gateway)), max_size=None)
        request = self.conn.connect()
        request.headers["Authorization"] = actor.headers["Authorization"]
        self.conn.send_request(request)
        self._flush()
        while self.conn.state is State.CONNECTING:
            self.conn.receive_data(self.sock.recv(4096))
        assert self.conn.state is State.OPEN, self.conn.handshake_exc
        self.messages: list[dict[str, Any]] = []

    def _flush(self) -> None:
        self.sock.sendall(b"".join(self.conn.data_to_send()))

    def send(self, text: str) -> None:
        self.conn.send_text(text.encode())
        self._flush()

    def read(self, until: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
        while not until(self.messages):
            self.conn.receive_data(self.sock.recv(4096))
            for event in self.conn.events_received():
                if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                    self.messages.append(orjson.loads(event.data))
        return self.messages

    def wait_disconnected(self, timeout: float) -> bool:
        return wait_disconnected(self.sock, timeout)

    def close(self) -> None:
        self.sock.close()


def _read_stream(url: str, actor: Actor, first: str, **options: Any) -> list[dict[str, Any]]:
    """The messages on a socket from ``first`` sent to the ``stream.done`` of its stream."""
    with connect(url, additional_headers=actor.headers, max_size=None, **options) as ws:
        ws.send(first)
        messages = [orjson.loads(ws.recv(timeout=30))]
        while messages[-1]["type"] not in ("stream.done", "error"):
            messages.append(orjson.loads(ws.recv(timeout=30)))
        messages.append({"extensions": ws.response.headers.get("Sec-WebSocket-Extensions")})
    return messages


def test_a_stalled_websocket_reader_is_cut_off_and_can_resume(
    stall_gateway: GatewayServer,
    alice: Actor,
    make_route: Callable[..., str],
    upstream: FakeUpstream,
) -> None:
    upstream.script("ws-stall-big", tokens=BIG_TOKENS)
    model = make_route(("openai", upstream.base_url, "ws-stall-big"))
    client = StalledSocket(stall_gateway, alice)
    try:
        client.send(_create(model))
        seen = client.read(lambda got: sum(m["type"] == "chunk" for m in got) >= 3)
        # It stops reading: the gateway cuts it off instead of holding its batches.
        assert client.wait_disconnected(timeout=20), "the gateway kept a stalled socket"
    finally:
        client.close()
    stream_id = seen[0]["stream_id"]
    chunks = [m for m in seen if m["type"] == "chunk"]
    assert [m["seq"] for m in chunks] == list(range(1, len(chunks) + 1))
    assert wait_for_audit(stream_id).outcome == "completed"
    # Resumed on a new socket after the last message it saw: nothing missed, nothing twice.
    resume = orjson.dumps({"type": "stream.resume", "stream_id": stream_id, "after": len(chunks)})
    rest = _read_stream(_ws_url(stall_gateway), alice, resume.decode())
    text = "".join(_content(m) for m in chunks + rest if m.get("type") == "chunk")
    assert text == "".join(BIG_TOKENS)
    assert rest[-2]["type"] == "stream.done"


def test_a_stalled_websocket_whose_token_is_revoked_is_dropped(
    stall_gateway: GatewayServer,
    make_actor: Callable[..., Actor],
    make_route: Callable[..., str],
    upstream: FakeUpstream,
) -> None:
    upstream.script("ws-revoke-big", tokens=BIG_TOKENS)
    model = make_route(("openai", upstream.base_url, "ws-revoke-big"))
    dora = make_actor("dora")
    client = StalledSocket(stall_gateway, dora)
    try:
        client.send(_create(model))
        seen = client.read(lambda got: sum(m["type"] == "chunk" for m in got) >= 3)
        # Revoked before its reader stalls: the 4401 close waits behind a full buffer.
        revoke(stall_gateway, dora)
        assert client.wait_disconnected(timeout=20), "the gateway kept a revoked, stalled socket"
    finally:
        client.close()
    assert seen[0]["type"] == "stream.created"


@pytest.mark.parametrize("sent", [40, 80])
def test_a_revoked_socket_whose_close_frame_the_client_never_reads_is_reset(
    stall_gateway: GatewayServer,
    make_actor: Callable[..., Actor],
    make_route: Callable[..., str],
    upstream: FakeUpstream,
    sent: int,
) -> None:
    """The upstream goes quiet after ``sent`` big chunks, the reader stopped
    after three: what was sent fills the kernel's buffers but not the server's
    own past its high-water mark, so the 4401 close frame is written at once,
    behind bytes the client will never take. The gateway resets the connection
    once it has not ended within READER_STALL_SECONDS (CI met it under load:
    the socket stayed, ESTABLISHED, for good)."""
    name = f"ws-revoke-quiet-{sent}"
    upstream.script(name, tokens=BIG_TOKENS[: sent + 10], fault="stall", fault_after=sent)
    model = make_route(("openai", upstream.base_url, name))
    erin = make_actor("erin")
    client = StalledSocket(stall_gateway, erin)
    try:
        client.send(_create(model))
        client.read(lambda got: sum(m["type"] == "chunk" for m in got) >= 3)
        time.sleep(1)  # everything sent is in the buffers; the upstream is quiet
        revoke(stall_gateway, erin)
        assert client.wait_disconnected(timeout=20), "the gateway kept a revoked, stalled socket"
    finally:
        client.close()


def test_compression_is_off_unless_configured_and_reads_the_same(
    gateway: GatewayServer,
    deflate_gateway: GatewayServer,
    alice: Actor,
    make_route: Callable[..., str],
    upstream: FakeUpstream,
) -> None:
    upstream.script("ws-deflate", tokens=TOKENS)
    model = make_route(("openai", upstream.base_url, "ws-deflate"))
    texts, offered = {}, {}
    for name, server in (("default", gateway), ("compressed", deflate_gateway)):
        # The websockets client offers permessage-deflate by default, as browsers do.
        messages = _read_stream(_ws_url(server), alice, _create(model))
        offered[name] = messages[-1]["extensions"]
        assert messages[0]["type"] == "stream.created"
        assert messages[-2]["type"] == "stream.done"
        chunks = [m for m in messages if m.get("type") == "chunk"]
        assert [m["seq"] for m in chunks] == list(range(1, len(chunks) + 1))
        texts[name] = "".join(_content(m) for m in chunks)
    assert offered["default"] is None
    assert offered["compressed"] is not None and "permessage-deflate" in offered["compressed"]
    assert texts["default"] == texts["compressed"] == "".join(TOKENS)

"""Connections that hold the gateway open without using it are closed.

Raw sockets against a served gateway with one-second deadlines: a silent TCP
connection, headers or a body sent a byte at a time, a WebSocket that says
nothing; and a client address over its connection cap is refused at once,
while other clients are still served.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.edge.conftest import actor_on
from tests.metrics.conftest import scrape

SHORT = {
    "SLUICE_HEADER_TIMEOUT_SECONDS": "1",
    "SLUICE_BODY_TIMEOUT_SECONDS": "1",
    "SLUICE_KEEPALIVE_SECONDS": "1",
    "SLUICE_WS_IDLE_SECONDS": "1",
}
CLOSED_WITHIN = 15.0  # generous: "closed at all", not "closed on time"


@contextmanager
def raw(server, source: str = "127.0.0.1") -> Iterator[socket.socket]:
    sock = socket.create_connection(
        ("127.0.0.1", server.port), timeout=5, source_address=(source, 0)
    )
    try:
        yield sock
    finally:
        sock.close()


def read_until_closed(sock: socket.socket, trickle: bytes = b"") -> bytes:
    """Everything the server sends until it closes; ``trickle`` is sent a byte at a time."""
    received = b""
    deadline = time.monotonic() + CLOSED_WITHIN
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        if trickle:
            try:
                sock.sendall(trickle[:1])
            except OSError:
                return received  # closed under the writer
            trickle = trickle[1:] or b"x"
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"still open after {CLOSED_WITHIN} s; received {received!r}")


def read_response(sock: socket.socket) -> bytes:
    """One whole response (head and Content-Length body), however the reads split it."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


@pytest.fixture(scope="module")
def short(django_db_setup) -> Iterator:
    from tests.live import GatewayServer, server_env

    server = GatewayServer(env=server_env(**SHORT)).start()
    yield server
    server.stop()


def test_a_silent_connection_is_closed(short):
    with raw(short) as sock:
        assert read_until_closed(sock) == b""
    assert httpx.get(f"{short.url}/healthz", timeout=10).status_code == 200


def test_headers_sent_a_byte_at_a_time_are_cut_off(short):
    with raw(short) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert read_until_closed(sock, trickle=b"X-Slow: " + b"a" * 10_000) == b""


def test_the_next_request_on_a_kept_alive_connection_has_a_header_deadline_too(short):
    with raw(short) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = read_response(sock)
        assert first.startswith(b"HTTP/1.1 200 ") and first.endswith(b'{"status": "ok"}')
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        assert read_until_closed(sock, trickle=b"X-Slow: " + b"a" * 10_000) == b""


def test_a_body_that_does_not_arrive_gets_408(short):
    with raw(short) as sock:
        sock.sendall(
            b"POST /o/token/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
            b"grant_type="
        )
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_an_idle_kept_alive_connection_is_closed(short):
    with raw(short) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 200 ")


def test_a_websocket_that_says_nothing_is_closed_with_a_reason(short, live_db):
    alice = actor_on(short, "alice")
    url = short.url.replace("http", "ws") + "/v1/ws"
    with connect(url, additional_headers=alice.headers, open_timeout=10) as ws:
        ws.send('{"type": "ping"}')
        assert ws.recv(timeout=10) == '{"type":"pong"}'
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=CLOSED_WITHIN)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4408
    assert "idle" in closed.value.rcvd.reason


def test_a_client_over_its_connection_cap_is_refused(start_gateway, live_db):
    server = start_gateway(SLUICE_MAX_CONNECTIONS_PER_CLIENT="4")
    alice = actor_on(server, "alice")
    url = server.url.replace("http", "ws") + "/v1/ws"
    with ExitStack() as held:
        # The cap counts WebSockets too: the slot follows the upgraded transport.
        ws = held.enter_context(connect(url, additional_headers=alice.headers, open_timeout=10))
        for _ in range(3):
            held.enter_context(raw(server))
        time.sleep(0.5)  # let the server take the three raw connections
        with raw(server) as fifth:
            assert read_until_closed(fifth, trickle=b"GET /healthz HTTP/1.1\r\n\r\n") == b""
        # Another address is still served.
        other = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(transport=other, timeout=10) as client:
            assert client.get(f"{server.url}/healthz").status_code == 200
        ws.close()
        # The WebSocket's slot came back when it closed: a new client fits.
        assert _served_soon(server)
    scraped = scrape(server)
    assert scraped.value("sluice_connections_refused_total", reason="per_client_cap") >= 1


def _served_soon(server) -> bool:
    deadline = time.monotonic() + CLOSED_WITHIN
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200:
                return True
        except httpx.TransportError:
            time.sleep(0.2)
    return False

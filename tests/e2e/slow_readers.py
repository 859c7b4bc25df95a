"""What the slow-reader tests share (tests/e2e/test_slow_client.py over SSE,
test_ws_flow.py over WebSocket): a gateway that cuts stalled readers off, a
socket that stops taking data after a few KB, and a way to see it dropped."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx

from tests.conftest import Actor
from tests.live import GatewayServer, server_env

TCP_ESTABLISHED = 1
# About 6 MB of chunks: far more than the socket buffers between the gateway and a client.
BIG_TOKENS = [f"<{i:04d}>" + "x" * 2000 for i in range(3000)]


def stalling_gateway(stall_seconds: str) -> Iterator[GatewayServer]:
    """A gateway that cuts off a reader stalled for ``stall_seconds`` (a fixture's body)."""
    env = server_env(SLUICE_READER_STALL_SECONDS=stall_seconds, SLUICE_STREAM_ABANDON_SECONDS="30")
    server = GatewayServer(env=env).start()
    yield server
    server.stop()


def small_buffer_socket(gateway: GatewayServer) -> socket.socket:
    """A socket connected to ``gateway`` with a tiny receive buffer: it stops
    taking data soon after its owner stops reading."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", gateway.port))
    return sock


def wait_disconnected(sock: socket.socket, timeout: float) -> bool:
    """Whether the gateway dropped the connection, checked without reading."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        if info[0] != TCP_ESTABLISHED:
            return True
        time.sleep(0.1)
    return False


def revoke(gateway: GatewayServer, actor: Actor) -> None:
    """Revoke ``actor``'s token at ``gateway``'s OAuth2 endpoint, as its app would."""
    revoked = httpx.post(
        f"{gateway.url}/o/revoke_token/",
        data={"token": actor.token},
        auth=(actor.client_id, actor.client_secret),
    )
    assert revoked.status_code == 200, revoked.text

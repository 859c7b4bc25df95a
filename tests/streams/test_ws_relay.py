"""A WebSocket stream whose relay hits a bug: the client is told, the socket lives on.

In-process (Channels' communicator on the real consumer, the real demo
stream, the test database): a bug cannot be switched on in a gateway
process, so the frame encoder is made to fail here.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator

from audit.writer import audit_flush
from gateway.asgi import application
from streaming.providers.pool import close_upstream_pool
from streaming.transports.encoders.chat import ChatWebSocket
from tests.conftest import wait_for_audit

pytestmark = [pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]


def test_a_stream_whose_relay_fails_ends_with_an_error_and_the_socket_lives_on(
    alice, demo_model, monkeypatch, caplog
):
    encode = ChatWebSocket.encode
    broken: set[str] = set()

    def encode_unless_broken(self: ChatWebSocket, batch: Any) -> list[bytes]:
        if self._sid.decode().strip('"') in broken:
            raise RuntimeError("a bug in the frame encoder")
        return encode(self, batch)

    monkeypatch.setattr(ChatWebSocket, "encode", encode_unless_broken)
    chat = {"model": demo_model, "messages": [{"role": "user", "content": "hi"}]}

    async def talk() -> tuple[list[dict[str, Any]], str]:
        socket = WebsocketCommunicator(
            application, "/v1/ws", headers=[(b"authorization", f"Bearer {alice.token}".encode())]
        )
        connected, _ = await socket.connect(timeout=10)
        assert connected
        messages = []
        await socket.send_json_to({"type": "chat.create", "request_id": "bad", **chat})
        created = await socket.receive_json_from(timeout=10)
        assert created["type"] == "stream.created"
        broken.add(created["stream_id"])
        messages.append(await socket.receive_json_from(timeout=10))
        # The same socket still serves: a ping, and a stream to its end.
        await socket.send_json_to({"type": "ping"})
        messages.append(await socket.receive_json_from(timeout=10))
        await socket.send_json_to({"type": "chat.create", "request_id": "good", **chat})
        while messages[-1]["type"] != "stream.done":
            messages.append(await socket.receive_json_from(timeout=10))
        await socket.disconnect()
        await close_upstream_pool()  # this loop's: asyncio.run ends it
        return messages, created["stream_id"]

    with caplog.at_level(logging.ERROR, logger="sluice.ws"):
        messages, bad = asyncio.run(talk())
    assert audit_flush()  # both streams' audit, written here while the test database is ours
    assert wait_for_audit(bad).outcome == "completed"  # the generation itself went on

    error, pong, good_created = messages[:3]
    assert error["type"] == "error" and error["stream_id"] == bad
    assert error["status"] == 500 and error["error"]["code"] == "internal_error"
    assert pong == {"type": "pong"}
    assert good_created["type"] == "stream.created"
    text = "".join(
        m["chunk"]["choices"][0]["delta"].get("content") or ""
        for m in messages
        if m["type"] == "chunk"
    )
    assert text.startswith("You asked")
    assert {m.get("stream_id") for m in messages[3:]} == {good_created["stream_id"]}
    (failed,) = [r for r in caplog.records if r.getMessage() == f"stream {bad}: relay failed"]
    assert failed.exc_info and "a bug in the frame encoder" in str(failed.exc_info[1])

"""A WebSocket message whose handling hits a bug: that message gets a 500, the
socket and its other streams carry on (issue 18, hole 4).

In-process, like test_ws_relay: a bug cannot be switched on in a gateway
process, so the route lookup is made to fail here for one model name.
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
from streaming.transports import api as routes
from tests.conftest import wait_for_audit

pytestmark = [pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]


def test_a_message_that_hits_a_bug_is_answered_and_the_socket_lives_on(
    alice, demo_model, monkeypatch, caplog
):
    lookup = routes.resolve_route  # the WebSocket consumer finds routes as the HTTP API does

    async def resolve_route(model: str) -> Any:
        if model == "bug":
            raise RuntimeError("a bug in the route lookup")
        return await lookup(model)

    monkeypatch.setattr(routes, "resolve_route", resolve_route)
    hello = [{"role": "user", "content": "hi"}]

    async def talk() -> tuple[list[dict[str, Any]], str]:
        socket = WebsocketCommunicator(
            application, "/v1/ws", headers=[(b"authorization", f"Bearer {alice.token}".encode())]
        )
        connected, _ = await socket.connect(timeout=10)
        assert connected
        await socket.send_json_to(
            {"type": "chat.create", "request_id": "good", "model": demo_model, "messages": hello}
        )
        created = await socket.receive_json_from(timeout=10)
        assert created["type"] == "stream.created"
        await socket.send_json_to(
            {"type": "chat.create", "request_id": "bad", "model": "bug", "messages": hello}
        )
        await socket.send_json_to({"type": "ping"})
        messages = [await socket.receive_json_from(timeout=10)]
        while messages[-1]["type"] != "stream.done":
            messages.append(await socket.receive_json_from(timeout=10))
        await socket.disconnect()
        await close_upstream_pool()
        return messages, created["stream_id"]

    with caplog.at_level(logging.ERROR, logger="sluice.ws"):
        messages, good = asyncio.run(talk())
    assert audit_flush()
    assert wait_for_audit(good).outcome == "completed"

    errors = [m for m in messages if m["type"] == "error"]
    assert len(errors) == 1 and errors[0]["request_id"] == "bad"
    assert errors[0]["status"] == 500 and errors[0]["error"]["code"] == "internal_error"
    assert {"type": "pong"} in messages
    assert messages[-1] == {"type": "stream.done", "stream_id": good, "seq": messages[-1]["seq"]}
    logged = [r for r in caplog.records if r.name == "sluice.ws"]
    assert len(logged) == 1 and logged[0].exc_info is not None

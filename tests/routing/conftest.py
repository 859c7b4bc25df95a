"""Helpers for routing tests: a WebSocket client, SDK text, extra gateways."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from websockets.sync.client import connect

from tests.conftest import Actor
from tests.live import GatewayServer, server_env

HELLO = [{"role": "user", "content": "Say something"}]


def ws_chat(gateway: GatewayServer, actor: Actor, model: str, **params: Any) -> list[dict]:
    """One chat over the WebSocket transport: every message up to stream.done."""
    url = gateway.url.replace("http", "ws", 1) + "/v1/ws"
    messages: list[dict] = []
    with connect(url, additional_headers=actor.headers, open_timeout=10) as ws:
        request = {"type": "chat.create", "request_id": "r1", "model": model, **params}
        request.setdefault("messages", HELLO)
        ws.send(orjson.dumps(request).decode())
        while not messages or messages[-1]["type"] not in ("stream.done",):
            messages.append(orjson.loads(ws.recv(timeout=20)))
    return messages


def ws_text(messages: list[dict]) -> str:
    return "".join(
        choice["delta"].get("content") or ""
        for m in messages
        if m["type"] == "chunk"
        for choice in m["chunk"]["choices"]
    )


def sdk_stream(client: Any, model: str, **params: Any) -> tuple[list[Any], str]:
    """Stream through the OpenAI SDK; the chunks and the text."""
    params.setdefault("messages", HELLO)
    chunks = list(client.chat.completions.create(model=model, stream=True, **params))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks, text


def attempts(record: Any) -> list[tuple[str, str, bool]]:
    """(outcome, error_class, continuation) of each attempt, in order."""
    return [(a.outcome, a.error_class, a.continuation) for a in record.attempts.all()]


@pytest.fixture(scope="session")
def breaker_gateway(django_db_setup: None) -> Iterator[GatewayServer]:
    """A gateway whose circuits open after 2 failures and cool down in 1 s."""
    env = server_env(DJANGO_SETTINGS_MODULE="tests.routing.breaker_settings")
    server = GatewayServer(env=env).start()
    yield server
    server.stop()

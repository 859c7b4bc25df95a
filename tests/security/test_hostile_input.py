"""Hostile input never costs an audit record or a 500 (issue 18, holes 3 and 4).

Every transport applies the same input rules (streaming.transports.schema); text may
hold any Unicode JSON carries, and what PostgreSQL cannot store is stored
escaped.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from tests.conftest import wait_for_audit
from tests.security.payloads import deep, encode

pytestmark = [pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]

NUL = "\x00"


def post(gateway, actor, body: dict[str, Any], path: str = "/v1/chat/completions"):
    headers = {**actor.headers, "content-type": "application/json"}
    return httpx.post(f"{gateway.url}{path}", headers=headers, content=encode(body), timeout=20)


def assert_400(response: httpx.Response, param_start: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"].startswith(param_start), error
    assert param_start.split(".")[0] in error["message"]


@pytest.mark.parametrize("stream", [True, False])
def test_a_nul_in_a_message_and_in_user_is_served_and_audited_escaped(
    gateway, alice, demo_model, stream
):
    body = {
        "model": demo_model,
        "messages": [{"role": "user", "content": f"before{NUL}after"}],
        "user": f"u{NUL}1",
        "metadata": {f"k{NUL}": f"v{NUL}"},
        "stream": stream,
    }
    response = post(gateway, alice, body)
    assert response.status_code == 200, response.text
    record = wait_for_audit(response.headers["x-sluice-stream-id"])
    assert record.request_messages[0]["content"] == "before\\u0000after"
    assert record.request_params["user"] == "u\\u00001"
    assert record.request_params["metadata"] == {"k\\u0000": "v\\u0000"}
    # The demo quotes the prompt: the answer holds the NUL too.
    assert "before\\u0000after" in record.response_text
    assert record.outcome == "completed"


def test_a_nul_in_model_is_a_400_on_every_transport(gateway, alice, demo_model):
    model = demo_model + NUL
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    assert_400(post(gateway, alice, chat), "model")
    assert_400(post(gateway, alice, {**chat, "stream": True}), "model")
    assert_400(post(gateway, alice, chat, "/v1/streams"), "model")
    response = httpx.get(
        f"{gateway.url}/v1/chat/stream",
        params={"model": model, "prompt": "hi"},
        headers=alice.headers,
        timeout=20,
    )
    assert_400(response, "model")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"metadata": deep(1000)}, "metadata"),
        ({"messages": [{"role": "user", "content": [deep(40)]}]}, "messages"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata.k"),
        ({"metadata": {"k": 1}}, "metadata.k"),
        ({"user": "u" * 257}, "user"),
        ({"user": 5}, "user"),
        ({"model": "m" * 201}, "model"),
        ({"model": "two words"}, "model"),
        ({"messages": [{"role": "user", "content": "x"}] * 2049}, "messages"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}] * 129}, "tools"),
        ({"tools": [1]}, "tools[0]"),
        ({"tools": [{"type": "function", "function": {"name": 7}}]}, "tools[0]"),
        ({"tool_choice": 3}, "tool_choice"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": [{"role": "user", "content": [1]}]}, "messages[0].content[0]"),
        (
            {"messages": [{"role": "assistant", "content": None, "tool_calls": [1]}]},
            "messages[0].tool_calls",
        ),
    ],
)
def test_limits_are_400s_naming_the_field(gateway, alice, demo_model, extra, param):
    body = {"model": demo_model, "messages": [{"role": "user", "content": "hi"}], **extra}
    assert_400(post(gateway, alice, body), param)
    assert_400(post(gateway, alice, body, "/v1/streams"), param)


def test_a_request_at_the_limits_is_served_and_audited(gateway, alice, demo_model):
    body = {
        "model": demo_model,
        "messages": [{"role": "user", "content": "hi"}],
        "user": "u" * 256,
        "metadata": {f"{i:064d}": "v" * 512 for i in range(16)},
        "response_format": {"type": "json_schema", "json_schema": deep(25)},
    }
    response = post(gateway, alice, body)
    assert response.status_code == 200, response.text
    record = wait_for_audit(response.headers["x-sluice-stream-id"])
    assert len(record.request_params["metadata"]) == 16


def ws_url(gateway) -> str:
    return gateway.url.replace("http", "ws") + "/v1/ws"


def receive_until(socket, kind: str, **match: Any) -> dict[str, Any]:
    while True:
        message = json.loads(socket.recv(timeout=20))
        if message["type"] == kind and all(message.get(k) == v for k, v in match.items()):
            return message


def test_a_bad_websocket_message_is_answered_and_the_socket_and_its_streams_live_on(
    gateway, alice, make_route
):
    slow = make_route(("demo", "", "demo"), prefix="slow")
    from streaming.models import RouteTarget

    RouteTarget.objects.filter(route__model=slow).update(params={"tokens": 60, "delay": 0.02})
    with connect(ws_url(gateway), additional_headers=alice.headers) as socket:
        hello = [{"role": "user", "content": "hi"}]
        socket.send(
            json.dumps(
                {"type": "chat.create", "request_id": "ok", "model": slow, "messages": hello}
            )
        )
        stream_id = receive_until(socket, "stream.created", request_id="ok")["stream_id"]
        for request_id, message in [
            ("nul", {"model": slow + NUL, "messages": hello}),
            ("deep", {"model": slow, "messages": hello, "metadata": deep(1000)}),
            ("user", {"model": slow, "messages": hello, "user": ["x"]}),
        ]:
            socket.send(encode({"type": "chat.create", "request_id": request_id, **message}))
            error = receive_until(socket, "error", request_id=request_id)
            assert error["status"] == 400, error
            assert error["error"]["param"], error
        socket.send(json.dumps({"type": "chat.create", "request_id": [[[["x"]]]] * 2, "model": 1}))
        assert receive_until(socket, "error")["status"] == 400
        socket.send('{"type": "ping"}')
        receive_until(socket, "pong")
        done = receive_until(socket, "stream.done", stream_id=stream_id)
        assert done

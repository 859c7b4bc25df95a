"""A gateway configured with Redis keeps serving its own streams while Redis is down.

Redis carries what instances share (resume elsewhere, cross-instance cancel);
a stream produced and read on one instance needs none of it.
"""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.sync.client import connect

from tests.live import GatewayServer, free_port, server_env
from tests.streams.clients import resume_sse, start_sse

pytestmark = [pytest.mark.timeout(90), pytest.mark.django_db(transaction=True)]
CHAT = {"stream": True, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def redis_down(django_db_setup):
    # A port nothing listens on: every Redis call is refused.
    server = GatewayServer(env=server_env(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"))
    yield server.start()
    server.stop()


def test_a_websocket_streams_and_stays_open_while_redis_is_down(redis_down, alice, demo_model):
    with connect(
        redis_down.url.replace("http", "ws") + "/v1/ws", additional_headers=alice.headers
    ) as ws:
        ws.send(json.dumps({"type": "chat.create", "request_id": "r", "model": demo_model, **CHAT}))
        kinds = []
        while not kinds or kinds[-1] != "stream.done":
            kinds.append(json.loads(ws.recv(timeout=10))["type"])
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=10)) == {"type": "pong"}
    assert kinds[0] == "stream.created" and "chunk" in kinds and "error" not in kinds


def test_sse_streams_while_redis_is_down(redis_down, alice, demo_model):
    progress = start_sse(redis_down.url, alice.headers, demo_model, stop_after=None)
    assert progress.done and progress.content and progress.error is None


def test_own_streams_resume_and_others_are_a_503_while_redis_is_down(redis_down, alice, demo_model):
    """A stream this instance ran resumes as usual. Whether another instance runs a
    stream cannot be known without Redis: a 503 saying so, not a 404 (it may well
    exist) and not a 500."""
    progress = start_sse(redis_down.url, alice.headers, demo_model, stop_after=2)
    resume_sse(redis_down.url, alice.headers, progress)
    assert progress.done and progress.error is None

    for method in ("GET", "DELETE"):
        response = httpx.request(
            method, f"{redis_down.url}/v1/streams/chatcmpl-elsewhere", headers=alice.headers
        )
        assert response.status_code == 503, (method, response.text)
        assert response.json()["error"]["code"] == "stream_store_unavailable"


def test_redis_warnings_do_not_flood_the_log(redis_down, alice, demo_model):
    """Each request meets the outage (breakers, the stream's mirror): its warnings are
    logged once a minute, not once a request."""
    for _ in range(8):
        assert start_sse(redis_down.url, alice.headers, demo_model, stop_after=None).done
    log = redis_down.log_path.read_text(errors="replace")
    for warning in ("could not read circuit breakers from Redis", "redis mirror failed"):
        assert log.count(warning) == 1, (warning, log[-3000:])

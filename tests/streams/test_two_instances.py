"""Two gateway processes sharing Redis: start a stream on one, resume it on the other."""

from __future__ import annotations

import asyncio
import json
import os
import time

import httpx
import pytest
import redis
from websockets.sync.client import connect

from tests.conftest import unique, wait_for_audit
from tests.live import GatewayServer, server_env
from tests.metrics.conftest import scrape
from tests.streams.clients import Progress, read_ndjson, read_sse, resume_sse, start_sse

REDIS_URL = os.environ.get("REDIS_URL", "")
pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not REDIS_URL, reason="needs REDIS_URL (CI sets it)"),
]
TOKENS = [f"r{i} " for i in range(40)]


@pytest.fixture(scope="module")
def pair(django_db_setup):
    servers = [GatewayServer(env=server_env(REDIS_URL=REDIS_URL)).start() for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def model(upstream, make_route):
    upstream_model = unique("pair")
    upstream.script(upstream_model, tokens=TOKENS, delay=0.04)
    return make_route(("openai", upstream.base_url, upstream_model)), upstream_model


def test_sse_started_on_a_resumes_live_on_b(pair, alice, model):
    a, b = pair
    progress = start_sse(a.url, alice.headers, model[0], stop_after=4)

    resume_sse(b.url, alice.headers, progress)

    assert progress.done
    assert progress.content == "".join(TOKENS)
    assert progress.seqs == list(range(1, len(progress.seqs) + 1))


def test_ndjson_and_websocket_resume_on_b_after_the_end(pair, alice, model):
    a, b = pair
    progress = start_sse(a.url, alice.headers, model[0], stop_after=3)
    wait_for_audit(progress.stream_id)  # the stream has ended on A

    ndjson = Progress(cursor=progress.cursor)
    with httpx.stream(
        "GET",
        f"{b.url}/v1/streams/{progress.stream_id}?after={progress.cursor}",
        headers={**alice.headers, "Accept": "application/x-ndjson"},
    ) as response:
        read_ndjson(response, ndjson, None)
    ws_progress = Progress(cursor=progress.cursor)
    with connect(b.url.replace("http", "ws") + "/v1/ws", additional_headers=alice.headers) as ws:
        ws.send(
            json.dumps(
                {"type": "stream.resume", "stream_id": progress.stream_id, "after": progress.cursor}
            )
        )
        while not ws_progress.done:
            message = json.loads(ws.recv(timeout=10))
            if message["type"] == "stream.done":
                ws_progress.done = True
            else:
                ws_progress.take_chunk(message["seq"], message["chunk"])

    expected_rest = "".join(TOKENS)[len(progress.content) :]
    assert ndjson.done and ndjson.content == expected_rest
    assert ws_progress.content == expected_rest


def test_delete_on_b_cancels_the_stream_running_on_a(pair, alice, model, upstream):
    a, b = pair
    progress = start_sse(a.url, alice.headers, model[0], stop_after=2)
    time.sleep(0.1)  # let A mirror the stream to Redis

    response = httpx.delete(f"{b.url}/v1/streams/{progress.stream_id}", headers=alice.headers)

    assert response.status_code == 200 and response.json()["cancelled"] is True
    assert upstream.wait_open_requests(0, timeout=2.0)
    assert wait_for_audit(progress.stream_id).outcome == "cancelled"


def test_b_applies_ownership_and_404(pair, alice, bob, model):
    a, b = pair
    progress = start_sse(a.url, alice.headers, model[0], stop_after=1)
    time.sleep(0.1)
    url = f"{b.url}/v1/streams/{progress.stream_id}"
    assert httpx.get(url, headers=bob.headers).status_code == 403
    assert (
        httpx.get(f"{b.url}/v1/streams/chatcmpl-missing", headers=alice.headers).status_code == 404
    )


def _finished_with_its_end_gone(a: GatewayServer, alice, route: str) -> Progress:
    """A stream read on A up to a cursor, finished there; then its END is taken
    out of Redis: to a reader on B, its keys expired while it read."""
    progress = start_sse(a.url, alice.headers, route, stop_after=2)
    wait_for_audit(progress.stream_id)  # ended on A, END mirrored to Redis
    log_key = f"sluice:stream:{progress.stream_id}:log"
    with redis.Redis.from_url(REDIS_URL) as client:
        ((last_id, _),) = client.xrevrange(log_key, count=1)
        assert client.xdel(log_key, last_id) == 1
    return progress


def _closed(server: GatewayServer, transport: str) -> dict[str, float]:
    """sluice_connections_closed_total on ``server`` for ``transport``, by reason."""
    samples = scrape(server).samples
    return {
        s.labels["reason"]: s.value
        for s in samples
        if s.name == "sluice_connections_closed_total" and s.labels["transport"] == transport
    }


def _log_from(server: GatewayServer, offset: int) -> str:
    return server.log_path.read_text(errors="replace")[offset:]


def test_a_finished_stream_whose_log_runs_out_is_not_waited_on_forever(pair, alice, model):
    """B finds nothing after the cursor of a finished stream (its keys expired under
    the reader, here its END taken away): the reader gets what there was and a
    broken connection at once, not keep-alives for events that cannot come. B
    logs it as one warning, not as an exception in the ASGI application."""
    a, b = pair
    progress = _finished_with_its_end_gone(a, alice, model[0])
    log_offset = len(b.log_path.read_text(errors="replace"))
    before = _closed(b, "sse")

    rest = Progress(cursor=progress.cursor)
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream(
            "GET",
            f"{b.url}/v1/streams/{progress.stream_id}",
            headers={**alice.headers, "Last-Event-ID": str(progress.cursor)},
            timeout=30,
        ) as response,
    ):
        assert response.status_code == 200
        read_sse(response, rest, None)

    # Without the check B never ended the response (a keep-alive every second
    # kept the read timeout from firing): the test ran into its timeout instead.
    assert progress.content + rest.content == "".join(TOKENS) and not rest.done
    log = _log_from(b, log_offset)
    assert f"stream {progress.stream_id} expired while it was read: breaking the response" in log
    assert "Traceback" not in log and "ASGI" not in log
    assert _closed(b, "sse") == {**before, "broken": before.get("broken", 0) + 1}


def test_a_websocket_reader_whose_stream_runs_out_is_told_and_keeps_its_socket(pair, alice, model):
    """The same on a WebSocket, which carries other streams: the client gets the
    events there were, then an error for that stream, and the socket still works."""
    a, b = pair
    progress = _finished_with_its_end_gone(a, alice, model[0])
    before = _closed(b, "ws")

    rest = Progress(cursor=progress.cursor)
    with connect(b.url.replace("http", "ws") + "/v1/ws", additional_headers=alice.headers) as ws:
        ws.send(
            json.dumps(
                {"type": "stream.resume", "stream_id": progress.stream_id, "after": progress.cursor}
            )
        )
        while (message := json.loads(ws.recv(timeout=10)))["type"] == "chunk":
            rest.take_chunk(message["seq"], message["chunk"])
        ws.send(json.dumps({"type": "ping"}))
        pong = json.loads(ws.recv(timeout=10))

    assert progress.content + rest.content == "".join(TOKENS)
    assert message["type"] == "error" and message["stream_id"] == progress.stream_id
    assert message["status"] == 409 and message["error"]["code"] == "cursor_out_of_range"
    assert pong["type"] == "pong"
    assert _closed(b, "ws") == {**before, "broken": before.get("broken", 0) + 1}


def test_an_idle_websocket_stays_open(pair, alice):
    """An idle WebSocket stays open. (It was on the channel layer, whose Redis reads
    timed out after 5 s under redis-py 8, and then closed after 5 s idle.)"""
    a, _ = pair
    with connect(a.url.replace("http", "ws") + "/v1/ws", additional_headers=alice.headers) as ws:
        time.sleep(12)  # two of the layer's 5 s blocking reads
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "pong"


@pytest.mark.parametrize(
    ("keepalive", "abandon"),
    [
        # B blocks on Redis 6 s at a time: longer than redis-py's 5 s read timeout,
        # which timed the read out and retried it, starting the wait over, so
        # through the silence no keep-alive came.
        ("6", "30"),
        # ... and longer than B's mark that it reads the stream lasts (2 s): A
        # abandoned the stream with B's reader still on it.
        ("6", "2"),
    ],
)
def test_a_reader_on_b_gets_keep_alives_through_a_long_silence(
    alice, make_route, upstream, pair, keepalive, abandon
):
    """B waits on Redis for A's next event at most the keep-alive interval, then sends
    a keep-alive (which keeps proxies from cutting an idle stream); the stream goes
    on to its end."""
    a, _ = pair
    env = server_env(
        REDIS_URL=REDIS_URL,
        SLUICE_SSE_KEEPALIVE_SECONDS=keepalive,
        SLUICE_STREAM_ABANDON_SECONDS=abandon,
    )
    b = GatewayServer(env=env).start()
    try:
        upstream_model = unique("silent")
        upstream.script(upstream_model, tokens=["first ", "second"], delay=8.0)
        route = make_route(("openai", upstream.base_url, upstream_model))
        progress = start_sse(a.url, alice.headers, route, stop_after=1)
        lines = []
        with httpx.stream(
            "GET",
            f"{b.url}/v1/streams/{progress.stream_id}",
            headers={**alice.headers, "Last-Event-ID": str(progress.cursor)},
            timeout=30,
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                lines.append(line)
                if line == "data: [DONE]":
                    break
    finally:
        b.stop()

    assert not any('"error"' in line for line in lines), lines
    second = next(i for i, line in enumerate(lines) if '"content":"second"' in line)
    assert ": keep-alive" in lines[:second], lines
    assert lines[-1] == "data: [DONE]"


async def test_the_channel_layer_waits_for_a_message_longer_than_a_redis_read_timeout():
    """The Redis channel layer (configured for whatever comes to use it) blocks on
    Redis 5 s at a time; redis-py 8 times reads out after 5 s unless told otherwise,
    and the layer's receive raised TimeoutError instead of waiting
    (channels_redis#422)."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    assert type(layer).__name__ == "RedisChannelLayer"
    name = await layer.new_channel()

    async def send_later() -> None:
        await asyncio.sleep(7)
        await layer.send(name, {"type": "late"})

    sender = asyncio.ensure_future(send_later())
    try:
        assert (await layer.receive(name))["type"] == "late"
    finally:
        sender.cancel()
        await layer.flush()


def test_background_response_started_on_a_resumes_on_b(pair, alice, model):
    import openai

    a, b = pair
    on_a = openai.OpenAI(base_url=f"{a.url}/v1", api_key=alice.token, max_retries=0)
    on_b = openai.OpenAI(base_url=f"{b.url}/v1", api_key=alice.token, max_retries=0)
    seen = []
    with on_a.responses.create(model=model[0], input="hi", background=True, stream=True) as events:
        for event in events:
            seen.append(event)
            if event.type == "response.output_text.delta" and len(seen) >= 6:
                break  # the client leaves A; the background response goes on there

    response_id = seen[0].response.id
    rest = list(
        on_b.responses.retrieve(response_id, stream=True, starting_after=seen[-1].sequence_number)
    )
    final = on_b.responses.retrieve(response_id)
    cancelled = on_b.responses.cancel(response_id)  # ended already: it stays completed

    events = seen + rest
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "".join(TOKENS)
    assert final.status == "completed" and final.output_text == text
    assert cancelled.status == "completed"
    on_a.close()
    on_b.close()

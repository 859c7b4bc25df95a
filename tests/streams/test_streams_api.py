"""Streams as first-class, resumable objects: create, attach, resume, cancel."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from websockets.sync.client import connect

from tests.conftest import unique, wait_for_audit
from tests.streams.clients import Progress, read_ndjson, read_sse, start_sse

pytestmark = [pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def slow_model(upstream, make_route):
    """An upstream that takes ~2 s to answer 40 tokens."""
    upstream_model = unique("slow")
    upstream.script(upstream_model, tokens=[f"t{i} " for i in range(40)], delay=0.05)
    return make_route(("openai", upstream.base_url, upstream_model)), upstream_model


def create(gateway, actor, model):
    response = httpx.post(
        f"{gateway.url}/v1/streams",
        headers=actor.headers,
        json={"model": model, **CHAT},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return response.json()


def test_create_then_attach_with_ticket_only(gateway, alice, demo_model):
    created = create(gateway, alice, demo_model)
    # events_url opens as it is: its ticket is on it (a browser cannot add one).
    assert created["events_url"] == f"/v1/streams/{created['id']}?ticket={created['ticket']}"

    progress = Progress()
    with httpx.stream(
        "GET",
        f"{gateway.url}{created['events_url']}",
        headers={"Accept": "text/event-stream"},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        read_sse(response, progress, None)

    assert progress.done and progress.content.startswith("You asked")


def test_a_stream_ticket_opens_only_its_own_stream(gateway, alice, demo_model):
    first, second = create(gateway, alice, demo_model), create(gateway, alice, demo_model)
    response = httpx.get(f"{gateway.url}/v1/streams/{second['id']}?ticket={first['ticket']}")
    assert response.status_code == 401


def test_resume_with_last_event_id_gets_exactly_the_rest(gateway, alice, slow_model):
    model, _ = slow_model
    created = create(gateway, alice, model)
    url = f"{gateway.url}/v1/streams/{created['id']}"
    progress = Progress()
    with httpx.stream("GET", url, headers={**alice.headers, "Accept": "text/event-stream"}) as r:
        read_sse(r, progress, stop_after=5)
    assert progress.cursor == 5

    with httpx.stream(
        "GET", url, headers={**alice.headers, "Accept": "text/event-stream", "Last-Event-ID": "5"}
    ) as r:
        read_sse(r, progress, None)

    assert progress.done
    assert progress.content == "".join(f"t{i} " for i in range(40))


def test_query_cursor_and_ndjson_and_plain_text(gateway, alice, demo_model):
    created = create(gateway, alice, demo_model)
    url = f"{gateway.url}/v1/streams/{created['id']}"
    full = Progress()
    with httpx.stream("GET", url, headers={**alice.headers, "Accept": "application/x-ndjson"}) as r:
        assert r.headers["content-type"] == "application/x-ndjson"
        read_ndjson(r, full, None)
    tail = Progress(cursor=10)
    with httpx.stream(
        "GET", f"{url}?last_event_id=10", headers={**alice.headers, "Accept": "text/event-stream"}
    ) as r:
        read_sse(r, tail, None)
    text = httpx.get(url, headers={**alice.headers, "Accept": "text/plain"}).text

    assert full.done and tail.done
    assert full.seqs[10:] == tail.seqs
    assert text.strip() == full.content.strip()


def test_a_finished_stream_read_to_the_end_answers_204(gateway, alice, demo_model):
    created = create(gateway, alice, demo_model)
    url = f"{gateway.url}/v1/streams/{created['id']}"
    progress = Progress()
    with httpx.stream("GET", url, headers={**alice.headers, "Accept": "text/event-stream"}) as r:
        read_sse(r, progress, None)
    # What a browser's EventSource does after the server closes: reconnect with the last id.
    response = httpx.get(url, headers={**alice.headers, "Last-Event-ID": str(progress.cursor)})
    assert response.status_code == 204


def test_unknown_stream_404_and_cursor_out_of_range_409(gateway, alice, demo_model):
    missing = httpx.get(f"{gateway.url}/v1/streams/chatcmpl-nope", headers=alice.headers)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "stream_not_found"

    created = create(gateway, alice, demo_model)
    beyond = httpx.get(
        f"{gateway.url}/v1/streams/{created['id']}?after=100000", headers=alice.headers
    )
    assert beyond.status_code == 409
    assert beyond.json()["error"]["code"] == "cursor_out_of_range"
    bad = httpx.get(f"{gateway.url}/v1/streams/{created['id']}?after=abc", headers=alice.headers)
    assert bad.status_code == 400


def test_only_the_creating_app_may_read_resume_or_cancel(gateway, alice, bob, demo_model):
    created = create(gateway, alice, demo_model)
    url = f"{gateway.url}/v1/streams/{created['id']}"

    assert httpx.get(url, headers=bob.headers).status_code == 403
    assert httpx.delete(url, headers=bob.headers).status_code == 403
    with connect(
        gateway.url.replace("http", "ws") + "/v1/ws", additional_headers=bob.headers
    ) as ws:
        ws.send(json.dumps({"type": "stream.resume", "stream_id": created["id"], "after": 0}))
        reply = json.loads(ws.recv(timeout=10))
    assert reply["type"] == "error" and reply["status"] == 403
    assert httpx.get(url, headers=alice.headers).status_code == 200


def test_delete_cancels_and_ends_the_upstream_request(gateway, alice, slow_model, upstream):
    model, upstream_model = slow_model
    created = create(gateway, alice, model)
    deadline = time.monotonic() + 5
    while not upstream.requests_for(upstream_model) and time.monotonic() < deadline:
        time.sleep(0.02)

    response = httpx.delete(f"{gateway.url}/v1/streams/{created['id']}", headers=alice.headers)

    assert response.status_code == 200 and response.json()["cancelled"] is True
    assert upstream.wait_open_requests(0, timeout=2.0)
    record = wait_for_audit(created["id"])
    assert record.outcome == "cancelled"


def test_websocket_cancel_ends_the_upstream_request_within_a_second(
    gateway, alice, slow_model, upstream
):
    model, _ = slow_model
    with connect(
        gateway.url.replace("http", "ws") + "/v1/ws", additional_headers=alice.headers
    ) as ws:
        ws.send(json.dumps({"type": "chat.create", "request_id": "q1", "model": model, **CHAT}))
        created = json.loads(ws.recv(timeout=10))
        assert created["type"] == "stream.created" and created["request_id"] == "q1"
        assert json.loads(ws.recv(timeout=10))["type"] == "chunk"
        ws.send(json.dumps({"type": "stream.cancel", "stream_id": created["stream_id"]}))
        cancelled_at = time.monotonic()
        messages = [json.loads(ws.recv(timeout=10))]
        while messages[-1]["type"] not in ("stream.done",):
            messages.append(json.loads(ws.recv(timeout=10)))
    assert upstream.wait_open_requests(0, timeout=1.0)
    assert time.monotonic() - cancelled_at < 1.5
    assert any(m["type"] == "error" and m["error"]["code"] == "cancelled" for m in messages)


def test_websocket_runs_several_streams_on_one_socket_and_ping(gateway, alice, demo_model):
    with connect(
        gateway.url.replace("http", "ws") + "/v1/ws", additional_headers=alice.headers
    ) as ws:
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=10)) == {"type": "pong"}
        for request_id in ("a", "b"):
            ws.send(
                json.dumps(
                    {"type": "chat.create", "request_id": request_id, "model": demo_model, **CHAT}
                )
            )
        done, texts = set(), {}
        while len(done) < 2:
            message = json.loads(ws.recv(timeout=10))
            if message["type"] == "chunk":
                delta = message["chunk"]["choices"][0]["delta"].get("content") or ""
                texts[message["stream_id"]] = texts.get(message["stream_id"], "") + delta
            elif message["type"] == "stream.done":
                done.add(message["stream_id"])
    assert len(texts) == 2 and all(t.startswith("You asked") for t in texts.values())


def test_websocket_handshake_refuses_a_bad_token(gateway):
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as refused:
        connect(
            gateway.url.replace("http", "ws") + "/v1/ws",
            additional_headers={"Authorization": "Bearer wrong"},
        )
    assert refused.value.response.status_code == 403


def test_websocket_ticket_as_subprotocol(gateway, alice, demo_model):
    ticket = httpx.post(f"{gateway.url}/v1/tickets", headers=alice.headers).json()["ticket"]
    with connect(
        gateway.url.replace("http", "ws") + "/v1/ws", subprotocols=[f"sluice.ticket.{ticket}"]
    ) as ws:
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "pong"


def test_disconnect_does_not_stop_generation_and_resume_gets_the_rest(gateway, alice, slow_model):
    model, _ = slow_model
    progress = start_sse(gateway.url, alice.headers, model, stop_after=3)
    stream_id = progress.stream_id
    time.sleep(1.0)  # the client is away; the generation goes on

    with httpx.stream(
        "GET",
        f"{gateway.url}/v1/streams/{stream_id}",
        headers={**alice.headers, "Last-Event-ID": str(progress.cursor)},
    ) as response:
        read_sse(response, progress, None)

    assert progress.content == "".join(f"t{i} " for i in range(40))
    record = wait_for_audit(stream_id)
    assert record.outcome == "completed"
    assert record.resumes == 1
    assert record.response_text == progress.content


def test_abandoned_stream_is_cancelled_upstream(gateway, alice, upstream, make_route):
    upstream_model = unique("long")
    upstream.script(upstream_model, tokens=[f"w{i} " for i in range(400)], delay=0.02)
    model = make_route(("openai", upstream.base_url, upstream_model))
    stream_id = start_sse(gateway.url, alice.headers, model, stop_after=2).stream_id

    # The test gateway abandons after 2 s without a reader; the upstream would run 8 s.
    assert upstream.wait_open_requests(0, timeout=5.0)
    record = wait_for_audit(stream_id)
    assert record.outcome == "abandoned"


def test_sse_keepalive_comments_while_upstream_is_silent(gateway, alice, upstream, make_route):
    upstream_model = unique("quiet")
    upstream.script(upstream_model, tokens=["late"], ttft=2.5)
    model = make_route(("openai", upstream.base_url, upstream_model))
    created = create(gateway, alice, model)
    with httpx.stream(
        "GET",
        f"{gateway.url}/v1/streams/{created['id']}",
        headers={**alice.headers, "Accept": "text/event-stream"},
    ) as response:
        lines = list(response.iter_lines())
    assert ": keep-alive" in lines
    assert "data: [DONE]" in lines


def test_chat_stream_get_for_simple_eventsource_clients(gateway, alice, demo_model):
    ticket = httpx.post(f"{gateway.url}/v1/tickets", headers=alice.headers).json()["ticket"]
    progress = Progress()
    with httpx.stream(
        "GET",
        f"{gateway.url}/v1/chat/stream",
        params={"model": demo_model, "prompt": "hello there", "ticket": ticket},
    ) as r:
        assert r.status_code == 200
        read_sse(r, progress, None)
    assert progress.done and '"hello there"' in progress.content


def test_non_streaming_client_that_leaves_cancels_the_upstream_at_once(
    gateway, alice, slow_model, upstream
):
    model, upstream_model = slow_model
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gateway.url}/v1/chat/completions",
            headers=alice.headers,
            json={"model": model, **CHAT},
            timeout=0.5,
        )
    assert upstream.requests_for(upstream_model)
    assert upstream.wait_open_requests(0, timeout=1.5)  # well before the 2 s abandon timeout


def test_streaming_client_that_leaves_before_the_first_token_cancels_the_upstream(
    gateway, alice, upstream, make_route
):
    # The response is held until the first token; a client gone by then has
    # nothing to resume from, so the generation stops at once.
    upstream_model = unique("late")
    upstream.script(upstream_model, tokens=["late"], ttft=5.0)
    model = make_route(("openai", upstream.base_url, upstream_model))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gateway.url}/v1/chat/completions",
            headers=alice.headers,
            json={"model": model, "stream": True, **CHAT},
            timeout=0.5,
        )
    assert upstream.requests_for(upstream_model)
    assert upstream.wait_open_requests(0, timeout=1.5)  # well before the 2 s abandon timeout
    from audit.models import AuditRecord

    deadline = time.monotonic() + 10
    records = AuditRecord.objects.filter(public_model=model).exclude(outcome="in_progress")
    while not (record := records.first()):
        assert time.monotonic() < deadline, "no audit record"
        time.sleep(0.05)
    assert record.outcome == "client_disconnected"


def test_two_readers_follow_one_stream_at_once(gateway, alice, slow_model):
    import threading

    model, _ = slow_model
    created = create(gateway, alice, model)
    results = [Progress(), Progress()]

    def read(progress):
        with httpx.stream(
            "GET",
            f"{gateway.url}/v1/streams/{created['id']}",
            headers={**alice.headers, "Accept": "text/event-stream"},
        ) as r:
            read_sse(r, progress, None)

    tabs = [threading.Thread(target=read, args=(p,)) for p in results]
    for tab in tabs:
        tab.start()
    for tab in tabs:
        tab.join(20)
    expected = "".join(f"t{i} " for i in range(40))
    assert [p.content for p in results] == [expected, expected]


def test_cancel_right_after_create_still_ends_the_stream(gateway, alice, slow_model):
    model, _ = slow_model
    created = create(gateway, alice, model)
    httpx.delete(f"{gateway.url}/v1/streams/{created['id']}", headers=alice.headers)
    progress = Progress()
    with httpx.stream(
        "GET",
        f"{gateway.url}/v1/streams/{created['id']}",
        headers={**alice.headers, "Accept": "text/event-stream"},
        timeout=5,
    ) as r:
        read_sse(r, progress, None)
    assert progress.done
    assert progress.error is not None and progress.error["code"] == "cancelled"


@pytest.mark.parametrize(
    ("accept", "protocol"),
    [("text/plain", "text"), ("application/x-ndjson", "ndjson"), ("text/event-stream", "sse")],
)
def test_a_stream_is_recorded_as_the_transport_it_was_served_over(
    gateway, alice, demo_model, accept, protocol
):
    body = {"model": demo_model, "stream": True, **CHAT}
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        headers={**alice.headers, "Accept": accept},
        json=body,
    ) as response:
        assert response.headers["content-type"].startswith(accept)
        response.read()
    assert wait_for_audit(response.headers["x-sluice-stream-id"]).protocol == protocol

"""Per-app limits on a served gateway: every transport and protocol, OpenAI's answers.

Run without REDIS_URL the gateway counts in process; with it, in Redis.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from websockets.sync.client import connect

from accounts.models import AppPolicy
from tests.conftest import Actor, unique
from tests.fakes.upstream import FakeUpstream
from tests.metrics.conftest import scrape

pytestmark = [pytest.mark.timeout(90), pytest.mark.django_db(transaction=True)]

LONG_PROMPT = "word " * 100  # about 125 tokens as admission estimates them
RATE_HEADERS = {
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
}


def limit(actor: Actor, **limits: Any) -> Actor:
    """Set the app's limits (before its first request: its identity is not cached yet)."""
    AppPolicy.objects.filter(application_id=actor.app_id).update(**limits)
    return actor


@pytest.fixture
def route(make_route: Callable[..., str], upstream: FakeUpstream) -> Callable[..., str]:
    def make(*, delay: float = 0.0, tokens: int = 3) -> str:
        upstream_model = unique("lim")
        upstream.script(upstream_model, tokens=[f"t{i} " for i in range(tokens)], delay=delay)
        return make_route(("openai", upstream.base_url, upstream_model), prefix="lim")

    return make


class Answer:
    """What one request got: its status, headers and error (or None)."""

    def __init__(self, status: int, headers: dict[str, str], body: Any) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def code(self) -> str | None:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return error.get("code") if isinstance(error, dict) else None


def _http(base: str, method: str, path: str, actor: Actor, **kwargs: Any) -> Answer:
    with httpx.stream(method, base + path, headers=actor.headers, timeout=20, **kwargs) as r:
        raw = r.read()
    try:
        body = json.loads(raw)
    except ValueError:
        body = raw.decode(errors="replace")
    return Answer(r.status_code, dict(r.headers), body)


def _ws(base: str, actor: Actor, model: str, prompt: str) -> Answer:
    url = base.replace("http", "ws") + "/v1/ws"
    with connect(url, additional_headers=actor.headers) as ws:
        message = {"type": "chat.create", "request_id": "r1", "model": model}
        ws.send(json.dumps({**message, "messages": [{"role": "user", "content": prompt}]}))
        while True:
            reply = json.loads(ws.recv(timeout=10))
            if reply["type"] == "error":
                return Answer(reply["status"], {}, reply)
            if reply["type"] == "stream.done":
                return Answer(200, {}, reply)


def request(transport: str, base: str, actor: Actor, model: str, prompt: str = "hi") -> Answer:
    """One request of ``transport`` (an endpoint and protocol)."""
    messages = [{"role": "user", "content": prompt}]
    chat = {"model": model, "messages": messages}
    if transport == "chat":
        return _http(base, "POST", "/v1/chat/completions", actor, json=chat)
    if transport == "chat_sse":
        return _http(base, "POST", "/v1/chat/completions", actor, json={**chat, "stream": True})
    if transport == "streams":
        return _http(base, "POST", "/v1/streams", actor, json=chat)
    if transport == "chat_get":
        params = {"model": model, "prompt": prompt}
        return _http(base, "GET", "/v1/chat/stream", actor, params=params)
    if transport == "responses":
        body = {"model": model, "input": prompt, "stream": True}
        return _http(base, "POST", "/v1/responses", actor, json=body)
    if transport == "messages":
        body = {"model": model, "max_tokens": 16, "messages": messages}
        return _http(base, "POST", "/v1/messages", actor, json=body)
    if transport == "embeddings":
        return _http(base, "POST", "/v1/embeddings", actor, json={"model": model, "input": prompt})
    assert transport == "ws"
    return _ws(base, actor, model, prompt)


TRANSPORTS = [
    "chat",
    "chat_sse",
    "streams",
    "chat_get",
    "responses",
    "messages",
    "embeddings",
    "ws",
]
# Each limit set so that the request on the transport is refused: (limits, code).
LIMITS = {
    "requests_per_minute": ({"requests_per_minute": 1}, "rate_limit_exceeded"),
    "tokens_per_minute": ({"tokens_per_minute": 60}, "rate_limit_exceeded"),
    "concurrent_streams": ({"concurrent_streams": 1}, "rate_limit_exceeded"),
    "monthly_tokens": ({"monthly_tokens": 60}, "insufficient_quota"),
}


def _hold_a_slot(base: str, actor: Actor, model: str) -> threading.Event:
    """A slow stream of ``actor``'s app, running until the returned event is set."""
    started, stop = threading.Event(), threading.Event()

    def run() -> None:
        body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "x"}]}
        with httpx.stream(
            "POST", f"{base}/v1/chat/completions", headers=actor.headers, json=body, timeout=20
        ) as response:
            for _ in response.iter_lines():
                started.set()
                if stop.is_set():
                    break
        started.set()

    threading.Thread(target=run, daemon=True).start()
    assert started.wait(10)
    return stop


@pytest.mark.parametrize("name", list(LIMITS))
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_each_limit_refuses_on_each_transport(gateway, make_actor, route, transport, name):
    limits, code = LIMITS[name]
    actor = limit(make_actor("alice"), **limits)
    model = route(delay=0.05, tokens=100) if name == "concurrent_streams" else route()
    stop = None
    if name == "requests_per_minute":
        assert request("chat", gateway.url, actor, model).status == 200
    elif name == "concurrent_streams":
        stop = _hold_a_slot(gateway.url, actor, model)
    try:
        answer = request(transport, gateway.url, actor, model, LONG_PROMPT)
    finally:
        if stop is not None:
            stop.set()

    assert answer.status == 429, answer.body
    if transport == "messages":  # Anthropic's shape, by the endpoint's error renderer
        assert answer.body["type"] == "error"
        assert answer.body["error"]["type"] == "rate_limit_error"
    elif transport == "ws":
        assert answer.body["error"]["code"] == code and answer.body["retry_after"] > 0
    else:
        assert answer.code == code
        if code == "insufficient_quota":
            assert answer.body["error"]["type"] == "insufficient_quota"
    if transport != "ws":
        assert int(answer.headers["retry-after"]) >= 1
        assert int(answer.headers["retry-after-ms"]) > 0


@pytest.mark.parametrize("transport", ["chat", "chat_sse", "streams", "chat_get", "embeddings"])
def test_every_answer_carries_the_rate_limit_headers(gateway, make_actor, route, transport):
    actor = limit(make_actor("alice"), requests_per_minute=10, tokens_per_minute=100_000)
    model = route()

    first = request(transport, gateway.url, actor, model)
    second = request(transport, gateway.url, actor, model)

    assert first.status in (200, 201), first.body
    assert set(first.headers) >= RATE_HEADERS
    assert first.headers["x-ratelimit-limit-requests"] == "10"
    assert first.headers["x-ratelimit-remaining-requests"] == "9"
    assert second.headers["x-ratelimit-remaining-requests"] == "8"
    assert int(second.headers["x-ratelimit-remaining-tokens"]) < 100_000
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")


def test_a_successful_stream_has_the_headers_and_a_refusal_is_counted(gateway, make_actor, route):
    actor = limit(make_actor("alice"), requests_per_minute=1, tokens_per_minute=5000)
    model = route()
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        headers=actor.headers,
        json={"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
        assert response.headers["x-ratelimit-limit-tokens"] == "5000"
        assert "data: [DONE]" in response.read().decode()

    refused = request("chat", gateway.url, actor, model)

    assert refused.status == 429 and refused.code == "rate_limit_exceeded"
    assert refused.body["error"]["type"] == "requests"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    samples = scrape(gateway).samples
    assert any(
        s.name == "sluice_limit_rejections_total"
        and s.labels == {"app": actor.name, "limit": "requests_per_minute"}
        and s.value == 1
        for s in samples
    )


def test_a_budget_reached_refuses_the_next_request_with_insufficient_quota(
    gateway, make_actor, route
):
    actor = limit(make_actor("alice"), monthly_tokens=400)
    model = route(tokens=20)
    body = {"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}

    answers = []
    for _ in range(40):
        answer = _http(gateway.url, "POST", "/v1/chat/completions", actor, json=body)
        answers.append(answer)
        if answer.status != 200:
            break

    assert answers[-1].status == 429, "the budget was never reached"
    assert answers[-1].code == "insufficient_quota"
    assert answers[-1].body["error"]["type"] == "insufficient_quota"
    assert "monthly budget of 400 tokens" in answers[-1].body["error"]["message"]
    assert len(answers) > 2  # settled with the real use, not the estimate


def test_max_tokens_ceiling_clamps_or_refuses(gateway, make_actor, route, upstream):
    clamped = limit(make_actor("alice"), max_tokens=32)
    refused = limit(make_actor("bob"), max_tokens=32, max_tokens_mode="refuse")
    model = route()
    body = {"model": model, "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]}

    ok = _http(gateway.url, "POST", "/v1/chat/completions", clamped, json=body)
    bare = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    _http(gateway.url, "POST", "/v1/chat/completions", clamped, json=bare)
    no = _http(gateway.url, "POST", "/v1/chat/completions", refused, json=body)
    messages = {**body, "max_tokens": 100}
    anthropic_no = _http(gateway.url, "POST", "/v1/messages", refused, json=messages)

    assert ok.status == 200
    sent = upstream.requests_for(upstream_model_of(model))
    assert [r.body["max_tokens"] for r in sent] == [32, 32]
    assert no.status == 400 and no.code == "max_tokens_exceeded"
    assert no.body["error"]["param"] == "max_tokens"
    assert anthropic_no.status == 400 and anthropic_no.body["type"] == "error"


def upstream_model_of(public: str) -> str:
    from streaming.models import RouteTarget

    return RouteTarget.objects.get(route__model=public).upstream_model


def test_cancel_and_client_cut_release_the_slot(gateway, make_actor, route):
    actor = limit(make_actor("alice"), concurrent_streams=1)
    slow, fast = route(delay=0.05, tokens=400), route()  # 20 s unless stopped
    created = request("streams", gateway.url, actor, slow)  # runs with no reader
    assert created.status == 201
    assert request("chat", gateway.url, actor, fast).status == 429

    url = f"{gateway.url}/v1/streams/{created.body['id']}"
    assert httpx.delete(url, headers=actor.headers).status_code == 200
    assert _admitted_within(5, lambda: request("chat", gateway.url, actor, fast))

    # A stream whose client hung up goes on without a reader until it is
    # abandoned (SLUICE_STREAM_ABANDON_SECONDS, 2 s here): then its slot is free.
    stop = _hold_a_slot(gateway.url, actor, slow)
    stop.set()
    assert request("chat", gateway.url, actor, fast).status == 429
    assert _admitted_within(8, lambda: request("chat", gateway.url, actor, fast))


def _admitted_within(seconds: float, attempt: Callable[[], Answer]) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if attempt().status == 200:
            return True
        time.sleep(0.2)
    return False


def test_the_openai_sdk_retries_after_retry_after(gateway, make_actor, route):
    actor = limit(make_actor("alice"), concurrent_streams=1)
    model = route(delay=0.04, tokens=20)  # about 0.8 s
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=actor.token, max_retries=2)
    stop = _hold_a_slot(gateway.url, actor, model)
    started = time.monotonic()
    try:
        answer = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
    finally:
        stop.set()
        client.close()

    assert answer.choices[0].message.content
    assert time.monotonic() - started >= 0.9  # waited the Retry-After at least once
    samples = scrape(gateway).samples
    assert any(
        s.name == "sluice_limit_rejections_total"
        and s.labels == {"app": actor.name, "limit": "concurrent_streams"}
        and s.value >= 1
        for s in samples
    )

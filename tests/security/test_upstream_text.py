"""Upstream text is Sluice's input too (issue 18, holes 5 and 9).

An upstream that echoes the request headers in an error (status or
mid-stream) must not hand the provider's key to the client, the audit, the
breaker or the log; a chunk valid as JSON but of the wrong shape is the
upstream's protocol error, retried and fallen back on, never a 500.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import unique, wait_for_audit
from tests.fakes.wire import ANTHROPIC_SHAPES, OPENAI_SHAPES
from tests.routing.conftest import HELLO, ws_chat

pytestmark = [pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]

KEY = "sk-canary-" + "K3y" * 10  # shaped like a key
PLAIN_KEY = "plainCanary" + "Q" * 20  # shaped like nothing at all
FAST = {"first_token_timeout": 5, "stall_timeout": 5, "backoff_seconds": 0.01}
ECHOES = ["echo_400", "echo_422", "echo_429", "echo_500", "echo_event"]


def chat(gateway, actor, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": HELLO, "stream": True, **extra}
    return httpx.post(
        f"{gateway.url}/v1/chat/completions", headers=actor.headers, json=body, timeout=30
    )


def assert_clean(where: str, text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"{secret[:12]}... leaked into {where}: {text[:500]}"


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("key", [KEY, PLAIN_KEY], ids=["shaped", "plain"])
@pytest.mark.parametrize("fault", ECHOES)
def test_an_upstream_echoing_the_request_headers_never_returns_the_key(
    gateway, alice, upstream, make_route, kind, key, fault
):
    upstream_model = f"fake:fault={fault},fault_after=1"
    model = make_route((kind, upstream.base_url, upstream_model), api_key=key, **FAST)

    # The careless upstream does echo the key (so the test tests something).
    path = "/chat/completions" if kind == "openai" else "/messages"
    direct = httpx.post(
        upstream.base_url + path,
        headers={"authorization": f"Bearer {key}", "x-api-key": key},
        json={"model": upstream_model, "messages": HELLO, "stream": True},
    )
    assert direct.text.count(key) >= 2, direct.text

    response = chat(gateway, alice, model)
    assert_clean("the HTTP response", response.text, key)
    messages = ws_chat(gateway, alice, model)
    assert_clean("the WebSocket messages", str(messages), key)
    for stream_id in (response.headers["x-sluice-stream-id"], messages[0]["stream_id"]):
        record = wait_for_audit(stream_id)
        assert record.outcome == "upstream_error"
        assert_clean("the audit record", record.error_message, key)
        for attempt in record.attempts.all():
            assert_clean("the audit attempt", attempt.error_message, key)
    assert_clean("the gateway log", gateway.log_text(), key)


@pytest.mark.parametrize(
    ("kind", "shape"),
    [("openai", s) for s in OPENAI_SHAPES] + [("anthropic", s) for s in ANTHROPIC_SHAPES],
)
def test_a_malformed_chunk_is_a_protocol_error_that_falls_back(
    gateway, alice, upstream, make_route, kind, shape
):
    backup = unique("backup")
    upstream.script(backup, tokens=["Hello", " from", " the", " backup."])
    broken = f"fake:fault=shape,shape={shape},fault_after=0"
    model = make_route((kind, upstream.base_url, broken), ("openai", upstream.base_url, backup))

    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers=alice.headers,
        json={"model": model, "messages": HELLO},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Hello from the backup."
    record = wait_for_audit(response.headers["x-sluice-stream-id"])
    assert [(a.outcome, a.error_class) for a in record.attempts.all()] == [
        ("failed", "protocol_error"),
        ("ok", ""),
    ]


@pytest.mark.parametrize("shape", ["choices_not_array", "content_not_string", "usage_not_object"])
def test_a_malformed_chunk_mid_stream_with_no_fallback_is_a_protocol_error(
    gateway, alice, upstream, make_route, shape
):
    model = make_route(
        ("openai", upstream.base_url, f"fake:fault=shape,shape={shape},fault_after=2")
    )
    messages = ws_chat(gateway, alice, model)
    errors = [m for m in messages if m["type"] == "error"]
    assert errors and errors[0]["error"]["code"] == "protocol_error", messages
    assert messages[-1]["type"] == "stream.done"

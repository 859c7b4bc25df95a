"""Fuzzing the public API of a served gateway with hypothesis (issue 18).

Generated requests mix valid chat requests with hostile values (NUL and other
control characters, deep nesting, wrong types, long strings, odd numbers,
unknown fields), sent to every transport. Whatever comes in: no 5xx, no
hang (each request has a client timeout that fails the test), every
accepted request leaves exactly one audit record, and a WebSocket still
answers a ping after each message.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from tests.conftest import wait_for_audit
from tests.security.payloads import deep, encode

pytestmark = [pytest.mark.timeout(300), pytest.mark.django_db(transaction=True)]

FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
TIMEOUT = httpx.Timeout(20.0)

hostile_text = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=40),
    st.text(st.sampled_from("\x00\x01\x1b\x7f\u2028\ufeff\U0001f600a "), max_size=20),
    st.integers(1, 20_000).map(lambda n: "x" * n),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    hostile_text,
)
values = st.one_of(
    st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4)
        ),
        max_leaves=12,
    ),
    st.integers(20, 1100).map(deep),
)
PARAMS = [
    "temperature", "top_p", "max_tokens", "stop", "tools", "tool_choice", "user", "metadata",
    "seed", "response_format", "logit_bias", "n", "stream_options", "parallel_tool_calls",
]  # fmt: skip
messages = st.one_of(
    st.just([{"role": "user", "content": "hello"}]),
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "system", "assistant", "tool", "wizard"])},
            optional={"content": st.one_of(hostile_text, values), "tool_calls": values},
        ),
        min_size=1,
        max_size=4,
    ),
    values,
)


def bodies(model: str) -> st.SearchStrategy[dict[str, Any]]:
    good_model = st.just(model)
    return st.fixed_dictionaries(
        {
            "model": st.one_of(good_model, good_model, good_model, hostile_text, values),
            "messages": st.one_of(st.just([{"role": "user", "content": "hi"}]), messages),
        },
        optional={
            "stream": st.one_of(st.booleans(), values),
            "extra": st.dictionaries(st.sampled_from(PARAMS) | hostile_text, values, max_size=3),
        },
    ).map(lambda b: {**{k: v for k, v in b.items() if k != "extra"}, **b.get("extra", {})})


@pytest.fixture
def fuzz_model(make_route: Callable[..., str]) -> str:
    from streaming.models import RouteTarget

    model = make_route(("demo", "", "demo"), prefix="fuzz")
    RouteTarget.objects.filter(route__model=model).update(params={"tokens": 3})
    return model


def check_http(response: httpx.Response, accepted: list[str]) -> None:
    assert response.status_code < 500, response.text[:1000]
    assert "internal_error" not in response.text, response.text[:1000]
    if response.status_code < 300:
        accepted.append(response.headers["x-sluice-stream-id"])


def assert_audited(stream_ids: list[str]) -> None:
    from audit.models import AuditRecord

    assert stream_ids, "no request was accepted: the fuzzer tested nothing"
    for stream_id in stream_ids:
        wait_for_audit(stream_id)
    counts = AuditRecord.objects.filter(request_id__in=stream_ids).count()
    assert counts == len(set(stream_ids)) == len(stream_ids)


def test_fuzz_post_chat_completions(gateway, alice, fuzz_model):
    accepted: list[str] = []
    with httpx.Client(base_url=gateway.url, headers=alice.headers, timeout=TIMEOUT) as client:

        @FUZZ
        @given(body=bodies(fuzz_model), path=st.sampled_from(["completions", "streams"]))
        def run(body: dict[str, Any], path: str) -> None:
            url = "/v1/chat/completions" if path == "completions" else "/v1/streams"
            headers = {"content-type": "application/json"}
            check_http(client.post(url, content=encode(body), headers=headers), accepted)

        run()
    assert_audited(accepted)


def test_fuzz_get_chat_stream(gateway, alice, fuzz_model):
    accepted: list[str] = []
    with httpx.Client(base_url=gateway.url, headers=alice.headers, timeout=TIMEOUT) as client:

        @FUZZ
        @given(model=st.one_of(st.just(fuzz_model), hostile_text), prompt=hostile_text)
        def run(model: str, prompt: str) -> None:
            response = client.get("/v1/chat/stream", params={"model": model, "prompt": prompt})
            check_http(response, accepted)

        run()
    assert_audited(accepted)


def test_fuzz_websocket_chat_create(gateway, alice, fuzz_model):
    accepted: list[str] = []
    url = gateway.url.replace("http", "ws", 1) + "/v1/ws"
    with connect(url, additional_headers=alice.headers, max_size=None) as socket:

        @FUZZ
        @given(body=bodies(fuzz_model))
        def run(body: dict[str, Any]) -> None:
            body = {**body, "type": "chat.create", "request_id": "fuzz"}
            socket.send(encode(body))
            socket.send('{"type": "ping"}')
            answered = False
            while True:  # a dead socket raises here; a hung one times out
                message = json.loads(socket.recv(timeout=20))
                if message["type"] == "pong":
                    break
                assert message.get("status", 0) < 500, message
                assert (message.get("error") or {}).get("code") != "internal_error", message
                # A message that cannot be parsed (orjson: over 1,024 levels)
                # is answered without its request_id.
                unparsed = message["type"] == "error" and message["request_id"] is None
                if message.get("request_id") == "fuzz" or unparsed:
                    answered = True
                    if message["type"] == "stream.created":
                        accepted.append(message["stream_id"])
            assert answered, body

        run()
    assert_audited(accepted)

"""Anthropic's Messages API through a served gateway, with the official SDK unchanged.

The SDK points its ``base_url`` at Sluice and sends the Sluice token as its
API key (``x-api-key``); every provider answers, errors come in Anthropic's
shape, and a dropped stream resumes by its id.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import scripted_route, unique, wait_for_audit

pytestmark = [pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]

TOKENS = ["Hello", ",", " world", "!"]
HELLO = [{"role": "user", "content": "Say hello"}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def sse_events(response: httpx.Response) -> list[tuple[int | None, str, dict[str, Any]]]:
    events: list[tuple[int | None, str, dict[str, Any]]] = []
    event_id, name, data = None, "", []
    for line in response.iter_lines():
        if line.startswith("id:"):
            event_id = int(line[3:].strip())
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            events.append((event_id, name, json.loads("\n".join(data))))
            event_id, name, data = None, "", []
    return events


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_streaming_through_each_provider(gateway, alice, claude, make_route, upstream, kind):
    model, upstream_model = scripted_route(make_route, upstream, kind, tokens=TOKENS)

    with claude(alice).messages.stream(
        model=model, max_tokens=100, system="Be brief.", messages=HELLO
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()

    types = [e.type for e in events]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert "content_block_start" in types and "message_delta" in types
    assert final.content[0].type == "text" and final.content[0].text == "Hello, world!"
    assert final.stop_reason == "end_turn" and final.role == "assistant"
    assert final.id.startswith("msg_")
    assert final.usage.output_tokens > 0
    sent = upstream.requests_for(upstream_model)[0].body
    if kind == "openai":
        assert sent["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello"},
        ]
    else:
        assert sent["system"] == "Be brief."
    record = wait_for_audit(final.id)
    assert record.outcome == "completed" and record.response_text == "Hello, world!"


def test_non_streaming(gateway, alice, claude, make_route, upstream):
    model, _ = scripted_route(make_route, upstream, "openai", tokens=TOKENS)

    message = claude(alice).messages.create(model=model, max_tokens=50, messages=HELLO)

    assert message.type == "message" and message.content[0].text == "Hello, world!"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


def test_demo_provider_answers(gateway, alice, claude, demo_model):
    message = claude(alice).messages.create(model=demo_model, max_tokens=64, messages=HELLO)

    assert message.content and message.content[0].text


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_tool_use_and_tool_results(gateway, alice, claude, make_route, upstream, kind):
    model, upstream_model = scripted_route(
        make_route,
        upstream,
        kind,
        text="Checking.",
        tool_name="get_weather",
        tool_arguments=['{"city": ', '"Paris"}'],
    )
    client = claude(alice)

    with client.messages.stream(
        model=model,
        max_tokens=100,
        tools=[WEATHER],
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ) as stream:
        first = stream.get_final_message()
    uses = [block for block in first.content if block.type == "tool_use"]
    assert first.stop_reason == "tool_use"
    assert len(uses) == 1 and uses[0].name == "get_weather" and uses[0].input == {"city": "Paris"}

    upstream.script(upstream_model, tokens=["Sunny."])
    second = client.messages.create(
        model=model,
        max_tokens=100,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "22C"}],
            },
        ],
    )

    assert second.content[0].text == "Sunny."
    sent = upstream.requests_for(upstream_model)[-1].body
    if kind == "openai":
        assert sent["messages"][1]["tool_calls"][0]["id"] == uses[0].id
        assert sent["messages"][2] == {"role": "tool", "tool_call_id": uses[0].id, "content": "22C"}
    else:
        blocks = sent["messages"][2]["content"]
        assert blocks[0]["type"] == "tool_result" and blocks[0]["tool_use_id"] == uses[0].id


def test_midstream_failure_continues_invisibly(gateway, alice, claude, make_route, upstream):
    first = unique("first")
    upstream.script(first, tokens=["The", " quick", " brown", " fox"], fault="die", fault_after=3)
    backup = unique("backup")
    upstream.script(backup, tokens=[" brown", " fox", " jumps", " over."])
    model = make_route(
        ("anthropic", upstream.base_url, first),
        ("openai", upstream.base_url, backup),
        allow_midstream_fallback=True,
        first_token_timeout=0.5,
        stall_timeout=0.5,
        backoff_seconds=0.01,
    )

    with claude(alice).messages.stream(model=model, max_tokens=100, messages=HELLO) as stream:
        events = list(stream)
        final = stream.get_final_message()

    assert [e.type for e in events].count("message_start") == 1
    assert final.content[0].text == "The quick brown fox jumps over."
    assert len(final.content) == 1
    record = wait_for_audit(final.id)
    assert record.continued is True


def test_errors_in_anthropic_shape(gateway, alice, claude, make_route, upstream):
    client = claude(alice)
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model=unique("nope"), max_tokens=10, messages=HELLO)
    assert missing.value.body["type"] == "error"
    assert missing.value.body["error"]["type"] == "not_found_error"

    # The SDK will not send a request without max_tokens: send it by hand.
    bad = httpx.post(
        f"{gateway.url}/v1/messages",
        headers={"x-api-key": alice.token, "anthropic-version": "2023-06-01"},
        json={"model": "m", "messages": HELLO},
        timeout=20,
    )
    assert bad.status_code == 400
    assert bad.json()["type"] == "error"
    assert bad.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in bad.json()["error"]["message"]

    wrong = anthropic.Anthropic(base_url=gateway.url, api_key="not-a-token", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as denied:
        wrong.messages.create(model="m", max_tokens=10, messages=HELLO)
    assert denied.value.body["error"]["type"] == "authentication_error"

    model, _ = scripted_route(make_route, upstream, "openai", fault="http_500")
    with pytest.raises(anthropic.APIStatusError) as failed:
        client.messages.create(model=model, max_tokens=10, messages=HELLO, stream=True)
    assert failed.value.status_code >= 500
    assert failed.value.body["type"] == "error"


def test_bearer_token_works_too(gateway, alice, make_route, upstream):
    model, _ = scripted_route(make_route, upstream, "openai", tokens=TOKENS)
    response = httpx.post(
        f"{gateway.url}/v1/messages",
        headers=alice.headers,
        json={"model": model, "max_tokens": 10, "messages": HELLO},
        timeout=20,
    )
    assert response.status_code == 200
    assert response.json()["content"][0]["text"] == "Hello, world!"


def test_a_dropped_stream_resumes_by_id(gateway, alice, make_route, upstream):
    model, _ = scripted_route(make_route, upstream, "openai", tokens=[f"x{i} " for i in range(12)])
    body = {"model": model, "max_tokens": 100, "messages": HELLO, "stream": True}
    headers = {**alice.headers}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/messages", json=body, headers=headers, timeout=20
    ) as response:
        full = sse_events(response)
        stream_id = response.headers["x-sluice-stream-id"]
    ids = [event_id for event_id, _, _ in full if event_id is not None]
    assert ids == list(range(len(ids)))

    with httpx.stream(
        "GET",
        f"{gateway.url}/v1/streams/{stream_id}",
        headers={**headers, "Last-Event-ID": "5"},
        timeout=20,
    ) as response:
        rest = sse_events(response)

    assert rest == [event for event in full if event[0] is not None and event[0] > 5]
    assert full[0][2]["message"]["id"] == stream_id


def test_count_tokens_says_it_is_not_served_for_other_providers(gateway, alice, claude, demo_model):
    with pytest.raises(anthropic.NotFoundError) as error:
        claude(alice).messages.count_tokens(model=demo_model, messages=HELLO)
    assert error.value.body["error"]["type"] == "not_found_error"
    assert "not served" in error.value.body["error"]["message"]


def test_count_tokens_is_anthropics_own_count(gateway, alice, claude, make_route, upstream):
    from tests.fakes import wire

    model, upstream_model = scripted_route(make_route, upstream, "anthropic", tokens=TOKENS)

    counted = claude(alice).messages.count_tokens(
        model=model, system="Be brief.", messages=HELLO, tools=[WEATHER]
    )

    sent = upstream.requests_for(upstream_model)[-1]
    assert sent.path == "/v1/messages/count_tokens"
    assert sent.headers["x-api-key"] == "sk-up"  # the provider's key, not the app's token
    assert set(sent.body) <= {"model", "messages", "system", "tools", "tool_choice"}
    assert sent.body["model"] == upstream_model and sent.body["system"] == "Be brief."
    assert counted.input_tokens == wire.count_input_tokens(sent.body) > 0

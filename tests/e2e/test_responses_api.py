"""OpenAI's Responses API through a served gateway, with the official SDK unchanged.

Every provider answers it (OpenAI-compatible chat upstreams, Anthropic, the
demo), and every response can be resumed by ``starting_after``, background
or not, for the stream's TTL.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import scripted_route, unique, wait_for_audit

pytestmark = [pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]

TOKENS = ["Hello", ",", " world", "!"]
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def sse_events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    events, name, data = [], None, []
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            events.append((name, json.loads("\n".join(data))))
            name, data = None, []
    return events


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_streaming_events_through_each_provider(gateway, alice, sdk, make_route, upstream, kind):
    model, upstream_model = scripted_route(make_route, upstream, kind, tokens=TOKENS)

    events = list(
        sdk(alice).responses.create(
            model=model, input="Say hello", instructions="Be brief.", stream=True
        )
    )

    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "Hello, world!"
    final = events[-1].response
    assert final.status == "completed" and final.output_text == "Hello, world!"
    assert final.id.startswith("resp_") and final.id == events[0].response.id
    assert final.instructions == "Be brief."
    assert final.usage is not None and final.usage.output_tokens > 0
    # The upstream got a chat conversation (or Anthropic's system + messages).
    sent = upstream.requests_for(upstream_model)[0].body
    if kind == "openai":
        assert sent["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello"},
        ]
    else:
        assert sent["system"] == "Be brief."
        assert sent["messages"][0]["role"] == "user"
    record = wait_for_audit(final.id)
    assert record.outcome == "completed" and record.response_text == "Hello, world!"


def test_the_sdk_stream_helper_and_non_streaming(gateway, alice, sdk, make_route, upstream):
    model, _ = scripted_route(make_route, upstream, "openai", tokens=TOKENS)
    client = sdk(alice)

    with client.responses.stream(model=model, input="Say hello") as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    plain = client.responses.create(model=model, input=[{"role": "user", "content": "Again"}])

    assert "".join(texts) == final.output_text == "Hello, world!"
    assert plain.object == "response" and plain.status == "completed"
    assert plain.output_text == "Hello, world!"
    assert plain.usage is not None and plain.usage.total_tokens > 0
    assert plain.output[0].type == "message" and plain.output[0].role == "assistant"


def test_demo_provider_answers(gateway, alice, sdk, demo_model):
    response = sdk(alice).responses.create(model=demo_model, input="Hi there", max_output_tokens=64)

    assert response.status in {"completed", "incomplete"}
    assert response.output_text


def test_function_tools_and_their_outputs(gateway, alice, sdk, make_route, upstream):
    model, upstream_model = scripted_route(
        make_route,
        upstream,
        "openai",
        text="Checking.",
        tool_name="get_weather",
        tool_arguments=['{"city": ', '"Paris"}'],
    )
    client = sdk(alice)

    first = client.responses.create(model=model, input="Weather in Paris?", tools=[WEATHER])
    calls = [item for item in first.output if item.type == "function_call"]
    assert first.output_text == "Checking."
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    upstream_tools = upstream.requests_for(upstream_model)[0].body["tools"]
    assert upstream_tools[0]["function"]["name"] == "get_weather"

    upstream.script(upstream_model, tokens=["Sunny."])
    second = client.responses.create(
        model=model,
        tools=[WEATHER],
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": calls[0].call_id,
                "name": "get_weather",
                "arguments": calls[0].arguments,
            },
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "22C, sun"},
        ],
    )

    assert second.output_text == "Sunny."
    sent = upstream.requests_for(upstream_model)[-1].body["messages"]
    assert sent[1]["role"] == "assistant"
    assert sent[1]["tool_calls"][0]["id"] == calls[0].call_id
    assert sent[2] == {"role": "tool", "tool_call_id": calls[0].call_id, "content": "22C, sun"}


def test_background_retrieve_resume_from_any_point(gateway, alice, sdk, make_route, upstream):
    tokens = [f"t{i} " for i in range(30)]
    model, _ = scripted_route(make_route, upstream, "openai", tokens=tokens, delay=0.02)
    client = sdk(alice)

    created = client.responses.create(model=model, input="Count", background=True)
    assert created.status in {"queued", "in_progress"} and created.background is True
    # Nobody reads it: it runs to its end anyway.
    deadline = time.monotonic() + 20
    current = client.responses.retrieve(created.id)
    while current.status == "in_progress" and time.monotonic() < deadline:
        time.sleep(0.1)
        current = client.responses.retrieve(created.id)

    assert current.status == "completed" and current.output_text == "".join(tokens)
    full = list(client.responses.retrieve(created.id, stream=True))
    assert [e.sequence_number for e in full] == list(range(len(full)))
    for after in (0, 5, len(full) - 2):
        rest = list(client.responses.retrieve(created.id, stream=True, starting_after=after))
        assert [e.model_dump() for e in rest] == [e.model_dump() for e in full[after + 1 :]]


def test_background_stream_survives_the_client_and_resumes(
    gateway, alice, sdk, make_route, upstream
):
    tokens = [f"w{i} " for i in range(40)]
    model, _ = scripted_route(make_route, upstream, "anthropic", tokens=tokens, delay=0.02)
    client = sdk(alice)

    seen: list[Any] = []
    with client.responses.create(model=model, input="Go", background=True, stream=True) as stream:
        for event in stream:
            seen.append(event)
            if event.type == "response.output_text.delta" and len(seen) > 8:
                break  # the client drops; a background response goes on
    last = seen[-1].sequence_number
    rest = list(client.responses.retrieve(seen[0].response.id, stream=True, starting_after=last))

    events = seen + rest
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events].count("response.created") == 1
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "".join(tokens)
    assert events[-1].type == "response.completed"


def test_cancel_a_background_response(gateway, alice, sdk, make_route, upstream):
    model, _ = scripted_route(make_route, upstream, "openai", tokens=200, delay=0.05)
    client = sdk(alice)

    created = client.responses.create(model=model, input="Go on", background=True)
    assert upstream.wait_open_requests(1, timeout=10)
    cancelled = client.responses.cancel(created.id)

    assert cancelled.id == created.id and cancelled.status == "cancelled"
    assert client.responses.retrieve(created.id).status == "cancelled"
    assert upstream.wait_open_requests(0)
    events = list(client.responses.retrieve(created.id, stream=True))
    assert events[-1].type == "response.failed" and events[-1].response.status == "cancelled"
    record = wait_for_audit(created.id)
    assert record.outcome == "cancelled"


def test_midstream_failure_continues_invisibly(gateway, alice, sdk, make_route, upstream):
    first = unique("first")
    upstream.script(first, tokens=["The", " quick", " brown", " fox"], fault="die", fault_after=3)
    backup = unique("backup")
    upstream.script(backup, tokens=[" brown", " fox", " jumps", " over."])
    model = make_route(
        ("openai", upstream.base_url, first),
        ("anthropic", upstream.base_url, backup),
        allow_midstream_fallback=True,
        first_token_timeout=0.5,
        stall_timeout=0.5,
        backoff_seconds=0.01,
    )

    events = list(sdk(alice).responses.create(model=model, input="Say it", stream=True))

    assert [e.type for e in events].count("response.created") == 1
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "The quick brown fox jumps over."
    record = wait_for_audit(events[-1].response.id)
    assert record.continued is True and record.outcome == "completed"


def test_errors_are_openai_errors(gateway, alice, sdk, make_route, upstream):
    client = sdk(alice)
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model=unique("nope"), input="x")
    assert missing.value.body["code"] == "model_not_found"

    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model="m", input=[{"type": "item_reference", "id": "x"}])
    assert bad.value.body["param"].startswith("input")

    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_" + "0" * 24)

    model, _ = scripted_route(make_route, upstream, "openai", fault="http_500")
    with pytest.raises(openai.APIStatusError) as failed:
        client.responses.create(model=model, input="x", stream=True)
    assert failed.value.status_code >= 500


def test_another_app_cannot_read_or_cancel_a_response(
    gateway, alice, bob, sdk, make_route, upstream
):
    model, _ = scripted_route(make_route, upstream, "openai", tokens=TOKENS)
    response = sdk(alice).responses.create(model=model, input="x", background=True)

    with pytest.raises(openai.PermissionDeniedError):
        sdk(bob).responses.retrieve(response.id)
    with pytest.raises(openai.PermissionDeniedError):
        sdk(bob).responses.cancel(response.id)


def test_a_chat_stream_is_not_a_response(gateway, alice, sdk, make_route, upstream):
    model, _ = scripted_route(make_route, upstream, "openai", tokens=TOKENS)
    chat = sdk(alice).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "x"}]
    )
    with pytest.raises(openai.NotFoundError):
        sdk(alice).responses.retrieve(chat.id)


def test_resume_through_the_streams_endpoint_with_last_event_id(
    gateway, alice, make_route, upstream
):
    model, _ = scripted_route(make_route, upstream, "openai", tokens=[f"x{i}" for i in range(12)])
    body = {"model": model, "input": "x", "stream": True}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/responses", json=body, headers=alice.headers, timeout=20
    ) as response:
        full = sse_events(response)
        stream_id = response.headers["x-sluice-stream-id"]
    with httpx.stream(
        "GET",
        f"{gateway.url}/v1/streams/{stream_id}",
        headers={**alice.headers, "Last-Event-ID": "6"},
        timeout=20,
    ) as response:
        rest = sse_events(response)

    assert rest == full[7:]
    assert all(name == data["type"] for name, data in full)

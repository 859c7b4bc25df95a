"""The official OpenAI SDK, pointed at a real gateway process, just works."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.conftest import unique, wait_for_audit
from tests.fakes.upstream import FakeUpstream

pytestmark = [pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]


def openai_route(
    make_route: Callable[..., str], upstream: FakeUpstream, upstream_model: str
) -> str:
    return make_route(("openai", upstream.base_url, upstream_model), api_key="sk-upstream-secret")


def test_stream_through_openai_upstream(gateway, alice, sdk, make_route, upstream):
    upstream_model = unique("up")
    upstream.script(upstream_model, tokens=["Hello", ",", " world", "!"])
    model = openai_route(make_route, upstream, upstream_model)

    chunks = list(
        sdk(alice).chat.completions.create(
            model=model, stream=True, messages=[{"role": "user", "content": "Say hello"}]
        )
    )

    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello, world!"
    assert {c.id for c in chunks} == {chunks[0].id}
    assert {c.created for c in chunks} == {chunks[0].created}
    assert all(c.model == upstream_model for c in chunks)  # the model that answered
    assert chunks[0].choices[0].delta.role == "assistant"
    content_chunks = [c for c in chunks if c.choices]
    assert content_chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in content_chunks[:-1])
    # The upstream got the upstream model name and the provider's key, not the app's token.
    sent = upstream.requests_for(upstream_model)[0]
    assert sent.headers["authorization"] == "Bearer sk-upstream-secret"
    assert sent.body["messages"] == [{"role": "user", "content": "Say hello"}]


def test_include_usage_adds_a_usage_chunk(gateway, alice, sdk, make_route, upstream):
    upstream_model = unique("up")
    upstream.script(upstream_model, tokens=["a", "b", "c"])
    model = openai_route(make_route, upstream, upstream_model)
    client = sdk(alice)

    with_usage = list(
        client.chat.completions.create(
            model=model,
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "x"}],
        )
    )
    without = list(
        client.chat.completions.create(
            model=model, stream=True, messages=[{"role": "user", "content": "x"}]
        )
    )

    assert with_usage[-1].choices == []
    assert with_usage[-1].usage is not None and with_usage[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in without)


def test_log_probabilities_reach_the_sdk_with_their_tokens(
    gateway, alice, sdk, make_route, upstream
):
    upstream_model = unique("up")
    upstream.script(upstream_model, tokens=["Hi", " there"])
    model = openai_route(make_route, upstream, upstream_model)

    chunks = list(
        sdk(alice).chat.completions.create(
            model=model, stream=True, logprobs=True, messages=[{"role": "user", "content": "x"}]
        )
    )

    tokens = [
        entry.token
        for chunk in chunks
        if chunk.choices and chunk.choices[0].logprobs
        for entry in chunk.choices[0].logprobs.content or ()
    ]
    assert tokens == ["Hi", " there"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi there"
    assert upstream.requests_for(upstream_model)[0].body["logprobs"] is True


def test_non_streaming_completion(gateway, alice, sdk, make_route, upstream):
    upstream_model = unique("up")
    upstream.script(upstream_model, tokens=["Four", "."])
    model = openai_route(make_route, upstream, upstream_model)

    completion = sdk(alice).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "2+2?"}]
    )

    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Four."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None


def test_tool_calls_from_anthropic_arrive_as_openai_fragments(
    gateway, alice, sdk, make_route, upstream
):
    upstream_model = unique("claude")
    upstream.script(
        upstream_model,
        text="Let me check.",
        tool_name="get_weather",
        tool_arguments=['{"city": ', '"Paris"}'],
    )
    model = make_route(("anthropic", upstream.base_url, upstream_model), api_key="sk-ant-secret")

    chunks = list(
        sdk(alice).chat.completions.create(
            model=model,
            stream=True,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[
                {
                    "type": "function",
                    "function": {"name": "get_weather", "parameters": {"type": "object"}},
                }
            ],
        )
    )

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert text == "Let me check."
    assert calls[0].function.name == "get_weather" and calls[0].id
    assert "".join(tc.function.arguments or "" for tc in calls) == '{"city": "Paris"}'
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert upstream.requests_for(upstream_model)[0].headers["x-api-key"] == "sk-ant-secret"


def test_models_lists_only_what_the_app_may_use(sdk, make_actor, demo_model, make_route):
    other = make_route(("demo", "", "demo"))
    charlie = make_actor("charlie", models=[demo_model])

    models = sdk(charlie).models.list()

    names = [m.id for m in models.data]
    assert demo_model in names and other not in names


def test_stream_headers_say_do_not_buffer(gateway, alice, sdk, demo_model):
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        headers=alice.headers,
        json={"model": demo_model, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers["x-sluice-stream-id"].startswith("chatcmpl-")
        lines = list(response.iter_lines())
    assert lines[0].startswith("retry: ")
    assert lines[-3:] == [
        "id: " + str(sum(line.startswith("data:") for line in lines)),
        "data: [DONE]",
        "",
    ]


def test_every_request_leaves_one_audit_record(gateway, alice, sdk, make_route, upstream):
    upstream_model = unique("up")
    upstream.script(upstream_model, tokens=["The", " answer"])
    model = openai_route(make_route, upstream, upstream_model)

    chunks = list(
        sdk(alice).chat.completions.create(
            model=model,
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "question?"}],
            temperature=0.5,
        )
    )

    record = wait_for_audit(chunks[0].id)
    assert record.outcome == "completed"
    assert record.app_id == alice.app_id
    assert record.protocol == "sse"
    assert record.public_model == model and record.upstream_model == upstream_model
    assert record.response_text == "The answer"
    assert record.request_messages == [{"role": "user", "content": "question?"}]
    assert record.request_params["temperature"] == 0.5
    assert record.finish_reason == "stop"
    assert record.usage["completion_tokens"] > 0
    assert record.ttft_ms is not None and record.duration_ms >= record.ttft_ms
    assert record.client_ip == "127.0.0.1"
    assert alice.token not in str(record.__dict__)

from __future__ import annotations

from typing import Any

import pytest

from streaming.providers import ChatRequest, UpstreamError, UpstreamTarget
from streaming.providers.anthropic import (
    AnthropicAdapter,
    AnthropicStreamDecoder,
    build_body,
    convert_messages,
)
from tests.fakes import FakeUpstream
from tests.providers.chunks import chat, collect, content_of, failure, finish_reasons, tool_calls_of

SECRET = "sk-ant-bob-secret-0123456789"
adapter = AnthropicAdapter()


def target(fake: FakeUpstream, model: str) -> UpstreamTarget:
    return UpstreamTarget(
        provider="anthropic-main",
        kind="anthropic",
        base_url=fake.base_url,
        model=model,
        api_key=SECRET,
    )


# --- Request translation -------------------------------------------------------------


def test_system_messages_are_lifted_and_same_roles_merged() -> None:
    system, messages = convert_messages(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Be kind."}]},
            {"role": "user", "content": "Hi"},
            {"role": "user", "content": [{"type": "text", "text": "Still there?"}]},
        ]
    )
    assert system == "Be brief.\n\nBe kind."
    assert messages == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "Still there?"}],
        }
    ]


def test_tool_calls_and_results_become_tool_use_and_tool_result_blocks() -> None:
    _, messages = convert_messages(
        [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "user", "content": "Thanks"},
        ]
    )
    assert messages[1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}
        ],
    }
    assert messages[2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
            {"type": "text", "text": "Thanks"},
        ],
    }


def test_params_are_mapped() -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    request = chat(
        "Hi",
        max_completion_tokens=100,
        temperature=0.5,
        top_p=0.9,
        stop="END",
        tools=[tool],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        frequency_penalty=1.0,  # no Anthropic equivalent: dropped
    )
    target = UpstreamTarget(provider="a", kind="anthropic", base_url="", model="claude-x")
    body = build_body(target, request)
    assert body == {
        "model": "claude-x",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "stream": True,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "tools": [
            {
                "name": "get_weather",
                "description": "Current weather",
                "input_schema": tool["function"]["parameters"],  # type: ignore[index]
            }
        ],
        "tool_choice": {"type": "tool", "name": "get_weather"},
    }


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ],
)
def test_tool_choice(choice: Any, parallel: Any, expected: dict[str, Any]) -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    request = ChatRequest(
        model="m",
        messages=[{"role": "user", "content": "x"}],
        params={"tools": tools, "tool_choice": choice, "parallel_tool_calls": parallel},
    )
    body = build_body(UpstreamTarget("a", "anthropic", "", "m"), request)
    assert body["tool_choice"] == expected
    assert body["max_tokens"] == 4096


# --- Stream translation --------------------------------------------------------------


def message_start(input_tokens: int = 10) -> dict[str, Any]:
    usage = {"input_tokens": input_tokens, "output_tokens": 1}
    return {"type": "message_start", "message": {"id": "msg_1", "usage": usage}}


def block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def block_delta(index: int, delta: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}


def message_delta(stop_reason: str, output_tokens: int = 5) -> dict[str, Any]:
    return {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": output_tokens},
    }


def translate(*events: dict[str, Any]) -> list[dict[str, Any]]:
    decoder = AnthropicStreamDecoder()
    return [chunk for event in events for chunk in decoder.feed(event)]


def test_text_stream_translation() -> None:
    chunks = translate(
        message_start(input_tokens=12),
        block_start(0, {"type": "text", "text": ""}),
        {"type": "ping"},
        block_delta(0, {"type": "text_delta", "text": "Hello"}),
        block_delta(0, {"type": "text_delta", "text": " there"}),
        {"type": "content_block_stop", "index": 0},
        message_delta("end_turn", output_tokens=2),
        {"type": "message_stop"},
    )
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert content_of(chunks) == "Hello there"
    assert finish_reasons(chunks) == ["stop"]
    assert chunks[-1] == {
        "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14},
    }


def test_tool_calls_are_indexed_among_tool_calls_only() -> None:
    chunks = translate(
        message_start(),
        block_start(0, {"type": "thinking", "thinking": ""}),
        block_start(1, {"type": "text", "text": ""}),
        block_delta(1, {"type": "text_delta", "text": "Checking."}),
        block_start(2, {"type": "tool_use", "id": "toolu_a", "name": "weather", "input": {}}),
        block_delta(2, {"type": "input_json_delta", "partial_json": ""}),
        block_delta(2, {"type": "input_json_delta", "partial_json": '{"city": '}),
        block_delta(2, {"type": "input_json_delta", "partial_json": '"Paris"}'}),
        block_start(3, {"type": "tool_use", "id": "toolu_b", "name": "time", "input": {}}),
        block_delta(3, {"type": "input_json_delta", "partial_json": "{}"}),
        message_delta("tool_use"),
        {"type": "message_stop"},
    )
    first_fragment = chunks[2]["choices"][0]["delta"]["tool_calls"][0]
    assert first_fragment == {
        "index": 0,
        "id": "toolu_a",
        "type": "function",
        "function": {"name": "weather", "arguments": ""},
    }
    assert tool_calls_of(chunks) == [
        {"id": "toolu_a", "type": "function", "name": "weather", "arguments": '{"city": "Paris"}'},
        {"id": "toolu_b", "type": "function", "name": "time", "arguments": "{}"},
    ]
    assert finish_reasons(chunks) == ["tool_calls"]


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_stop_reasons(stop_reason: str, finish_reason: str) -> None:
    assert finish_reasons(translate(message_start(), message_delta(stop_reason))) == [finish_reason]


def test_usage_counts_cached_input_as_prompt_tokens() -> None:
    """Cache writes count as input, cache reads as input and as cached tokens (as OpenAI's)."""
    start = message_start()
    start["message"]["usage"] |= {"cache_read_input_tokens": 100, "cache_creation_input_tokens": 5}
    chunks = translate(start, message_delta("end_turn", 3), {"type": "message_stop"})
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 115,
        "completion_tokens": 3,
        "total_tokens": 118,
        "prompt_tokens_details": {"cached_tokens": 100},
    }


@pytest.mark.parametrize(
    ("error_type", "error_class"),
    [
        ("overloaded_error", "server_error"),
        ("api_error", "server_error"),
        ("rate_limit_error", "rate_limited"),
        ("invalid_request_error", "provider_error"),
    ],
)
def test_error_event_raises(error_type: str, error_class: str) -> None:
    error = {"type": "error", "error": {"type": error_type, "message": "nope"}}
    with pytest.raises(UpstreamError) as info:
        translate(message_start(), error)
    assert info.value.error_class == error_class
    assert info.value.retryable


# --- Adapter against the fake ----------------------------------------------------------


async def test_streams_text_from_the_messages_api(fake, client) -> None:
    fake.script("claude-text", tokens=["Bonjour", " à", " tous"])
    chunks = await collect(adapter, client, target(fake, "claude-text"), chat("Hi"))
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert content_of(chunks) == "Bonjour à tous"
    assert finish_reasons(chunks) == ["stop"]
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    [sent] = fake.requests
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == SECRET
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert sent.body["stream"] is True and sent.body["model"] == "claude-text"


async def test_streams_a_tool_call(fake, client) -> None:
    fake.script(
        "claude-tool", text="Let me check.", tool_name="weather", tool_arguments=['{"c', '":1}']
    )
    chunks = await collect(adapter, client, target(fake, "claude-tool"), chat())
    assert content_of(chunks) == "Let me check."
    [call] = tool_calls_of(chunks)
    assert (call["name"], call["arguments"], call["id"]) == ("weather", '{"c":1}', "toolu_fake1")
    assert finish_reasons(chunks) == ["tool_calls"]


@pytest.mark.parametrize(
    ("fault", "error_class", "status"),
    [
        ("http_500", "server_error", 500),
        ("http_529", "server_error", 529),
        ("http_429", "rate_limited", 429),
        ("http_400", "client_error", 400),
        ("die", "protocol_error", None),
        ("truncate", "protocol_error", None),
        ("malformed", "protocol_error", None),
        ("error_event", "server_error", None),
        ("refuse", "connect_error", None),
    ],
)
async def test_faults_become_upstream_errors(fake, client, fault, error_class, status) -> None:
    fake.script("claude-fault", tokens=5, fault=fault, fault_after=2)
    error = await failure(adapter, client, target(fake, "claude-fault"), chat())
    assert (error.error_class, error.status) == (error_class, status)
    assert SECRET not in str(error)
    assert await fake.async_wait_open_requests(0)


async def test_client_error_keeps_the_anthropic_body(fake, client) -> None:
    fake.script("claude-bad", fault="http_400")
    error = await failure(adapter, client, target(fake, "claude-bad"), chat())
    assert error.body["error"]["type"] == "invalid_request_error"


async def test_mid_stream_invalid_request_error_is_a_provider_error(fake, client) -> None:
    fake.script("claude-err", tokens=3, fault="error_event", error_type="invalid_request_error")
    error = await failure(adapter, client, target(fake, "claude-err"), chat())
    assert error.error_class == "provider_error"


async def test_closing_the_generator_closes_the_upstream_request(fake, client) -> None:
    fake.script("claude-slow", tokens=100, delay=0.05)
    stream = adapter.stream(client, target(fake, "claude-slow"), chat())
    await anext(stream)
    await anext(stream)
    await stream.aclose()
    assert await fake.async_wait_open_requests(0)

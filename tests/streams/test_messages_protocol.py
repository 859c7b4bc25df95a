"""Anthropic's Messages API as an inbound protocol, without a server.

The request side: a ``POST /v1/messages`` body becomes the chat request the
engine runs, and a wrong body is a 400 naming the Anthropic field. The
response side: the neutral log rendered as Messages events, each checked
against the official SDK's types and fed through the SDK's own stream
accumulation; and the exactly-once rule that makes a resume safe (a replay
after event ``k`` is byte for byte the rest of the full run).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from typing import Any

import anthropic
import httpx2
import orjson
import pydantic
import pytest
from anthropic.types import ErrorResponse, Message, RawMessageStreamEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.core.events import (
    END,
    ERROR,
    FINISH,
    LOGPROBS,
    REASONING,
    REFUSAL,
    START,
    TEXT,
    TOOL_CALL,
    USAGE,
    Entry,
    Failure,
    start_event,
)
from streaming.providers.anthropic import build_body
from streaming.providers.base import UpstreamTarget
from streaming.transports.encoders.messages import (
    KEEPALIVE,
    MessagesEncoder,
    anthropic_error,
)
from streaming.transports.errors import ApiError
from streaming.transports.inbound.messages import parse_messages_request

MODEL = "claude-sonnet-4-5"
MESSAGE_ID = "msg_0123456789abcdef"
EVENTS: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RawMessageStreamEvent)


def body(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Hello"}],
    }
    return {**base, **fields}


# -- the request ------------------------------------------------------------------


def test_a_plain_body_runs_as_a_chat_request_with_usage():
    request = parse_messages_request(body(stream=True))
    assert request.stream is True
    assert request.chat.model == MODEL
    assert request.chat.messages == [{"role": "user", "content": "Hello"}]
    assert request.chat.params == {"max_tokens": 1024}
    assert request.chat.include_usage is True
    assert request.echo == {"model": MODEL, "thinking": False, "stop_sequences": []}


@pytest.mark.parametrize(
    ("system", "content"),
    [
        ("Be brief.", "Be brief."),
        (
            [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
            [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        ),
        (
            [{"type": "text", "text": "Cached.", "cache_control": {"type": "ephemeral"}}],
            [{"type": "text", "text": "Cached."}],
        ),
    ],
)
def test_the_system_prompt_is_a_leading_system_message(system, content):
    messages = parse_messages_request(body(system=system)).chat.messages
    assert messages[0] == {"role": "system", "content": content}
    assert messages[1]["role"] == "user"


def test_an_empty_system_prompt_adds_no_message():
    assert parse_messages_request(body(system="")).chat.messages[0]["role"] == "user"


def test_text_and_images_become_content_parts():
    content = [
        {"type": "text", "text": "What is in these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    request = parse_messages_request(body(messages=[{"role": "user", "content": content}]))
    assert request.chat.messages == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        }
    ]


TOOL_TURNS: list[dict[str, Any]] = [
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "Two lookups.", "signature": "sig"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "Looking both up."},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome"}},
        ],
    },
    {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
            {
                "type": "tool_result",
                "tool_use_id": "toolu_2",
                "content": [{"type": "text", "text": "no "}, {"type": "text", "text": "data"}],
                "is_error": True,
            },
            {"type": "text", "text": "Thanks."},
        ],
    },
]


def test_tool_use_and_results_become_tool_calls_then_tool_messages_before_the_turn():
    messages = parse_messages_request(body(messages=TOOL_TURNS)).chat.messages
    assert messages[1] == {
        "role": "assistant",
        "content": "Looking both up.",
        "tool_calls": [
            {
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
            },
            {
                "id": "toolu_2",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Rome"}'},
            },
        ],
    }
    assert messages[2:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: no data"},
        {"role": "user", "content": [{"type": "text", "text": "Thanks."}]},
    ]


def test_an_assistant_turn_of_thinking_only_is_left_out():
    turns = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "", "signature": ""}]},
        {"role": "user", "content": "Still there?"},
    ]
    messages = parse_messages_request(body(messages=turns)).chat.messages
    assert [m["role"] for m in messages] == ["user", "user"]


def test_the_anthropic_upstream_adapter_gets_the_same_conversation_back():
    """Messages in, chat through the engine, Messages out to an Anthropic upstream."""
    request = parse_messages_request(body(system="Be brief.", messages=TOOL_TURNS[:2]))
    target = UpstreamTarget(provider="a", kind="anthropic", base_url="http://x", model=MODEL)
    upstream = build_body(target, request.chat)
    assert upstream["system"] == "Be brief."
    assert upstream["messages"][0] == {
        "role": "user",
        "content": [{"type": "text", "text": "Weather in Paris and Rome?"}],
    }
    assert upstream["messages"][1]["content"] == [
        block for block in TOOL_TURNS[1]["content"] if "thinking" not in block["type"]
    ]


TOOLS = [
    {
        "name": "weather",
        "description": "The weather in a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
    {"name": "clock", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}},
]


def test_tools_become_chat_functions():
    params = parse_messages_request(body(tools=TOOLS)).chat.params
    assert params["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "The weather in a city.",
                "parameters": TOOLS[0]["input_schema"],
            },
        },
        {"type": "function", "function": {"name": "clock", "parameters": {"type": "object"}}},
    ]
    assert "tool_choice" not in params


@pytest.mark.parametrize(
    ("choice", "chat", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any"}, "required", None),
        ({"type": "none"}, "none", None),
        (
            {"type": "tool", "name": "clock"},
            {"type": "function", "function": {"name": "clock"}},
            None,
        ),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
        ({"type": "any", "disable_parallel_tool_use": False}, "required", None),
    ],
)
def test_tool_choice_forms(choice, chat, parallel):
    params = parse_messages_request(body(tools=TOOLS, tool_choice=choice)).chat.params
    assert params["tool_choice"] == chat
    assert params.get("parallel_tool_calls") == parallel


def test_the_other_parameters():
    request = parse_messages_request(
        body(
            stop_sequences=["\n\nHuman:", "END"],
            temperature=0.2,
            top_p=0.9,
            top_k=40,
            metadata={"user_id": "alice"},
            service_tier="auto",
            thinking={"type": "enabled", "budget_tokens": 2048},
            max_tokens=4096,
        )
    )
    assert request.chat.params == {
        "max_tokens": 4096,
        "stop": ["\n\nHuman:", "END"],
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "alice",
    }
    assert request.echo == {
        "model": MODEL,
        "thinking": True,
        "stop_sequences": ["\n\nHuman:", "END"],
    }
    assert request.stream is False


def user_blocks(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": list(blocks)}]}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"model": None}, "model"),
        ({"frequency_penalty": 1}, "frequency_penalty"),
        ({"temperature": 1.5}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"stream": "yes"}, "stream"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": []}]}, "messages[0].content"),
        (user_blocks({"type": "video", "url": "x"}), "messages[0].content[0].type"),
        (user_blocks({"type": "document", "source": {}}), "messages[0].content[0].type"),
        (user_blocks({"text": "no type"}), "messages[0].content[0].type"),
        (user_blocks({"type": "text", "text": 3}), "messages[0].content[0].text"),
        (
            user_blocks({"type": "image", "source": {"type": "file", "file_id": "f"}}),
            "messages[0].content[0].source.type",
        ),
        (
            user_blocks(
                {"type": "image", "source": {"type": "base64", "media_type": "x/y", "data": ""}}
            ),
            "messages[0].content[0].source.media_type",
        ),
        (
            user_blocks({"type": "tool_use", "id": "t", "name": "n", "input": {}}),
            "messages[0].content[0].type",
        ),
        (
            user_blocks({"type": "tool_result", "content": "x"}),
            "messages[0].content[0].tool_use_id",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t", "name": "n", "input": "{}"}],
                    }
                ]
            },
            "messages[0].content[0].input",
        ),
        ({"system": [{"type": "image"}]}, "system[0].type"),
        ({"system": 5}, "system"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"name": "x" * 65, "input_schema": {}}]}, "tools[0].name"),
        ({"tools": [{"name": "f"}]}, "tools[0].input_schema"),
        ({"tool_choice": {"type": "required"}}, "tool_choice.type"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
        ({"metadata": {"user_id": "bob", "team": "x"}}, "metadata.team"),
        ({"metadata": {"user_id": 7}}, "metadata.user_id"),
        ({"thinking": {"type": "enabled", "budget_tokens": 100}}, "thinking.budget_tokens"),
        ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, "thinking.budget_tokens"),
        ({"thinking": {"type": "on"}}, "thinking.type"),
        ({"service_tier": "priority"}, "service_tier"),
    ],
)
def test_a_wrong_body_is_a_400_naming_the_anthropic_field(fields, param):
    with pytest.raises(ApiError) as caught:
        parse_messages_request(body(**fields))
    assert (caught.value.status, caught.value.param) == (400, param)
    assert caught.value.message


def test_a_chat_limit_names_the_field_it_came_from():
    """input_schema nests one level deeper in chat: the depth limit is reported on it."""
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(28):  # the innermost object at the limit, 32, in the Anthropic body
        schema = {"properties": schema}
    with pytest.raises(ApiError) as caught:
        parse_messages_request(body(tools=[{"name": "deep", "input_schema": schema}]))
    assert caught.value.param is not None
    assert caught.value.param.startswith("tools[0].input_schema.properties")
    assert "function" not in caught.value.message


def test_a_body_that_is_not_an_object_is_a_400():
    with pytest.raises(ApiError) as caught:
        parse_messages_request([])
    assert caught.value.status == 400


# -- the events ---------------------------------------------------------------------


def log(*events: tuple[int, Any]) -> list[Entry]:
    """Log entries from (kind, value) pairs; a value that is not bytes is JSON-encoded."""
    return [
        (seq, kind, value if isinstance(value, bytes) else orjson.dumps(value))
        for seq, (kind, value) in enumerate(events, start=1)
    ]


def usage(prompt: int, completion: int, cached: int = 0) -> tuple[int, Any]:
    counts: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        counts["prompt_tokens_details"] = {"cached_tokens": cached}
    return USAGE, counts


def failure(
    status: int = 502, message: str = "upstream closed the stream early"
) -> tuple[int, bytes]:
    return ERROR, Failure(status, message, code="upstream_error").payload()


ECHO = {"model": MODEL, "thinking": False, "stop_sequences": []}


def render(
    entries: Sequence[Entry],
    echo: dict[str, Any] = ECHO,
    *,
    after: int = -1,
    cuts: Sequence[int] = (),
) -> tuple[bytes, MessagesEncoder]:
    """Everything an encoder writes for the log, fed in batches split at ``cuts``."""
    encoder = MessagesEncoder(MESSAGE_ID, echo, after=after, collect=True)
    bounds = [0, *sorted(set(cuts)), len(entries)]
    out = b"".join(encoder.encode(entries[a:b]) for a, b in itertools.pairwise(bounds))
    return out, encoder


def frames(data: bytes) -> list[tuple[int | None, str, dict[str, Any]]]:
    """(id, event, data) of each SSE event, with the framing checked line by line."""
    assert data == b"" or data.endswith(b"\n\n")
    parsed = []
    for block in data.split(b"\n\n")[:-1]:
        fields = dict(line.split(b": ", 1) for line in block.split(b"\n"))
        assert set(fields) <= {b"id", b"event", b"data"}
        number = int(fields[b"id"]) if b"id" in fields else None
        parsed.append((number, fields[b"event"].decode(), json.loads(fields[b"data"])))
    return parsed


def checked(data: bytes) -> list[dict[str, Any]]:
    """The events' data, each validated by the SDK's types; ids numbered from 0."""
    events = frames(data)
    assert [number for number, _, _ in events] == list(range(len(events)))
    for _, name, event in events:
        assert event["type"] == name
        if name == "ping":
            assert event == {"type": "ping"}
        elif name == "error":
            ErrorResponse.model_validate(event)
        else:
            EVENTS.validate_python(event)
    return [event for _, _, event in events]


def sdk_stream(data: bytes) -> anthropic.MessageStreamManager:
    """The SDK's ``messages.stream`` reading ``data`` as the response body."""

    def respond(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=data)

    client = anthropic.Anthropic(
        api_key="sk-test",
        base_url="http://sluice.test",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(respond)),
    )
    return client.messages.stream(
        model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": "Hi"}]
    )


def final_message(data: bytes) -> dict[str, Any]:
    with sdk_stream(data) as stream:
        message = stream.get_final_message()
    return Message.model_validate(message.model_dump()).model_dump(exclude_none=True)


def same_as_sdk(data: bytes, encoder: MessagesEncoder) -> dict[str, Any]:
    snapshot = encoder.snapshot()
    assert Message.model_validate(snapshot).model_dump(exclude_none=True) == final_message(data)
    return snapshot


def types(events: list[dict[str, Any]]) -> list[str]:
    return [
        event["type"]
        + (f":{event['delta']['type']}" if event["type"] == "content_block_delta" else "")
        for event in events
    ]


def test_text_and_usage():
    entries = log(
        (START, start_event("claude-upstream")),
        (TEXT, 'Hé "there"\n'),
        (LOGPROBS, {"content": []}),
        (TEXT, "data: 世界 🌊"),
        (FINISH, "stop"),
        usage(120, 7, cached=100),
        (END, b""),
    )
    data, encoder = render(entries)
    events = checked(data)
    assert types(events) == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta:text_delta",
        "content_block_delta:text_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0]["message"]["model"] == "claude-upstream"
    assert events[6] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"input_tokens": 20, "output_tokens": 7, "cache_read_input_tokens": 100},
    }
    snapshot = same_as_sdk(data, encoder)
    assert snapshot == {
        "id": MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": 'Hé "there"\ndata: 世界 🌊'}],
        "model": "claude-upstream",
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 20, "output_tokens": 7, "cache_read_input_tokens": 100},
    }
    with sdk_stream(data) as stream:
        assert "".join(stream.text_stream) == 'Hé "there"\ndata: 世界 🌊'


def tool_calls_log() -> list[Entry]:
    return log(
        (START, start_event(MODEL)),
        (TEXT, "Checking."),
        (TOOL_CALL, {"index": 0, "id": "call_paris", "name": "weather", "arguments": '{"ci'}),
        (TOOL_CALL, {"index": 0, "arguments": 'ty": "Par'}),
        (TOOL_CALL, {"index": 0, "arguments": 'is"}'}),
        (TOOL_CALL, {"index": 1, "name": "weather"}),
        (TOOL_CALL, {"index": 1, "arguments": '{"city": "Rome", "days": [1, 2]}'}),
        (FINISH, "tool_calls"),
        usage(50, 30),
        (END, b""),
    )


def test_two_tool_calls_with_fragmented_arguments():
    data, encoder = render(tool_calls_log())
    events = checked(data)
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert starts[0] == {"type": "text", "text": ""}
    assert starts[1] == {"type": "tool_use", "id": "call_paris", "name": "weather", "input": {}}
    assert starts[2]["id"].startswith("toolu_")  # the upstream sent none: one made up
    assert [e["index"] for e in events if e["type"] == "content_block_stop"] == [0, 1, 2]
    assert events[-2]["delta"]["stop_reason"] == "tool_use"
    snapshot = same_as_sdk(data, encoder)
    assert snapshot["content"][1:] == [
        {"type": "tool_use", "id": "call_paris", "name": "weather", "input": {"city": "Paris"}},
        {
            "type": "tool_use",
            "id": starts[2]["id"],
            "name": "weather",
            "input": {"city": "Rome", "days": [1, 2]},
        },
    ]
    assert render(tool_calls_log())[0] == data  # the made-up id is the same on a replay


def test_arguments_cut_short_are_an_empty_input():
    entries = log(
        (START, start_event(MODEL)),
        (TOOL_CALL, {"index": 0, "id": "call_1", "name": "weather", "arguments": '{"city": '}),
        (FINISH, "length"),
        (END, b""),
    )
    _, encoder = render(entries)
    assert encoder.snapshot()["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "weather", "input": {}}
    ]


def test_length_is_max_tokens():
    entries = log(
        (START, start_event(MODEL)),
        (TEXT, "Once upon"),
        (FINISH, "length"),
        usage(5, 2),
        (END, b""),
    )
    data, encoder = render(entries)
    assert checked(data)[-2]["delta"]["stop_reason"] == "max_tokens"
    assert same_as_sdk(data, encoder)["stop_reason"] == "max_tokens"


def test_a_refusal_is_text_with_stop_reason_refusal():
    entries = log(
        (START, start_event(MODEL)),
        (REFUSAL, "I can't help with that."),
        (FINISH, "content_filter"),
        (END, b""),
    )
    data, encoder = render(entries)
    checked(data)
    snapshot = same_as_sdk(data, encoder)
    assert snapshot["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert snapshot["stop_reason"] == "refusal"


@pytest.mark.parametrize("text_first", [False, True])
def test_an_error_is_the_last_event(text_first):
    head = [(START, start_event(MODEL))] + ([(TEXT, "Half an ans")] if text_first else [])
    entries = log(*head, failure(), (END, b""))
    data, encoder = render(entries)
    events = checked(data)
    assert events[-1] == {
        "type": "error",
        "error": {"type": "api_error", "message": "upstream closed the stream early"},
    }
    assert types(events)[-2] == ("content_block_stop" if text_first else "ping")
    assert encoder.failure == Failure(
        502, "upstream closed the stream early", code="upstream_error"
    )
    with pytest.raises(anthropic.APIStatusError) as caught, sdk_stream(data) as stream:
        stream.get_final_message()
    assert caught.value.body == events[-1]


def test_a_continuation_goes_on_in_the_same_block():
    entries = log(
        (START, start_event("primary")),
        (TEXT, "The answer is"),
        (START, start_event("fallback", continued=True)),
        (TEXT, " forty-two."),
        (FINISH, "stop"),
        (END, b""),
    )
    data, encoder = render(entries)
    events = checked(data)
    assert types(events).count("message_start") == 1
    assert types(events).count("content_block_start") == 1
    assert events[0]["message"]["model"] == "primary"
    assert same_as_sdk(data, encoder)["content"] == [
        {"type": "text", "text": "The answer is forty-two."}
    ]


def thinking_log() -> list[Entry]:
    return log(
        (START, start_event(MODEL)),
        (REASONING, "Let me think"),
        (REASONING, " about it."),
        (TEXT, "Yes."),
        (FINISH, "stop"),
        (END, b""),
    )


def test_reasoning_is_a_thinking_block_when_asked_for():
    data, encoder = render(thinking_log(), {**ECHO, "thinking": True})
    events = checked(data)
    assert events[2]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert same_as_sdk(data, encoder)["content"] == [
        {"type": "thinking", "thinking": "Let me think about it.", "signature": ""},
        {"type": "text", "text": "Yes."},
    ]
    with sdk_stream(data) as stream:
        thought = "".join(e.thinking for e in stream if e.type == "thinking")
    assert thought == "Let me think about it."


def test_reasoning_is_dropped_when_not_asked_for():
    data, encoder = render(thinking_log())
    assert "thinking" not in data.decode()
    assert same_as_sdk(data, encoder)["content"] == [{"type": "text", "text": "Yes."}]


def test_the_first_entry_opens_the_message_whatever_it_is():
    data, _ = render(log((TEXT, "no start logged"), (END, b"")))
    events = checked(data)
    assert events[0]["message"]["model"] == MODEL  # as requested
    assert types(events)[:3] == ["message_start", "ping", "content_block_start"]


def test_nothing_follows_the_end():
    data, _ = render(log((START, start_event(MODEL)), (END, b""), (TEXT, "late"), (END, b"")))
    assert types(checked(data)) == ["message_start", "ping", "message_delta", "message_stop"]


def test_keepalive_and_farewell_are_unnumbered():
    encoder = MessagesEncoder(MESSAGE_ID, ECHO)
    assert encoder.keepalive() == KEEPALIVE == b'event: ping\ndata: {"type": "ping"}\n\n'
    farewell = encoder.farewell(Failure(403, "the token was revoked"))
    assert frames(farewell) == [
        (
            None,
            "error",
            {
                "type": "error",
                "error": {"type": "permission_error", "message": "the token was revoked"},
            },
        )
    ]


def test_a_streaming_reader_keeps_no_content():
    encoder = MessagesEncoder(MESSAGE_ID, ECHO)
    encoder.encode(log((TEXT, "x"), (END, b"")))
    with pytest.raises(RuntimeError):
        encoder.snapshot()


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (409, "invalid_request_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (499, "invalid_request_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ],
)
def test_anthropic_error_types_by_status(status, kind):
    error = anthropic_error(Failure(status, "went wrong"))
    assert error == {"type": "error", "error": {"type": kind, "message": "went wrong"}}
    if kind != "request_too_large":  # documented by Anthropic, missing from the SDK's union
        ErrorResponse.model_validate(error)


# -- exactly once -------------------------------------------------------------------

fragment = st.text(
    alphabet=st.sampled_from(["a", "é", '"', "\\", "\n", "世", "🌊", " ", "{"]),
    min_size=1,
    max_size=4,
)
middle = st.one_of(
    st.tuples(st.just(TEXT), fragment),
    st.tuples(st.just(REASONING), fragment),
    st.tuples(st.just(REFUSAL), fragment),
    st.tuples(st.just(LOGPROBS), st.just({"content": []})),
    st.tuples(st.just(START), st.just(start_event("fallback", continued=True))),
    st.tuples(
        st.just(TOOL_CALL),
        st.fixed_dictionaries(
            {"index": st.integers(0, 2)},
            optional={"id": st.just("call_x"), "name": st.just("f"), "arguments": fragment},
        ),
    ),
    st.tuples(st.just(FINISH), st.sampled_from(["stop", "length", "tool_calls", "content_filter"])),
    st.tuples(
        st.just(USAGE), st.just({"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13})
    ),
)
ending = st.sampled_from([[], [(END, b"")], [failure()], [failure(), (END, b"")]])


@st.composite
def logs(draw: Callable[..., Any]) -> list[Entry]:
    head = [(START, start_event(MODEL))] if draw(st.booleans()) else []
    return log(*head, *draw(st.lists(middle, max_size=25)), *draw(ending))


@settings(max_examples=300, deadline=None)
@given(
    entries=logs(),
    thinking=st.booleans(),
    cuts=st.lists(st.integers(0, 40), max_size=6),
    after=st.integers(-1, 70),
)
def test_a_replay_after_any_event_sends_exactly_the_rest(entries, thinking, cuts, after):
    echo = {**ECHO, "thinking": thinking}
    full, _ = render(entries, echo)
    checked(full)
    replay, _ = render(entries, echo, after=after, cuts=[c for c in cuts if c <= len(entries)])
    rest = [
        block + b"\n\n"
        for block in full.split(b"\n\n")[:-1]
        if int(block.split(b"\n", 1)[0][4:]) > after
    ]
    assert replay == b"".join(rest)

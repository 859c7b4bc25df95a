"""The OpenAI Responses protocol without a server: request translation and the event encoder.

Every event the encoder writes is checked against the official SDK's types
(strictly, with no field the type does not know), parsed by the SDK's own SSE
decoder, and folded by the SDK's own stream accumulator, which refuses
inconsistent output indexes and items. A replay from any ``starting_after``
must be exactly the tail of the full run, byte for byte.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import orjson
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import omit
from openai._streaming import SSEDecoder
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent

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
from streaming.transports.encoders.responses import ResponsesEncoder
from streaming.transports.errors import ApiError
from streaming.transports.inbound.responses import parse_responses_request

RESPONSE_ID = "resp_0123456789abcdef01234567"
CREATED = 1_700_000_000
EVENTS: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)
USAGE_BODY = {
    "prompt_tokens": 11,
    "completion_tokens": 7,
    "total_tokens": 18,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 3},
}
WEATHER = {"type": "function", "name": "weather", "parameters": {"type": "object"}}


# -- the parser ----------------------------------------------------------------------


def bad(body: dict[str, Any]) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_responses_request(body)
    assert caught.value.status == 400
    return caught.value


def test_string_input_is_one_user_message_and_usage_is_always_asked() -> None:
    request = parse_responses_request({"model": "gpt-4o", "input": "hi", "stream": True})
    assert request.chat.messages == [{"role": "user", "content": "hi"}]
    assert request.chat.include_usage and request.chat.stream and request.stream
    assert not request.background
    assert request.chat.params == {}


def test_messages_parts_and_instructions() -> None:
    request = parse_responses_request(
        {
            "model": "gpt-4o",
            "instructions": "be brief",
            "input": [
                {"role": "developer", "content": "answer in French"},
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "what is this?"},
                        {"type": "input_image", "image_url": "https://x.test/a.png"},
                    ],
                },
                {
                    "type": "message",
                    "role": "assistant",
                    "id": "msg_1",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "a cat", "annotations": []}],
                },
                {"type": "reasoning", "id": "rs_1", "summary": []},
            ],
        }
    )
    assert request.chat.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": "answer in French"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "a cat"}]},
    ]
    assert request.echo["instructions"] == "be brief"


def test_function_calls_and_outputs_round_trip() -> None:
    request = parse_responses_request(
        {
            "model": "gpt-4o",
            "input": [
                {"role": "user", "content": "weather in Paris and Rome?"},
                {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "c2", "output": "rain"},
            ],
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "name": "weather"},
        }
    )
    call = {"type": "function", "function": {"name": "weather", "arguments": "{}"}}
    assert request.chat.messages[1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", **call}, {"id": "c2", **call}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
    ]
    assert request.chat.params["tools"] == [
        {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    ]
    assert request.chat.params["tool_choice"] == {
        "type": "function",
        "function": {"name": "weather"},
    }
    assert request.echo["tools"] == [{**WEATHER, "description": None, "strict": None}]


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_tool_choice_strings(choice: str) -> None:
    request = parse_responses_request(
        {"model": "m", "input": "x", "tools": [WEATHER], "tool_choice": choice}
    )
    assert request.chat.params["tool_choice"] == choice
    assert request.echo["tool_choice"] == choice


def test_parameters_translated_and_echoed() -> None:
    schema = {"type": "object", "properties": {}}
    body = {
        "model": "gpt-4o",
        "input": "x",
        "max_output_tokens": 64,
        "temperature": 0.5,
        "top_p": 0.9,
        "parallel_tool_calls": False,
        "user": "alice",
        "text": {
            "format": {"type": "json_schema", "name": "out", "schema": schema, "strict": True}
        },
        "reasoning": {"effort": "low"},
        "metadata": {"team": "blue"},
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "truncation": "auto",
        "background": True,
        "prompt_cache_key": "k",
    }
    request = parse_responses_request(body)
    assert request.chat.params == {
        "max_tokens": 64,
        "temperature": 0.5,
        "top_p": 0.9,
        "parallel_tool_calls": False,
        "user": "alice",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "out", "schema": schema, "strict": True},
        },
        "reasoning_effort": "low",
    }
    assert request.background
    echo = request.echo
    assert echo["text"] == body["text"] and echo["metadata"] == {"team": "blue"}
    assert (echo["max_output_tokens"], echo["store"], echo["truncation"]) == (64, False, "auto")
    json_object = {"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}}
    assert parse_responses_request(json_object).chat.params == {
        "response_format": {"type": "json_object"}
    }


def test_defaults_echoed_make_a_valid_response() -> None:
    echo = parse_responses_request({"model": "gpt-4o", "input": "x"}).echo
    assert echo["tools"] == [] and echo["tool_choice"] == "auto"
    assert echo["parallel_tool_calls"] is True and echo["metadata"] == {}
    assert echo["text"] == {"format": {"type": "text"}}
    encoder = ResponsesEncoder(RESPONSE_ID, CREATED, echo)
    encoder.encode([(1, START, start_event("gpt-4o"))])
    strict(Response, encoder.snapshot())


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"input": "x"}, "model", "model"),
        ({"model": "m"}, "input", "input"),
        ({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type", ""),
        ({"model": "m", "input": [{"role": "tool", "content": "x"}]}, "input[0].role", ""),
        ({"model": "m", "input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id", ""),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_file"}]}]},
            "input[0].content[0].type",
            "",
        ),
        (
            {"model": "m", "input": "x", "tools": [{"type": "web_search"}]},
            "tools[0].type",
            "not served",
        ),
        ({"model": "m", "input": "x", "tools": [{"type": "function"}]}, "tools[0].name", ""),
        (
            {"model": "m", "input": "x", "previous_response_id": "resp_1"},
            "previous_response_id",
            "send the whole conversation in input",
        ),
        ({"model": "m", "input": "x", "conversation": "conv_1"}, "conversation", "not supported"),
        ({"model": "m", "input": "x", "modalities": ["text"]}, "modalities", "unrecognized"),
        ({"model": "m", "input": "x", "temperature": 3}, "temperature", "temperature"),
        ({"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens", "'max_out"),
        ({"model": "m", "input": "x", "tool_choice": {"type": "web_search"}}, "tool_choice", ""),
        ({"model": "m", "input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type", ""),
        ({"model": "m", "input": "x", "reasoning": {"effort": "max"}}, "reasoning.effort", ""),
        ({"model": "m", "input": "x", "metadata": {"k": 1}}, "metadata.k", ""),
        ({"model": "m", "input": "x", "stream": "yes"}, "stream", ""),
    ],
)
def test_errors_name_the_responses_parameter(body: dict[str, Any], param: str, words: str) -> None:
    error = bad(body)
    assert error.param == param
    assert words in error.message


def test_chat_limits_apply_to_the_translation() -> None:
    error = bad({"model": "m", "input": [{"role": "user", "content": "x"}] * 3000})
    assert error.param == "input" and "'input'" in error.message


# -- the encoder: SDK validation ----------------------------------------------------------


def strict(model: Any, data: dict[str, Any]) -> Any:
    """Validate strictly, and refuse any field the SDK's type does not declare."""
    if model is Response:
        parsed = Response.model_validate(data, strict=True)
    else:
        parsed = EVENTS.validate_python(data, strict=True)
    assert_no_extras(parsed)
    return parsed


def assert_no_extras(value: Any) -> None:
    if isinstance(value, pydantic.BaseModel):
        extra = set(value.model_extra or ())
        if isinstance(value, Response):
            extra -= {"store"}  # OpenAI returns it; the SDK's type does not declare it
        assert not extra, f"{type(value).__name__} has extra {extra}"
        for name in type(value).model_fields:
            assert_no_extras(getattr(value, name))
    elif isinstance(value, list):
        for item in value:
            assert_no_extras(item)


def run(log: list[Entry], *, echo: dict[str, Any] | None = None) -> tuple[list[Any], Any]:
    """Encode ``log``; the events as the SDK parses them, and the final snapshot."""
    echo = echo or parse_responses_request({"model": "gpt-4o", "input": "x"}).echo
    encoder = ResponsesEncoder(RESPONSE_ID, CREATED, echo)
    data = encoder.encode(log)
    events = []
    for sse in SSEDecoder().iter_bytes(iter([data])):
        event = strict(ResponseStreamEvent, sse.json())
        assert sse.event == event.type and sse.id == str(event.sequence_number)
        events.append(event)
    assert [event.sequence_number for event in events] == list(range(len(events)))
    accumulate(events)
    return events, strict(Response, encoder.snapshot())


def accumulate(events: list[Any]) -> None:
    """The SDK's own stream state folds them without complaint."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    for event in events:
        state.handle_event(event)


def entries(*events: tuple[int, Any]) -> list[Entry]:
    log: list[Entry] = []
    for seq, (kind, value) in enumerate(events, 1):
        log.append((seq, kind, value if isinstance(value, bytes) else orjson.dumps(value)))
    return log


def types(events: list[Any]) -> list[str]:
    return [event.type for event in events]


TEXT_EVENTS = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


def test_plain_text() -> None:
    log = entries(
        (START, start_event("gpt-4o-2024")),
        (TEXT, "Hé "),
        (TEXT, '"there"\n'),
        (FINISH, "stop"),
        (END, b""),
    )
    events, response = run(log)
    assert types(events) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        *TEXT_EVENTS,
        "response.completed",
    ]
    assert events[0].response.model == "gpt-4o-2024" and events[0].response.output == []
    assert events[0].response.status == "in_progress"
    assert events[2].item.id == f"msg_{RESPONSE_ID[5:]}_0"
    assert events[-1].response.output_text == 'Hé "there"\n'
    assert response.status == "completed" and response.output_text == 'Hé "there"\n'
    assert response.usage is None and response.error is None


def test_text_and_usage() -> None:
    log = entries(
        (START, start_event("m")),
        (TEXT, "4"),
        (LOGPROBS, {"content": []}),
        (FINISH, "stop"),
        (USAGE, USAGE_BODY),
        (END, b""),
    )
    events, response = run(log)
    usage = events[-1].response.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (11, 7, 18)
    assert usage.input_tokens_details.cached_tokens == 4
    assert usage.output_tokens_details.reasoning_tokens == 3
    assert response.usage == usage


def test_two_parallel_tool_calls_in_fragments() -> None:
    log = entries(
        (START, start_event("m")),
        (TOOL_CALL, {"index": 0, "id": "call_a", "name": "weather", "arguments": '{"ci'}),
        (TOOL_CALL, {"index": 0, "arguments": 'ty":"Paris"}'}),
        (TOOL_CALL, {"index": 1, "id": "call_b", "name": "weather"}),
        (TOOL_CALL, {"index": 1, "arguments": '{"city":"Rome"}'}),
        (FINISH, "tool_calls"),
        (END, b""),
    )
    events, response = run(log)
    assert types(events)[2:] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    calls = [(item.id, item.call_id, item.name, item.arguments) for item in response.output]
    suffix = RESPONSE_ID[5:]
    assert calls == [
        (f"fc_{suffix}_0", "call_a", "weather", '{"city":"Paris"}'),
        (f"fc_{suffix}_1", "call_b", "weather", '{"city":"Rome"}'),
    ]
    assert response.status == "completed"


def test_text_then_a_tool_call_closes_the_message_first() -> None:
    log = entries(
        (TEXT, "Let me look."),
        (TOOL_CALL, {"index": 0, "id": "c", "name": "weather", "arguments": "{}"}),
        (END, b""),
    )
    events, response = run(log)
    assert types(events)[5:9] == [*TEXT_EVENTS, "response.output_item.added"]
    assert [item.type for item in response.output] == ["message", "function_call"]
    assert response.model == "gpt-4o"  # no START: the model asked for


def test_length_is_incomplete() -> None:
    log = entries((START, start_event("m")), (TEXT, "long"), (FINISH, "length"), (END, b""))
    events, response = run(log)
    assert events[-1].type == "response.incomplete"
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"
    _, filtered = run(entries((TEXT, "x"), (FINISH, "content_filter"), (END, b"")))
    assert filtered.incomplete_details.reason == "content_filter"


def failure(status: int, code: str) -> bytes:
    return Failure(status, "upstream timed out", code=code).payload()


def test_error_before_any_output() -> None:
    events, response = run(entries((ERROR, failure(504, "upstream_timeout")), (END, b"")))
    assert types(events) == ["response.created", "response.in_progress", "response.failed"]
    assert response.status == "failed" and response.output == []
    assert response.error.code == "server_error"
    assert response.error.message == "upstream timed out"


def test_error_after_some_text_closes_the_message() -> None:
    log = entries(
        (START, start_event("m")),
        (TEXT, "half"),
        (ERROR, failure(429, "rate_limited")),
        (END, b""),
    )
    events, response = run(log)
    assert types(events)[-4:] == [*TEXT_EVENTS, "response.failed"]
    assert response.output[0].status == "incomplete"
    assert response.output_text == "half"
    assert response.error.code == "rate_limit_exceeded"


def test_cancelled() -> None:
    log = entries((START, start_event("m")), (TEXT, "a"), (ERROR, failure(499, "cancelled")))
    events, response = run([*log, (4, END, b"")])
    assert events[-1].type == "response.failed"
    assert response.status == "cancelled" and response.error is None


def test_a_continuation_is_one_unbroken_response() -> None:
    log = entries(
        (START, start_event("first")),
        (TEXT, "The answer "),
        (START, start_event("second", continued=True)),
        (TEXT, "is 4."),
        (FINISH, "stop"),
        (END, b""),
    )
    events, response = run(log)
    assert types(events).count("response.created") == 1
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    assert {(event.item_id, event.output_index) for event in deltas} == {(response.output[0].id, 0)}
    assert len(response.output) == 1 and response.output_text == "The answer is 4."
    assert response.model == "first"


def test_refusal() -> None:
    log = entries(
        (START, start_event("m")),
        (REFUSAL, "I can't "),
        (REFUSAL, "help."),
        (FINISH, "stop"),
        (END, b""),
    )
    events, response = run(log)
    assert types(events)[2:] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.refusal.delta",
        "response.refusal.delta",
        "response.refusal.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert response.output[0].content[0].refusal == "I can't help."


def test_reasoning_then_text() -> None:
    log = entries(
        (START, start_event("m")),
        (REASONING, "2 and 2"),
        (REASONING, " make 4"),
        (TEXT, "4"),
        (FINISH, "stop"),
        (END, b""),
    )
    events, response = run(log)
    assert "response.reasoning_text.delta" in types(events)
    done = next(event for event in events if event.type == "response.reasoning_text.done")
    assert done.text == "2 and 2 make 4"
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.id == f"rs_{RESPONSE_ID[5:]}_0"
    assert reasoning.content[0].text == "2 and 2 make 4"
    assert message.type == "message" and response.output_text == "4"


def test_snapshot_midway_is_in_progress() -> None:
    encoder = ResponsesEncoder(RESPONSE_ID, CREATED, DEFAULT_ECHO)
    encoder.encode(entries((START, start_event("m")), (TEXT, "so far")))
    response = strict(Response, encoder.snapshot())
    assert response.status == "in_progress" and response.output_text == "so far"
    assert response.output[0].status == "in_progress"


def test_nothing_after_the_terminal_event() -> None:
    encoder = ResponsesEncoder(RESPONSE_ID, CREATED, DEFAULT_ECHO)
    log = entries((TEXT, "x"), (ERROR, failure(500, "internal_error")), (END, b""))
    encoder.encode(log[:2])
    assert encoder.encode(log[2:]) == b""


def test_farewell_and_keepalive() -> None:
    encoder = ResponsesEncoder(RESPONSE_ID, CREATED, DEFAULT_ECHO)
    encoder.encode(entries((START, start_event("m")), (TEXT, "x")))
    [sse] = SSEDecoder().iter_bytes(iter([encoder.farewell(Failure(401, "revoked", "revoked"))]))
    event = strict(ResponseStreamEvent, sse.json())
    assert sse.id is None and event.type == "error" and event.code == "revoked"
    assert event.sequence_number == 4  # the last one the client has
    assert encoder.keepalive() == b": keep-alive\n\n"


DEFAULT_ECHO = parse_responses_request({"model": "gpt-4o", "input": "x"}).echo


# -- exactly once -------------------------------------------------------------------------


def payload_for(seq: int, kind: int, draw: Any) -> bytes:
    text = st.text(max_size=6)
    if kind in (TEXT, REASONING, REFUSAL):
        return orjson.dumps(draw(text))
    if kind == TOOL_CALL:
        call: dict[str, Any] = {"index": draw(st.integers(0, 2))}
        if draw(st.booleans()):
            call.update(id=f"call_{seq}", name=draw(text))  # call ids are unique
        if draw(st.booleans()):
            call["arguments"] = draw(text)
        return orjson.dumps(call)
    if kind == START:
        return start_event(draw(text) or "m", continued=draw(st.booleans()))
    if kind == FINISH:
        return orjson.dumps(draw(st.sampled_from(["stop", "length", "tool_calls"])))
    if kind == USAGE:
        return orjson.dumps(USAGE_BODY)
    return b'{"content":[]}'


@st.composite
def logs(draw: Any) -> list[Entry]:
    body = [TEXT, REASONING, REFUSAL, TOOL_CALL, START, FINISH, USAGE, LOGPROBS]
    kinds = draw(st.lists(st.sampled_from(body), max_size=25))
    ending = draw(st.sampled_from(["end", "error", "cancelled", "open"]))
    log = [(seq, kind, payload_for(seq, kind, draw)) for seq, kind in enumerate(kinds, 1)]
    if ending in ("error", "cancelled"):
        code = "cancelled" if ending == "cancelled" else "upstream_error"
        log.append((len(log) + 1, ERROR, failure(502, code)))
    if ending != "open":
        log.append((len(log) + 1, END, b""))
    return log


def batched(log: list[Entry], cuts: list[int]) -> list[list[Entry]]:
    bounds = sorted({0, len(log), *(cut % (len(log) + 1) for cut in cuts)})
    return [log[a:b] for a, b in pairwise(bounds)]


@settings(max_examples=200, deadline=None)
@given(
    logs(),
    st.lists(st.integers(0, 40), max_size=6),
    st.lists(st.integers(0, 40), max_size=6),
    st.integers(-1, 60),
)
def test_a_replay_is_exactly_the_rest(
    log: list[Entry], cuts: list[int], other_cuts: list[int], after: int
) -> None:
    full = ResponsesEncoder(RESPONSE_ID, CREATED, DEFAULT_ECHO)
    data = b"".join(full.encode(batch) for batch in batched(log, cuts))
    again = ResponsesEncoder(RESPONSE_ID, CREATED, DEFAULT_ECHO)
    assert b"".join(again.encode(batch) for batch in batched(log, other_cuts)) == data
    assert again.snapshot() == full.snapshot()

    everything = list(SSEDecoder().iter_bytes(iter([data])))
    events = [strict(ResponseStreamEvent, sse.json()) for sse in everything]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    accumulate(events)
    strict(Response, full.snapshot())

    resumed = ResponsesEncoder(RESPONSE_ID, CREATED, DEFAULT_ECHO, after=after)
    tail = b"".join(resumed.encode(batch) for batch in batched(log, other_cuts))
    expected = [sse.data for sse in everything if int(sse.id or -1) > after]
    assert [sse.data for sse in SSEDecoder().iter_bytes(iter([tail]))] == expected


def test_a_call_without_an_id_gets_one_that_stays() -> None:
    log = entries(
        (TOOL_CALL, {"index": 0, "name": "weather"}),
        (TOOL_CALL, {"index": 0, "id": "late", "arguments": "{}"}),
        (END, b""),
    )
    events, response = run(log)
    assert events[2].item.call_id == response.output[0].call_id == f"call_{RESPONSE_ID[5:]}_0"

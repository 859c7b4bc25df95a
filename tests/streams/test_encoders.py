"""Neutral events in, each protocol's frames out: the encoders, without I/O.

A stream's log holds protocol-neutral events (streaming.core.events); what a
client reads is its encoder's rendering. These pin the OpenAI chat rendering
an SDK parses, the framings around it, and that every event is one frame.
"""

from __future__ import annotations

import json

import pytest

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
    Failure,
    events_of,
    start_event,
)
from streaming.transports.encoders.chat import (
    ChatChunks,
    ChatEventSource,
    ChatNDJSON,
    ChatSSE,
    ChatWebSocket,
)
from streaming.transports.encoders.text import PlainText

STREAM = "chatcmpl-0123456789abcdef01234567"
USAGE_BODY = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def answer() -> list[tuple[int, int, bytes]]:
    """An answer as the session logs it: start, text, a tool call, finish, usage, end."""
    bodies = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"content": 'Hé "there"\n'}}]},
        {"choices": [{"index": 0, "delta": {"reasoning_content": "hmm"}}]},
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "lookup", "arguments": '{"q":'},
                            }
                        ]
                    },
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]},
                }
            ]
        },
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": USAGE_BODY},
    ]
    events = [(START, start_event("gpt-test"))]
    for body in bodies:
        events += events_of(body, usage=True)
    events.append((END, b""))
    return [(seq, kind, payload) for seq, (kind, payload) in enumerate(events, 1)]


def chunks_of(sse: bytes) -> list[dict]:
    return [
        json.loads(line[6:])
        for line in sse.decode().splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def test_a_chunk_body_becomes_neutral_events_and_the_role_opener_none() -> None:
    kinds = [kind for _, kind, _ in answer()]

    assert kinds == [START, TEXT, REASONING, TOOL_CALL, TOOL_CALL, FINISH, USAGE, END]
    assert list(events_of({"choices": [], "usage": USAGE_BODY}, usage=False)) == []


def test_openai_chat_chunks_read_as_the_sdk_expects() -> None:
    encoder = ChatSSE(ChatChunks(STREAM, 1700000000, "gpt-test"), retry_ms=1000)

    sent = encoder.encode(answer())

    assert sent.startswith(b"retry: 1000\nid: 1\ndata: {")
    assert sent.endswith(b"id: 8\ndata: [DONE]\n\n")
    chunks = chunks_of(sent)
    assert {(c["id"], c["object"], c["created"], c["model"]) for c in chunks} == {
        (STREAM, "chat.completion.chunk", 1700000000, "gpt-test")
    }
    deltas = [c["choices"][0]["delta"] if c["choices"] else None for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[1] == {"content": 'Hé "there"\n'}
    assert deltas[2] == {"reasoning_content": "hmm"}
    assert deltas[3] == {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"name": "lookup", "arguments": '{"q":'},
            }
        ]
    }
    assert deltas[4] == {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}
    assert chunks[5]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
    assert chunks[6]["choices"] == [] and chunks[6]["usage"] == USAGE_BODY


def test_the_sse_preamble_rides_on_the_first_write_only() -> None:
    encoder = ChatSSE(ChatChunks(STREAM, 0, "m"), retry_ms=250)
    first, second = encoder.encode(answer()[:1]), encoder.encode(answer()[1:2])

    assert first.startswith(b"retry: 250\nid: 1\n") and second.startswith(b"id: 2\n")


def test_a_continuation_names_the_new_model_without_a_second_role() -> None:
    encoder = ChatSSE(ChatChunks(STREAM, 0, "first"), retry_ms=0)
    events = [
        (1, START, start_event("first")),
        (2, TEXT, b'"one "'),
        (3, START, start_event("second", continued=True)),
        (4, TEXT, b'"two"'),
    ]

    chunks = chunks_of(encoder.encode(events))

    assert [c["model"] for c in chunks] == ["first", "first", "second", "second"]
    assert chunks[2]["choices"][0]["delta"] == {}  # the model changed; nothing said
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "one two"


def test_a_reader_resuming_after_the_start_names_the_model_it_was_given() -> None:
    encoder = ChatNDJSON(ChatChunks(STREAM, 0, "resumed-model"))

    line = json.loads(encoder.encode([(5, TEXT, b'"x"')]))

    assert line["seq"] == 5 and line["chunk"]["model"] == "resumed-model"


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (
            Failure(502, "upstream failed: boom", code="server_error", type="upstream_error"),
            {
                "message": "upstream failed: boom",
                "type": "upstream_error",
                "code": "server_error",
                "param": None,
            },
        ),
        (
            Failure(429, "slow down", code="rate_limited"),
            {
                "message": "slow down",
                "type": "rate_limit_error",
                "code": "rate_limited",
                "param": None,
            },
        ),
    ],
)
def test_an_error_event_is_an_openai_error_in_every_framing(
    failure: Failure, expected: dict
) -> None:
    event = [(3, ERROR, failure.payload()), (4, END, b"")]
    chunks = ChatChunks(STREAM, 0, "m")

    sse = ChatSSE(chunks, retry_ms=0).encode(event).decode()
    ndjson = [json.loads(line) for line in ChatNDJSON(chunks).encode(event).splitlines()]
    frames = [json.loads(frame) for frame in ChatWebSocket(chunks, STREAM).encode(event)]
    text = PlainText().encode(event).decode()

    assert chunks_of(sse.encode()) == [{"error": expected}] and sse.endswith("data: [DONE]\n\n")
    assert ndjson == [{"seq": 3, "error": expected}, {"seq": 4, "done": True}]
    assert frames == [
        {"type": "error", "stream_id": STREAM, "seq": 3, "error": expected},
        {"type": "stream.done", "stream_id": STREAM, "seq": 4},
    ]
    assert text == f"\n[error: {failure.message}]\n\n"


def test_every_event_is_one_frame_with_its_seq() -> None:
    events = answer()
    chunks = ChatChunks(STREAM, 0, "m")

    sse_ids = [
        int(line[4:])
        for line in ChatEventSource(chunks, retry_ms=0).encode(events).decode().splitlines()
        if line.startswith("id: ")
    ]
    ndjson = [json.loads(line)["seq"] for line in ChatNDJSON(chunks).encode(events).splitlines()]
    ws = [json.loads(frame)["seq"] for frame in ChatWebSocket(chunks, STREAM).encode(events)]

    assert sse_ids == ndjson == ws == list(range(1, len(events) + 1))


def test_eventsource_readers_get_a_named_done_event() -> None:
    chunks = ChatChunks(STREAM, 0, "m")
    sent = ChatEventSource(chunks, retry_ms=0).encode([(1, END, b"")])
    farewell = ChatEventSource(chunks, retry_ms=0).farewell(Failure(401, "token revoked"))

    assert sent.endswith(b"id: 1\nevent: done\ndata: [DONE]\n\n")
    assert farewell.endswith(b"event: done\ndata: [DONE]\n\n")
    assert chunks_of(farewell)[0]["error"]["type"] == "authentication_error"


def test_plain_text_is_only_the_answer() -> None:
    assert PlainText().encode(answer()) == 'Hé "there"\n\n'.encode()


def test_refusals_and_log_probabilities_reach_the_client_in_openai_s_shape() -> None:
    logprobs = {
        "content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]
    }
    body = {"choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": logprobs}]}
    refusal = {"choices": [{"index": 0, "delta": {"refusal": "I can't help with that."}}]}
    events = [
        (seq, kind, payload)
        for seq, (kind, payload) in enumerate(
            [*events_of(body, usage=False), *events_of(refusal, usage=False)], 1
        )
    ]

    chunks = chunks_of(ChatSSE(ChatChunks(STREAM, 0, "m"), retry_ms=0).encode(events))

    assert [kind for _, kind, _ in events] == [TEXT, LOGPROBS, REFUSAL]
    assert chunks[0]["choices"][0]["delta"] == {"content": "Hi"}
    assert chunks[1]["choices"][0]["logprobs"] == logprobs
    assert chunks[2]["choices"][0]["delta"] == {"refusal": "I can't help with that."}

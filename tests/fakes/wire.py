"""What the fake upstreams send, byte for byte as the real APIs send it.

Each encoder turns a :class:`Script` into frames: ``(bytes, is_token)``, where
a token is one content or tool-argument delta, paced by the script. The
server walks the frames and injects the scripted fault at the right place.
"""

from __future__ import annotations

import base64
import itertools
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

Frame = tuple[bytes, bool]

DEFAULT_TEXT = "Hello from the fake upstream! This is a short scripted answer."
_ids = itertools.count(1)


@dataclass
class Script:
    """How the fake answers one model name. See ``FakeUpstream.script``."""

    tokens: list[str] = field(default_factory=list)
    delay: float = 0.0
    ttft: float = 0.0
    fault: str | None = None
    fault_after: int = 0
    status: int | None = None
    retry_after: float | None = None
    error_type: str | None = None
    tool_name: str | None = None
    tool_arguments: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    shape: str | None = None  # which malformed shape the ``shape`` fault sends
    # Usage details: prompt tokens served from the cache (part of the prompt's
    # count), and hidden reasoning tokens (part of the completion's).
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    # A continuation request (the answer so far, then "continue") gets the
    # tokens after that answer, as a real model would carry on.
    continues: bool = False


def split_text(text: str) -> list[str]:
    """Word-ish tokens that keep their leading space, like a tokenizer's output."""
    words = text.split(" ")
    return [words[0]] + [" " + word for word in words[1:]] if text else []


def numbered_tokens(count: int) -> list[str]:
    return [f"{'' if i == 0 else ' '}tok{i}" for i in range(count)]


def prompt_tokens(body: dict[str, Any]) -> int:
    """A rough count: words in the messages, like a tokenizer would roughly see."""
    count = 0
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            count += len(content.split())
    return count + 3


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


# --- OpenAI ----------------------------------------------------------------------------


# What each provider says when the prompt does not fit the model (as they send it).
OPENAI_CONTEXT_LENGTH = {
    "error": {
        "message": "This model's maximum context length is 128000 tokens. However, your "
        "messages resulted in 131072 tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}
ANTHROPIC_CONTEXT_LENGTH = {
    "type": "error",
    "error": {
        "type": "invalid_request_error",
        "message": "prompt is too long: 215000 tokens > 200000 maximum",
    },
}


def openai_error_body(
    status: int, error_type: str | None = None, fault: str | None = None
) -> dict[str, Any]:
    if fault == "context_length":
        return OPENAI_CONTEXT_LENGTH
    kinds = {
        400: ("invalid_request_error", "Invalid value for 'messages'.", None),
        401: ("invalid_request_error", "Incorrect API key provided.", "invalid_api_key"),
        403: (
            "invalid_request_error",
            "Project does not have access to model.",
            "model_not_found",
        ),
        429: ("requests", "Rate limit reached for requests.", "rate_limit_exceeded"),
    }
    default = ("server_error", "The server had an error while processing your request.", None)
    kind, message, code = kinds.get(status, default)
    error = {"message": message, "type": error_type or kind, "param": None, "code": code}
    return {"error": error}


class OpenAIChunks:
    """Builds ``chat.completion.chunk`` objects for one response."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.base = {
            "id": f"chatcmpl-fake{next(_ids)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
        }
        self.include_usage = include_usage

    def frame(
        self, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None
    ) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        chunk: dict[str, Any] = {**self.base, "choices": [choice]}
        if self.include_usage:
            chunk["usage"] = None
        return b"data: " + _dumps(chunk) + b"\n\n"

    def usage_frame(self, prompt: int, completion: int, script: Script | None = None) -> bytes:
        usage = openai_usage(prompt, completion, script)
        return b"data: " + _dumps({**self.base, "choices": [], "usage": usage}) + b"\n\n"


def openai_usage(prompt: int, completion: int, script: Script | None = None) -> dict[str, Any]:
    """OpenAI's usage object; with the script's cached and reasoning tokens in
    its details, as OpenAI sends them when there are any."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if script is not None and script.cached_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": min(script.cached_tokens, prompt)}
    if script is not None and script.reasoning_tokens:
        usage["completion_tokens_details"] = {"reasoning_tokens": script.reasoning_tokens}
    return usage


def completion_tokens(script: Script) -> int:
    """What the answer counts: its deltas, and the reasoning it did not show."""
    return len(script.tokens) + len(script.tool_arguments) + script.reasoning_tokens


def token_logprobs(token: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """A content token's log probability, as OpenAI sends it when asked (``logprobs``)."""
    if not body.get("logprobs"):
        return None
    entry = {"token": token, "logprob": -0.25, "bytes": list(token.encode()), "top_logprobs": []}
    return {"content": [entry], "refusal": None}


def openai_frames(script: Script, body: dict[str, Any]) -> list[Frame]:
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    chunks = OpenAIChunks(body.get("model", ""), include_usage)
    frames: list[Frame] = [
        (chunks.frame({"role": "assistant", "content": "", "refusal": None}), False)
    ]
    frames += [
        (chunks.frame({"content": token}, logprobs=token_logprobs(token, body)), True)
        for token in script.tokens
    ]
    if script.tool_name:
        call = {
            "index": 0,
            "id": "call_fake1",
            "type": "function",
            "function": {"name": script.tool_name, "arguments": ""},
        }
        frames.append((chunks.frame({"tool_calls": [call]}), True))
        for fragment in script.tool_arguments:
            call = {"index": 0, "function": {"arguments": fragment}}
            frames.append((chunks.frame({"tool_calls": [call]}), True))
    finish = script.finish_reason or ("tool_calls" if script.tool_name else "stop")
    frames.append((chunks.frame({}, finish), False))
    if include_usage:
        usage = chunks.usage_frame(prompt_tokens(body), completion_tokens(script), script)
        frames.append((usage, False))
    frames.append((b"data: [DONE]\n\n", False))
    return frames


def openai_completion(script: Script, body: dict[str, Any]) -> dict[str, Any]:
    """A non-streaming ``chat.completion`` object."""
    message: dict[str, Any] = {"role": "assistant", "content": "".join(script.tokens) or None}
    if script.tool_name:
        function = {"name": script.tool_name, "arguments": "".join(script.tool_arguments)}
        message["tool_calls"] = [{"id": "call_fake1", "type": "function", "function": function}]
    prompt, completion = prompt_tokens(body), completion_tokens(script)
    finish = script.finish_reason or ("tool_calls" if script.tool_name else "stop")
    return {
        "id": f"chatcmpl-fake{next(_ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": openai_usage(prompt, completion, script),
    }


EMBEDDING_DIMENSIONS = 8


def embedding_inputs(value: Any) -> list[Any]:
    """The inputs of an embeddings request, one per vector (as OpenAI reads ``input``)."""
    if isinstance(value, str) or (value and all(isinstance(v, int) for v in value)):
        return [value]
    return list(value or [])


def fake_embedding(item: Any, dimensions: int) -> list[float]:
    """A vector from a checksum of ``item``: eighths, so float32 (base64) holds them exactly."""
    seed = zlib.crc32(orjson.dumps(item))
    return [((seed >> (k % 24)) + k) % 17 / 8 - 1 for k in range(dimensions)]


def openai_embeddings(body: dict[str, Any]) -> dict[str, Any]:
    """An embeddings ``list`` as OpenAI sends it, float or base64 as the request asks."""
    inputs = embedding_inputs(body.get("input"))
    dimensions = body.get("dimensions") or EMBEDDING_DIMENSIONS
    data = []
    for index, item in enumerate(inputs):
        vector: Any = fake_embedding(item, dimensions)
        if body.get("encoding_format") == "base64":
            vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = sum(len(i) if isinstance(i, list) else len(i.split()) for i in inputs)
    return {
        "object": "list",
        "data": data,
        "model": body.get("model", ""),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


OPENAI_MALFORMED = b'data: {"id": "chatcmpl-broken", "choices": [{"delta": \n\n'


def openai_error_frame(error_type: str | None) -> bytes:
    return b"data: " + _dumps(openai_error_body(500, error_type)) + b"\n\n"


# --- Anthropic -------------------------------------------------------------------------


def count_input_tokens(body: Any) -> int:
    """The fake's token count of a Messages body: one per started 4 characters
    of every text (system, messages, tool schemas), so tests can predict it."""
    text = orjson.dumps(
        [body.get("system", ""), body.get("messages", []), body.get("tools", [])]
    ).decode()
    return -(-len(text) // 4)


def anthropic_error_body(
    status: int, error_type: str | None = None, fault: str | None = None
) -> dict[str, Any]:
    if fault == "context_length":
        return ANTHROPIC_CONTEXT_LENGTH
    kinds = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        429: "rate_limit_error",
        529: "overloaded_error",
    }
    kind = error_type or kinds.get(
        status, "api_error" if status >= 500 else "invalid_request_error"
    )
    return {"type": "error", "error": {"type": kind, "message": f"fake {kind}"}}


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _dumps(data) + b"\n\n"


def _anthropic_head(model: str, body: dict[str, Any], script: Script) -> list[Frame]:
    # Anthropic's input_tokens leave out what was read from the cache.
    cached = min(script.cached_tokens, prompt_tokens(body))
    usage = {"input_tokens": prompt_tokens(body) - cached, "output_tokens": 1}
    if cached:
        usage |= {"cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}
    message: dict[str, Any] = {
        "id": f"msg_fake{next(_ids)}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    return [(_event("message_start", {"type": "message_start", "message": message}), False)]


def _block(index: int, block: dict[str, Any], deltas: list[dict[str, Any]]) -> list[Frame]:
    start = {"type": "content_block_start", "index": index, "content_block": block}
    frames: list[Frame] = [(_event("content_block_start", start), False)]
    for delta in deltas:
        data = {"type": "content_block_delta", "index": index, "delta": delta}
        frames.append((_event("content_block_delta", data), True))
    stop = {"type": "content_block_stop", "index": index}
    frames.append((_event("content_block_stop", stop), False))
    return frames


def anthropic_frames(script: Script, body: dict[str, Any]) -> list[Frame]:
    frames = _anthropic_head(body.get("model", ""), body, script)
    index = 0
    if script.tokens or not script.tool_name:
        deltas = [{"type": "text_delta", "text": token} for token in script.tokens]
        frames += _block(index, {"type": "text", "text": ""}, deltas)
        index += 1
    if script.tool_name:
        block = {"type": "tool_use", "id": "toolu_fake1", "name": script.tool_name, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": ""}]
        deltas += [{"type": "input_json_delta", "partial_json": f} for f in script.tool_arguments]
        frames += _block(index, block, deltas)
    # Anthropic sends a ping after the first content_block_start, with spaces in its JSON.
    frames.insert(2, (b'event: ping\ndata: {"type": "ping"}\n\n', False))
    stop_reason = script.finish_reason or ("tool_use" if script.tool_name else "end_turn")
    output = completion_tokens(script)
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": output},
    }
    frames.append((_event("message_delta", delta), False))
    frames.append((_event("message_stop", {"type": "message_stop"}), False))
    return frames


ANTHROPIC_MALFORMED = b'event: content_block_delta\ndata: {"type": "content_block_delta", "ind\n\n'


def anthropic_error_frame(error_type: str | None) -> bytes:
    return _event("error", anthropic_error_body(529, error_type or "overloaded_error"))


# --- Careless upstreams ----------------------------------------------------------------


def echo_text(headers: list[tuple[str, str]]) -> str:
    """The request headers as a careless upstream prints them, byte for byte."""
    return "request headers were:\n" + "".join(f"{k}: {v}\n" for k, v in headers)


def openai_echo_body(status: int, headers: list[tuple[str, str]]) -> dict[str, Any]:
    body = openai_error_body(status)
    body["error"]["message"] += " " + echo_text(headers)
    body["error"]["headers"] = dict(headers)
    return body


def anthropic_echo_body(status: int, headers: list[tuple[str, str]]) -> dict[str, Any]:
    body = anthropic_error_body(status)
    body["error"]["message"] += " " + echo_text(headers)
    body["error"]["headers"] = dict(headers)
    return body


def openai_echo_frame(headers: list[tuple[str, str]]) -> bytes:
    return b"data: " + _dumps(openai_echo_body(500, headers)) + b"\n\n"


def anthropic_echo_frame(headers: list[tuple[str, str]]) -> bytes:
    return _event("error", anthropic_echo_body(529, headers))


# Chunks valid as JSON whose shape is wrong, by name (the ``shape`` fault).
OPENAI_SHAPES: dict[str, Any] = {
    "choices_not_array": {"choices": "abc"},
    "choice_not_object": {"choices": [1]},
    "delta_not_object": {"choices": [{"index": 0, "delta": "x"}]},
    "content_not_string": {"choices": [{"index": 0, "delta": {"content": {"t": 1}}}]},
    "finish_reason_not_string": {"choices": [{"index": 0, "delta": {}, "finish_reason": 5}]},
    "tool_calls_not_array": {"choices": [{"index": 0, "delta": {"tool_calls": "f"}}]},
    "tool_call_not_object": {"choices": [{"index": 0, "delta": {"tool_calls": [1]}}]},
    "tool_call_index_not_int": {
        "choices": [{"index": 0, "delta": {"tool_calls": [{"index": "a", "id": "c"}]}}]
    },
    "tool_call_function_not_object": {
        "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": "f"}]}}]
    },
    "tool_call_arguments_not_string": {
        "choices": [
            {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": 1}}]}}
        ]
    },
    "usage_not_object": {"choices": [], "usage": "lots"},
    "usage_count_not_int": {"choices": [], "usage": {"completion_tokens": "many"}},
    "usage_too_deep": {"choices": [], "usage": {"details": {"a": [[[[[[[[[[[[[[1]]]]]]]]]]]]]]}}},
}

ANTHROPIC_SHAPES: dict[str, Any] = {
    "message_not_object": {"type": "message_start", "message": "m"},
    "usage_not_object": {"type": "message_start", "message": {"usage": "u"}},
    "block_not_object": {"type": "content_block_start", "index": 0, "content_block": "b"},
    "block_text_not_string": {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ["t"]},
    },
    "tool_name_not_string": {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "tool_use", "id": "t", "name": 5},
    },
    "index_not_int": {
        "type": "content_block_start",
        "index": [0],
        "content_block": {"type": "tool_use", "id": "t", "name": "f"},
    },
    "delta_not_object": {"type": "content_block_delta", "index": 0, "delta": "d"},
    "text_not_string": {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": 5},
    },
    "stop_delta_not_object": {"type": "message_delta", "delta": "d"},
    "stop_reason_not_string": {"type": "message_delta", "delta": {"stop_reason": ["x"]}},
    "output_tokens_not_int": {
        "type": "message_delta",
        "delta": {},
        "usage": {"output_tokens": "x"},
    },
}


def openai_shape_frame(shape: str | None) -> bytes:
    return b"data: " + _dumps(OPENAI_SHAPES[shape or "choices_not_array"]) + b"\n\n"


def anthropic_shape_frame(shape: str | None) -> bytes:
    data = ANTHROPIC_SHAPES[shape or "message_not_object"]
    return _event(str(data["type"]), data)

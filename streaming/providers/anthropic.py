"""Anthropic Messages API: OpenAI requests in, OpenAI chunk bodies out.

The request translation and the stream translation are plain functions and a
sans-I/O class, so both are tested without a socket; the adapter only wires
them to the HTTP stream.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import orjson

from streaming.providers.base import (
    ChatRequest,
    ProviderAdapter,
    UpstreamTarget,
    post_event_stream,
    post_json,
)
from streaming.providers.errors import (
    ProtocolError,
    ProviderError,
    RateLimited,
    ServerError,
    UpstreamError,
)
from streaming.providers.pool import UpstreamPool
from streaming.providers.sse import SSEDecoder

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Anthropic error events that mean "try again / elsewhere"; any other is a ProviderError.
ERROR_TYPES: dict[str, type[UpstreamError]] = {
    "overloaded_error": ServerError,
    "api_error": ServerError,
    "rate_limit_error": RateLimited,
}

Block = dict[str, Any]


# --- Request translation -------------------------------------------------------------


def build_body(target: UpstreamTarget, request: ChatRequest) -> dict[str, Any]:
    """The Messages API body for an OpenAI-style request."""
    params = {**request.params, **target.params}
    system, messages = convert_messages(request.messages)
    body: dict[str, Any] = {
        "model": target.model,
        "max_tokens": params.get("max_completion_tokens")
        or params.get("max_tokens")
        or DEFAULT_MAX_TOKENS,
        "messages": messages,
        "stream": True,
    }
    if system:
        body["system"] = system
    for name in ("temperature", "top_p", "top_k"):
        if params.get(name) is not None:
            body[name] = params[name]
    stop = params.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if params.get("tools"):
        body["tools"] = [convert_tool(tool) for tool in params["tools"]]
    tool_choice = convert_tool_choice(params.get("tool_choice"), params.get("parallel_tool_calls"))
    if tool_choice is not None and body.get("tools"):
        body["tool_choice"] = tool_choice
    if params.get("user"):
        body["metadata"] = {"user_id": str(params["user"])}
    return body


def convert_messages(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """OpenAI messages -> (system text, Anthropic messages with same roles merged)."""
    system: list[str] = []
    converted: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(text_of(message.get("content")))
            continue
        if role == "tool":
            role, blocks = "user", [tool_result_block(message)]
        elif role == "assistant":
            blocks = assistant_blocks(message)
        else:
            role, blocks = "user", content_blocks(message.get("content"))
        if not blocks:
            continue
        if converted and converted[-1]["role"] == role:
            # Anthropic requires alternating roles; OpenAI allows runs.
            converted[-1]["content"].extend(blocks)
        else:
            converted.append({"role": role, "content": blocks})
    return "\n\n".join(part for part in system if part), converted


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def content_blocks(content: Any) -> list[Block]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[Block] = []
    for part in content or []:
        if part.get("type") == "text" and part.get("text"):
            blocks.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "image_url":
            blocks.append(image_block(part["image_url"]["url"]))
    return blocks


def image_block(url: str) -> Block:
    if url.startswith("data:") and ";base64," in url:
        media_type, _, data = url[len("data:") :].partition(";base64,")
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def assistant_blocks(message: dict[str, Any]) -> list[Block]:
    blocks = content_blocks(message.get("content"))
    for call in message.get("tool_calls") or []:
        function = call.get("function", {})
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id", ""),
                "name": function.get("name", ""),
                "input": _json_object(function.get("arguments")),
            }
        )
    return blocks


def _json_object(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def tool_result_block(message: dict[str, Any]) -> Block:
    return {
        "type": "tool_result",
        "tool_use_id": message.get("tool_call_id", ""),
        "content": text_of(message.get("content")),
    }


def convert_tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool.get("function", tool)
    converted = {
        "name": function["name"],
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        converted["description"] = function["description"]
    return converted


def convert_tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None and parallel is not False:
        return None
    if isinstance(choice, dict):
        converted = {"type": "tool", "name": choice.get("function", {}).get("name", "")}
    else:
        kind = {"none": "none", "required": "any"}.get(str(choice), "auto")
        converted = {"type": kind}
    if parallel is False and converted["type"] != "none":
        converted["disable_parallel_tool_use"] = True
    return converted


# --- Stream translation --------------------------------------------------------------


class AnthropicStreamDecoder:
    """Turns Messages API stream events into OpenAI chunk bodies, sans I/O.

    Feed it each event's parsed ``data``; it returns the chunk bodies to yield.
    OpenAI numbers tool calls among tool calls only, so text and thinking
    blocks do not advance the tool-call index.
    """

    def __init__(self) -> None:
        self.done = False
        self._tool_index_by_block: dict[int, int] = {}
        self._prompt_tokens = 0
        self._cached_tokens = 0
        self._completion_tokens = 0

    def feed(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        handler = getattr(self, f"_on_{data.get('type')}", None)
        if handler is None:
            return []  # ping, unknown: ignored
        try:
            return handler(data)
        except (AttributeError, TypeError, KeyError, ValueError):
            # A field of the wrong type (an object that is a string, ...): the
            # upstream broke the protocol; what we pass on is checked below.
            raise ProtocolError(
                f"upstream sent a malformed {str(data.get('type'))[:40]} event"
            ) from None

    def _on_message_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        self._count_usage(data.get("message", {}).get("usage") or {})
        return [_delta({"role": "assistant", "content": ""})]

    def _on_content_block_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        block = data.get("content_block", {})
        if block.get("type") == "text" and block.get("text"):
            return [_delta({"content": _text(block["text"])})]
        if block.get("type") != "tool_use":
            return []
        index = self._tool_index_by_block[_index(data)] = len(self._tool_index_by_block)
        call = {
            "index": index,
            "id": _text(block.get("id", "")),
            "type": "function",
            "function": {"name": _text(block.get("name", "")), "arguments": ""},
        }
        return [_delta({"tool_calls": [call]})]

    def _on_content_block_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        delta = data.get("delta", {})
        if delta.get("type") == "text_delta" and delta.get("text"):
            return [_delta({"content": _text(delta["text"])})]
        if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
            index = self._tool_index_by_block.get(_index(data))
            if index is None:
                raise ProtocolError("tool input for an unknown block")
            call = {"index": index, "function": {"arguments": _text(delta["partial_json"])}}
            return [_delta({"tool_calls": [call]})]
        return []  # thinking and signature deltas have no OpenAI equivalent

    def _on_message_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        self._count_usage(data.get("usage") or {})
        reason = data.get("delta", {}).get("stop_reason")
        return [_delta({}, finish_reason=STOP_REASONS.get(reason or "", "stop"))]

    def _on_message_stop(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        self.done = True
        usage: dict[str, Any] = {
            "prompt_tokens": self._prompt_tokens,
            "completion_tokens": self._completion_tokens,
            "total_tokens": self._prompt_tokens + self._completion_tokens,
        }
        if self._cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": self._cached_tokens}
        return [{"choices": [], "usage": usage}]

    def _on_error(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        error = data.get("error")
        if not isinstance(error, dict):
            error = {}
        error_type = ERROR_TYPES.get(error.get("type", ""), ProviderError)
        raise error_type(
            f"upstream error mid-stream: {error.get('message') or 'unknown'}", body=data
        )

    def _count_usage(self, usage: dict[str, Any]) -> None:
        # Anthropic's input_tokens excludes cached tokens; OpenAI's prompt_tokens
        # includes them (cache writes are counted as input, reads as cached input).
        prompt = sum(
            _count(usage.get(name))
            for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        )
        if prompt:
            self._prompt_tokens = prompt
            self._cached_tokens = _count(usage.get("cache_read_input_tokens"))
        if usage.get("output_tokens") is not None:
            # Cumulative in message_delta, so the last value wins.
            self._completion_tokens = _count(usage["output_tokens"])


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("not a string")  # reported by feed() as a protocol error
    return value


def _index(data: dict[str, Any]) -> int:
    index = data.get("index", 0)
    if not isinstance(index, int) or isinstance(index, bool):
        raise TypeError("index is not an integer")
    return index


def _count(value: Any) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("a token count is not an integer")
    return value


def _delta(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


# --- Adapter -------------------------------------------------------------------------


class AnthropicAdapter(ProviderAdapter):
    """Streams from ``{base_url}/messages`` (base_url like https://api.anthropic.com/v1)."""

    kind = "anthropic"
    path = "/messages"

    async def count_tokens(
        self, client: UpstreamPool, target: UpstreamTarget, request: ChatRequest
    ) -> int:
        """The upstream's own count of the request's input tokens (``/messages/count_tokens``)."""
        url = f"{target.base_url.rstrip('/')}/messages/count_tokens"
        body = {k: v for k, v in build_body(target, request).items() if k in _COUNTED}
        obj = await post_json(
            client, url, headers=_headers(target), body=body, api_key=target.api_key
        )
        tokens = obj.get("input_tokens") if isinstance(obj, dict) else None
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            raise ProtocolError("upstream sent a count without input_tokens")
        return tokens

    async def stream(
        self, client: UpstreamPool, target: UpstreamTarget, request: ChatRequest
    ) -> AsyncGenerator[dict[str, Any], None]:
        url = self.url(target)
        headers = _headers(target)
        decoder = AnthropicStreamDecoder()
        sse = SSEDecoder()
        body = build_body(target, request)
        async with post_event_stream(
            client, url, headers=headers, body=body, api_key=target.api_key
        ) as rsp:
            async for raw in rsp.aiter_raw():
                for event in sse.feed(raw):
                    for chunk in decoder.feed(_parse(event.data)):
                        yield chunk
                    if decoder.done:
                        return
        raise ProtocolError("upstream closed the stream early")


# What /messages/count_tokens accepts of a Messages body.
_COUNTED = ("model", "messages", "system", "tools", "tool_choice")


def _headers(target: UpstreamTarget) -> dict[str, str]:
    headers = {"anthropic-version": ANTHROPIC_VERSION}
    if target.api_key:
        headers["x-api-key"] = target.api_key
    return headers


def _parse(data: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ProtocolError("upstream sent malformed JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("upstream sent a non-object event")
    return obj

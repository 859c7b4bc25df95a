"""Validation of OpenAI chat requests into ChatRequest."""

from __future__ import annotations

from typing import Any

import orjson

from streaming.errors import ApiError
from streaming.providers import ChatRequest

ROLES = {"system", "developer", "user", "assistant", "tool"}
# Parameters passed on to the upstream as given; anything else is rejected so
# a typo does not silently do nothing.
PASSTHROUGH = {
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "user",
    "response_format",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "metadata",
    "reasoning_effort",
    "service_tier",
    "store",
    "n",
}


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, code="invalid_request", param=param)


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array", "messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(f"{where} must be an object", where)
        if message.get("role") not in ROLES:
            raise _bad(f"{where}.role must be one of {sorted(ROLES)}", f"{where}.role")
        content = message.get("content")
        if content is None and not message.get("tool_calls") and message["role"] != "assistant":
            raise _bad(f"{where}.content is required", f"{where}.content")
        if content is not None and not isinstance(content, str | list):
            raise _bad(f"{where}.content must be a string or an array", f"{where}.content")
    return messages


def _check_numbers(params: dict[str, Any]) -> None:
    for name, low, high in (("temperature", 0, 2), ("top_p", 0, 1)):
        value = params.get(name)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise _bad(f"'{name}' must be a number from {low} to {high}", name)
    for name in ("max_tokens", "max_completion_tokens"):
        value = params.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise _bad(f"'{name}' must be a positive integer", name)
    if params.get("n", 1) != 1:
        raise _bad("only n=1 is supported", "n")


def parse_chat_request(data: Any) -> ChatRequest:
    """Validate a decoded request body; raise ApiError(400) on anything wrong."""
    if not isinstance(data, dict):
        raise _bad("the request body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required and must be a string", "model")
    messages = _check_messages(data.get("messages"))
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean", "stream")
    options = data.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("'stream_options' must be an object", "stream_options")
    unknown = set(data) - PASSTHROUGH - {"model", "messages", "stream", "stream_options"}
    if unknown:
        name = sorted(unknown)[0]
        raise _bad(f"unrecognized request argument supplied: {name}", name)
    params = {k: v for k, v in data.items() if k in PASSTHROUGH and k != "n"}
    _check_numbers(data)
    return ChatRequest(
        model=model,
        messages=messages,
        params=params,
        stream=stream,
        include_usage=bool(options.get("include_usage")),
    )


def parse_json_body(body: bytes) -> Any:
    if not body:
        raise _bad("the request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(
            400, f"the request body is not valid JSON: {exc}", code="invalid_json"
        ) from None

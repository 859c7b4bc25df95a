"""Validation of OpenAI chat requests into ChatRequest.

The input rules live here, once, for every transport (POST
/v1/chat/completions, POST /v1/streams, GET /v1/chat/stream, WebSocket
``chat.create``). Text may hold any Unicode JSON can carry (a NUL too: the
audit stores what PostgreSQL cannot hold escaped); what is bounded is shape
and size, with OpenAI's limits where OpenAI states them. A request outside
them is a 400 whose ``param`` and message name the field.
"""

from __future__ import annotations

from typing import Any

import orjson

from streaming.providers import ChatRequest
from streaming.transports.errors import ApiError

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


# -- limits (README: "Input rules") ------------------------------------------
MAX_DEPTH = 32  # nesting of the whole request (objects and arrays)
MAX_MESSAGES = 2048
MAX_TOOLS = 128
MAX_STOP = 4
MODEL_MAX_CHARS = 200  # ModelRoute.model's length
USER_MAX_CHARS = 256
METADATA_MAX_PAIRS = 16
METADATA_KEY_MAX_CHARS = 64
METADATA_VALUE_MAX_CHARS = 512
TOOL_NAME_MAX_CHARS = 64


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, code="invalid_request", param=param)


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """ApiError(400) if ``value`` nests objects/arrays deeper than ``limit``.

    Iterative, so a hostile document cannot exhaust the stack here, and it
    stops at the first container past the limit. The audit, the upstream
    encoders and the wire encoders all recurse: nothing deeper gets past.
    """
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict):
            items: Any = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        else:
            continue
        if depth > limit:
            param = path.lstrip(".") or None
            raise _bad(f"the request nests deeper than {limit} levels (at '{param}')", param)
        for key, child in items:
            if isinstance(child, dict | list):
                step = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}"
                stack.append((child, depth + 1, step))


def _check_model(model: Any) -> str:
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required and must be a string", "model")
    if len(model) > MODEL_MAX_CHARS:
        raise _bad(f"'model' must be at most {MODEL_MAX_CHARS} characters", "model")
    if not model.isprintable() or any(c.isspace() for c in model):
        raise _bad("'model' must not contain whitespace or control characters", "model")
    return model


def _check_text(params: dict[str, Any], name: str, limit: int) -> None:
    value = params.get(name)
    if value is not None and (not isinstance(value, str) or len(value) > limit):
        raise _bad(f"'{name}' must be a string of at most {limit} characters", name)


def _check_metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict) or len(metadata) > METADATA_MAX_PAIRS:
        raise _bad(
            f"'metadata' must be an object of at most {METADATA_MAX_PAIRS} pairs", "metadata"
        )
    for key, value in metadata.items():
        if len(key) > METADATA_KEY_MAX_CHARS:
            raise _bad(
                f"'metadata' keys must be at most {METADATA_KEY_MAX_CHARS} characters", "metadata"
            )
        if not isinstance(value, str) or len(value) > METADATA_VALUE_MAX_CHARS:
            raise _bad(
                f"metadata.{key} must be a string of at most {METADATA_VALUE_MAX_CHARS} characters",
                f"metadata.{key}",
            )


def _check_tools(params: dict[str, Any]) -> None:
    _check_tool_choice(params.get("tool_choice"))
    tools = params.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise _bad(f"'tools' must be an array of at most {MAX_TOOLS} tools", "tools")
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if (
            not isinstance(function, dict)
            or not isinstance(name, str)
            or not 0 < len(name) <= TOOL_NAME_MAX_CHARS
        ):
            raise _bad(
                f"tools[{i}] must be an object with function.name, a string of 1 to "
                f"{TOOL_NAME_MAX_CHARS} characters",
                f"tools[{i}].function.name",
            )
        if not isinstance(function.get("parameters", {}), dict):
            raise _bad(f"tools[{i}].function.parameters must be an object", f"tools[{i}]")


def _check_tool_choice(choice: Any) -> None:
    function = choice.get("function", {}) if isinstance(choice, dict) else None
    if choice is not None and not (
        isinstance(choice, str)
        or (isinstance(function, dict) and isinstance(function.get("name", ""), str))
    ):
        raise _bad("'tool_choice' must be a string or a function choice object", "tool_choice")


def _check_stop(stop: Any) -> None:
    if stop is None or isinstance(stop, str):
        return
    if (
        not isinstance(stop, list)
        or len(stop) > MAX_STOP
        or not all(isinstance(s, str) for s in stop)
    ):
        raise _bad(f"'stop' must be a string or an array of at most {MAX_STOP} strings", "stop")


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array", "messages")
    if len(messages) > MAX_MESSAGES:
        raise _bad(f"'messages' must hold at most {MAX_MESSAGES} messages", "messages")
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
        if isinstance(content, list):
            _check_parts(content, f"{where}.content")
        calls = message.get("tool_calls")
        if calls is not None and not (
            isinstance(calls, list) and all(_is_tool_call(c) for c in calls)
        ):
            raise _bad(
                f"{where}.tool_calls must be an array of function calls", f"{where}.tool_calls"
            )
        for name in ("name", "tool_call_id"):
            if not isinstance(message.get(name, ""), str):
                raise _bad(f"{where}.{name} must be a string", f"{where}.{name}")
    return messages


def _check_parts(parts: list[Any], where: str) -> None:
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str):
            raise _bad(f"{where}[{j}] must be an object with a 'type'", f"{where}[{j}]")
        if kind == "text" and not isinstance(part.get("text"), str):
            raise _bad(f"{where}[{j}].text must be a string", f"{where}[{j}].text")
        if kind == "image_url":
            image = part.get("image_url")
            if not isinstance(image, dict) or not isinstance(image.get("url"), str):
                raise _bad(f"{where}[{j}].image_url.url must be a string", f"{where}[{j}]")


def _is_tool_call(call: Any) -> bool:
    function = call.get("function") if isinstance(call, dict) else None
    return (
        isinstance(function, dict)
        and isinstance(function.get("name", ""), str)
        and isinstance(function.get("arguments", ""), str | dict)
        and isinstance(call.get("id", ""), str)
    )


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
    check_depth(data)
    model = _check_model(data.get("model"))
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
    _check_text(data, "user", USER_MAX_CHARS)
    _check_metadata(data.get("metadata"))
    _check_tools(data)
    _check_stop(data.get("stop"))
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

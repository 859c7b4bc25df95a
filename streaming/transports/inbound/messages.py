"""Anthropic's Messages API in: a ``POST /v1/messages`` body as the engine's ChatRequest.

A body whose Anthropic shape is wrong is a 400 whose ``param`` is the
Anthropic path (``messages[2].content[0].source``). The chat rules
(streaming.transports.schema) then run on the translation, so the limits are
the chat endpoint's; a ``param`` they name is mapped back to the field it
came from. Extra keys inside a block (``cache_control``, ``citations``) are
accepted and dropped: they change nothing an upstream is asked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from streaming.providers import ChatRequest
from streaming.transports.errors import ApiError
from streaming.transports.schema import (
    MAX_STOP,
    TOOL_NAME_MAX_CHARS,
    USER_MAX_CHARS,
    check_depth,
    parse_chat_request,
)

FIELDS = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "metadata",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
    }
)
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
SERVICE_TIERS = frozenset({"auto", "standard_only"})
MIN_THINKING_BUDGET = 1024  # Anthropic's floor for budget_tokens

Json = dict[str, Any]


@dataclass(slots=True)
class MessagesRequest:
    """A Messages API request: what the engine runs, and what its encoder needs back.

    ``echo`` holds ``model`` (as requested), ``thinking`` (whether the client
    asked to see reasoning) and ``stop_sequences``.
    """

    chat: ChatRequest
    echo: Json
    stream: bool


def parse_messages_request(data: Any) -> MessagesRequest:
    """Validate and translate a decoded body; ApiError(400) on anything wrong."""
    if not isinstance(data, dict):
        raise _bad("the request body must be a JSON object")
    check_depth(data)
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise _bad(f"{unknown[0]}: Extra inputs are not permitted", unknown[0])
    if data.get("max_tokens") is None:
        raise _bad("max_tokens: Field required", "max_tokens")
    messages, origins = _system(data.get("system"))
    turns, turn_origins = _messages(data.get("messages"))
    chat: Json = {
        "model": data.get("model"),
        "messages": messages + turns,
        "max_tokens": data["max_tokens"],
        "stream": data.get("stream", False),
        "stream_options": {"include_usage": True},
        **_sampling(data),
        **_tools(data),
    }
    stop = _stop_sequences(data.get("stop_sequences"))
    if stop:
        chat["stop"] = stop
    user = _user(data.get("metadata"))
    if user is not None:
        chat["user"] = user
    thinking = _thinking(data.get("thinking"), data["max_tokens"])
    _service_tier(data.get("service_tier"))
    request = _chat_request(chat, origins + turn_origins)
    echo = {"model": request.model, "thinking": thinking, "stop_sequences": stop}
    return MessagesRequest(chat=request, echo=echo, stream=request.stream)


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, code="invalid_request", param=param)


def _object(value: Any, where: str) -> Json:
    if not isinstance(value, dict):
        raise _bad(f"{where}: must be an object", where)
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _bad(f"{where}: must be a string", where)
    return value


def _number(data: Json, name: str, low: int, high: int | None) -> Any:
    value = data.get(name)
    kinds = int if high is None else int | float
    if value is not None and (
        isinstance(value, bool)
        or not isinstance(value, kinds)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"from {low} to {high}" if high is not None else f"an integer of at least {low}"
        raise _bad(f"{name}: must be {bound}", name)
    return value


# -- system and messages ----------------------------------------------------------


def _system(system: Any) -> tuple[list[Json], list[str]]:
    if system is None or system == "":
        return [], []
    if isinstance(system, str):
        return [{"role": "system", "content": system}], ["system"]
    if not isinstance(system, list):
        raise _bad("system: must be a string or an array of text blocks", "system")
    parts = [_text_part(block, f"system[{i}]") for i, block in enumerate(system)]
    return ([{"role": "system", "content": parts}], ["system"]) if parts else ([], [])


def _text_part(block: Any, where: str) -> Json:
    if _object(block, where).get("type") != "text":
        raise _bad(f"{where}.type: must be 'text'", f"{where}.type")
    return {"type": "text", "text": _string(block.get("text"), f"{where}.text")}


def _messages(messages: Any) -> tuple[list[Json], list[str]]:
    """The chat messages, and for each the Anthropic path it came from."""
    if not isinstance(messages, list) or not messages:
        raise _bad("messages: must be a non-empty array", "messages")
    chat: list[Json] = []
    origins: list[str] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = _object(message, where).get("role")
        content = message.get("content")
        if not isinstance(content, str) and not (isinstance(content, list) and content):
            raise _bad(
                f"{where}.content: must be a string or a non-empty array of content blocks",
                f"{where}.content",
            )
        if role == "user":
            turn = _user_turn(content, f"{where}.content")
        elif role == "assistant":
            turn = _assistant_turn(content, f"{where}.content")
        else:
            raise _bad(f"{where}.role: must be 'user' or 'assistant'", f"{where}.role")
        chat += turn
        origins += [where] * len(turn)
    return chat, origins


def _user_turn(content: str | list[Any], where: str) -> list[Json]:
    """Its tool results as tool messages, then the rest of the turn as one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    results: list[Json] = []
    parts: list[Json] = []
    for j, block in enumerate(content):
        at = f"{where}[{j}]"
        kind = _block_type(block, at)
        if kind == "tool_result":
            results.append(_tool_result(block, at))
        elif kind == "text":
            parts.append(_text_part(block, at))
        elif kind == "image":
            parts.append(_image(block, at))
        else:
            raise _not_served(kind, at)
    return results + ([{"role": "user", "content": parts}] if parts else [])


def _assistant_turn(content: str | list[Any], where: str) -> list[Json]:
    if isinstance(content, str):
        return [{"role": "assistant", "content": content}]
    texts: list[str] = []
    calls: list[Json] = []
    for j, block in enumerate(content):
        at = f"{where}[{j}]"
        kind = _block_type(block, at)
        if kind == "text":
            texts.append(_text_part(block, at)["text"])
        elif kind == "tool_use":
            calls.append(_tool_use(block, at))
        elif kind not in ("thinking", "redacted_thinking"):  # the upstream's own: not sent
            raise _not_served(kind, at)
    if not texts and not calls:
        return []
    message: Json = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _block_type(block: Any, where: str) -> str:
    return _string(_object(block, where).get("type"), f"{where}.type")


def _not_served(kind: str, where: str) -> ApiError:
    return _bad(f"{where}.type: '{kind}' content blocks are not served here", f"{where}.type")


def _image(block: Json, where: str) -> Json:
    source = _object(block.get("source"), f"{where}.source")
    kind = source.get("type")
    if kind == "url":
        url = _string(source.get("url"), f"{where}.source.url")
    elif kind == "base64":
        media_type = source.get("media_type")
        if media_type not in IMAGE_TYPES:
            raise _bad(
                f"{where}.source.media_type: must be one of {sorted(IMAGE_TYPES)}",
                f"{where}.source.media_type",
            )
        url = f"data:{media_type};base64,{_string(source.get('data'), f'{where}.source.data')}"
    else:
        raise _bad(f"{where}.source.type: must be 'base64' or 'url'", f"{where}.source.type")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_use(block: Json, where: str) -> Json:
    arguments = orjson.dumps(_object(block.get("input"), f"{where}.input")).decode()
    return {
        "id": _string(block.get("id"), f"{where}.id"),
        "type": "function",
        "function": {"name": _string(block.get("name"), f"{where}.name"), "arguments": arguments},
    }


def _tool_result(block: Json, where: str) -> Json:
    """A tool message. Chat has no error flag: an error's text says so itself."""
    call_id = _string(block.get("tool_use_id"), f"{where}.tool_use_id")
    content = block.get("content", "")
    if isinstance(content, list):
        content = "".join(
            _text_part(part, f"{where}.content[{k}]")["text"] for k, part in enumerate(content)
        )
    text = _string(content, f"{where}.content")
    is_error = block.get("is_error", False)
    if not isinstance(is_error, bool):
        raise _bad(f"{where}.is_error: must be a boolean", f"{where}.is_error")
    if is_error:
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": call_id, "content": text}


# -- tools ------------------------------------------------------------------------


def _tools(data: Json) -> Json:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` for chat (none without tools)."""
    tools = data.get("tools")
    if tools is None:
        _tool_choice(data.get("tool_choice"))
        return {}
    if not isinstance(tools, list):
        raise _bad("tools: must be an array", "tools")
    params: Json = {"tools": [_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]}
    choice, parallel = _tool_choice(data.get("tool_choice"))
    if choice is not None:
        params["tool_choice"] = choice
    if parallel is False:
        params["parallel_tool_calls"] = False
    return params


def _tool(tool: Any, where: str) -> Json:
    kind = _object(tool, where).get("type", "custom")
    if kind != "custom":
        raise _bad(f"{where}.type: the server tool '{kind}' is not served here", f"{where}.type")
    name = _string(tool.get("name"), f"{where}.name")
    if not 0 < len(name) <= TOOL_NAME_MAX_CHARS:
        raise _bad(f"{where}.name: must be 1 to {TOOL_NAME_MAX_CHARS} characters", f"{where}.name")
    function: Json = {"name": name}
    if tool.get("description") is not None:
        function["description"] = _string(tool["description"], f"{where}.description")
    function["parameters"] = _object(tool.get("input_schema"), f"{where}.input_schema")
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> tuple[Any, bool | None]:
    """The chat ``tool_choice`` and ``parallel_tool_calls`` (None: not given)."""
    if choice is None:
        return None, None
    kind = _object(choice, "tool_choice").get("type")
    if kind == "tool":
        name = _string(choice.get("name"), "tool_choice.name")
        chat: Any = {"type": "function", "function": {"name": name}}
    elif kind in TOOL_CHOICES:
        chat = TOOL_CHOICES[kind]
    else:
        raise _bad(
            "tool_choice.type: must be one of 'auto', 'any', 'tool', 'none'", "tool_choice.type"
        )
    disable = choice.get("disable_parallel_tool_use", False)
    if not isinstance(disable, bool):
        raise _bad(
            "tool_choice.disable_parallel_tool_use: must be a boolean",
            "tool_choice.disable_parallel_tool_use",
        )
    return chat, (False if disable else None)


# -- the other parameters ---------------------------------------------------------


def _sampling(data: Json) -> Json:
    """temperature and top_p for chat; top_k is checked, and not forwarded (chat has none)."""
    _number(data, "top_k", 0, None)
    values = {name: _number(data, name, 0, 1) for name in ("temperature", "top_p")}
    return {name: value for name, value in values.items() if value is not None}


def _stop_sequences(stop: Any) -> list[str]:
    if stop is None:
        return []
    if (
        not isinstance(stop, list)
        or len(stop) > MAX_STOP
        or not all(isinstance(s, str) for s in stop)
    ):
        raise _bad(
            f"stop_sequences: must be an array of at most {MAX_STOP} strings", "stop_sequences"
        )
    return stop


def _user(metadata: Any) -> str | None:
    if metadata is None:
        return None
    extra = sorted(set(_object(metadata, "metadata")) - {"user_id"})
    if extra:
        raise _bad(f"metadata.{extra[0]}: Extra inputs are not permitted", f"metadata.{extra[0]}")
    user = metadata.get("user_id")
    if user is not None and (not isinstance(user, str) or len(user) > USER_MAX_CHARS):
        raise _bad(
            f"metadata.user_id: must be a string of at most {USER_MAX_CHARS} characters",
            "metadata.user_id",
        )
    return user


def _thinking(thinking: Any, max_tokens: Any) -> bool:
    """Whether the client asked to see the model's reasoning (not forwarded: chat has no budget)."""
    if thinking is None:
        return False
    kind = _object(thinking, "thinking").get("type")
    if kind == "disabled":
        return False
    if kind == "adaptive":
        return True
    if kind != "enabled":
        raise _bad("thinking.type: must be 'enabled', 'disabled' or 'adaptive'", "thinking.type")
    budget = thinking.get("budget_tokens")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < MIN_THINKING_BUDGET:
        raise _bad(
            f"thinking.budget_tokens: must be an integer of at least {MIN_THINKING_BUDGET}",
            "thinking.budget_tokens",
        )
    if isinstance(max_tokens, int) and budget >= max_tokens:
        raise _bad("thinking.budget_tokens: must be less than max_tokens", "thinking.budget_tokens")
    return True


def _service_tier(tier: Any) -> None:
    if tier is not None and tier not in SERVICE_TIERS:
        raise _bad(f"service_tier: must be one of {sorted(SERVICE_TIERS)}", "service_tier")


# -- the chat rules, in Anthropic's names -----------------------------------------

_CHAT_NAMES = {
    "stop": "stop_sequences",
    "user": "metadata.user_id",
    "parallel_tool_calls": "tool_choice.disable_parallel_tool_use",
}
_MESSAGE = re.compile(r"messages\[(\d+)\]")
_TOOL = re.compile(r"tools\[(\d+)\]\.function(?:\.(parameters|name))?")


def _chat_request(chat: Json, origins: list[str]) -> ChatRequest:
    try:
        return parse_chat_request(chat)
    except ApiError as exc:
        if exc.param is None:
            raise
        param = _anthropic_param(exc.param, origins)
        if param == exc.param:
            raise
        raise _bad(exc.message.replace(exc.param, param), param) from None


def _anthropic_param(param: str, origins: list[str]) -> str:
    """Where in the Anthropic body a chat ``param`` came from."""
    if match := _MESSAGE.match(param):
        # The chat message's inner layout is not the Anthropic one: name the message.
        index = int(match[1])
        return origins[index] if index < len(origins) else "messages"
    if match := _TOOL.match(param):
        field = "input_schema" if match[2] == "parameters" else "name"
        return f"tools[{match[1]}].{field}{param[match.end() :]}"
    return _CHAT_NAMES.get(param, param)

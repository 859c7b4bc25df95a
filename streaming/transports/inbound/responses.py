"""OpenAI Responses requests (``POST /v1/responses``) translated to a ChatRequest.

The translation is checked here where the Responses shape differs from chat
(input items, tools, tool_choice, text.format, reasoning); the result then goes
through ``parse_chat_request``, so limits are the chat limits, and an error
found there is reported under the Responses name of the parameter. State kept
by OpenAI (``previous_response_id``, ``conversation``, ``item_reference``)
does not exist here: the client sends the whole conversation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streaming.providers import ChatRequest
from streaming.transports.errors import ApiError
from streaming.transports.schema import check_depth, parse_chat_request

# Sent upstream under their chat names (the rest of the translation is below).
_SAME_NAME = ("temperature", "top_p", "parallel_tool_calls", "user")
# Checked and echoed in the Response object, never sent upstream.
_ECHOED_ONLY = (
    "metadata",
    "store",
    "include",
    "truncation",
    "service_tier",
    "background",
    "stream",
    "prompt_cache_key",
    "safety_identifier",
)
_TRANSLATED = {"model", "input", "instructions", "tools", "tool_choice", "max_output_tokens"}
_KNOWN = _TRANSLATED | {"text", "reasoning", *_SAME_NAME, *_ECHOED_ONLY}
_STATEFUL = ("previous_response_id", "conversation")
_MESSAGE_ROLES = {"user", "system", "developer", "assistant"}
_EFFORTS = {"none", "minimal", "low", "medium", "high", "xhigh"}
# Chat names whose errors are reported under the Responses name.
_RENAMED = {
    "max_tokens": "max_output_tokens",
    "response_format": "text.format",
    "reasoning_effort": "reasoning.effort",
    "messages": "input",
}


@dataclass(slots=True)
class ResponsesRequest:
    """A validated Responses request: what the engine runs and what the Response echoes."""

    chat: ChatRequest  # include_usage always: a Response carries its usage
    echo: dict[str, Any]  # the request's fields as a Response object shows them
    stream: bool
    background: bool


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, code="invalid_request", param=param)


def parse_responses_request(data: Any) -> ResponsesRequest:
    """Validate and translate a decoded body; raise ApiError(400) on anything wrong."""
    if not isinstance(data, dict):
        raise _bad("the request body must be a JSON object")
    check_depth(data)
    _check_arguments(data)
    stream, background = _flag(data, "stream"), _flag(data, "background")
    tools = data.get("tools")
    chat: dict[str, Any] = {
        "model": data.get("model"),
        "messages": _messages(data.get("instructions"), data.get("input")),
        "stream": stream,
        **{name: data[name] for name in _SAME_NAME if data.get(name) is not None},
        **_tool_params(tools, data.get("tool_choice")),
        **_text_params(data.get("text")),
        **_reasoning_params(data.get("reasoning")),
    }
    for name in ("max_output_tokens", "metadata"):
        if data.get(name) is not None:
            chat["max_tokens" if name == "max_output_tokens" else name] = data[name]
    _check_echoed(data)
    request = _parse_chat(chat)
    request.params.pop("metadata", None)
    request.include_usage = True
    return ResponsesRequest(request, _echo(data), stream, background)


def _check_arguments(data: dict[str, Any]) -> None:
    for name in _STATEFUL:
        if data.get(name) is not None:
            raise _bad(
                f"'{name}' is not supported: this gateway keeps no conversation state; "
                "send the whole conversation in input",
                name,
            )
    unknown = set(data) - _KNOWN - set(_STATEFUL)
    if unknown:
        name = sorted(unknown)[0]
        raise _bad(f"unrecognized request argument supplied: {name}", name)
    if data.get("parallel_tool_calls") is not None and not isinstance(
        data["parallel_tool_calls"], bool
    ):
        raise _bad("'parallel_tool_calls' must be a boolean", "parallel_tool_calls")


def _flag(data: dict[str, Any], name: str) -> bool:
    value = data.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(f"'{name}' must be a boolean", name)
    return value


def _parse_chat(chat: dict[str, Any]) -> ChatRequest:
    try:
        return parse_chat_request(chat)
    except ApiError as error:
        param = error.param or ""
        head, sep, rest = param.partition(".function.")
        if sep:  # tools[i].function.name -> tools[i].name
            param = f"{head}.{rest}"
        for chat_name, name in _RENAMED.items():
            if param == chat_name or param.startswith(chat_name + "["):
                # A message index is not an input index: the item is not known.
                param = name
                error.message = error.message.replace(f"'{chat_name}'", f"'{name}'")
        error.param = param or None
        raise


# -- input ----------------------------------------------------------------------


def _messages(instructions: Any, items: Any) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _bad("'instructions' must be a string", "instructions")
        messages.append({"role": "system", "content": instructions})
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
        return messages
    if not isinstance(items, list) or not items:
        raise _bad("'input' must be a string or a non-empty array of items", "input")
    for i, item in enumerate(items):
        _add_item(messages, item, f"input[{i}]")
    if not messages:
        raise _bad("'input' holds no message", "input")
    return messages


def _add_item(messages: list[dict[str, Any]], item: Any, where: str) -> None:
    if not isinstance(item, dict):
        raise _bad(f"{where} must be an object", where)
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        messages.append(_message(item, where))
    elif kind == "function_call":
        _add_function_call(messages, item, where)
    elif kind == "function_call_output":
        output = item.get("output")
        content = output if isinstance(output, str) else _parts(output, f"{where}.output")
        call_id = _string(item, "call_id", where)
        messages.append({"role": "tool", "tool_call_id": call_id, "content": content})
    elif kind == "item_reference":
        raise _bad(
            f"{where}: item references are not supported (no response is stored); "
            "send the item itself",
            f"{where}.type",
        )
    elif kind != "reasoning":  # reasoning is the model's own: no upstream takes it back
        raise _bad(f"{where}.type {kind!r} is not a supported input item type", f"{where}.type")


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in _MESSAGE_ROLES:
        raise _bad(f"{where}.role must be one of {sorted(_MESSAGE_ROLES)}", f"{where}.role")
    content = item.get("content")
    if not isinstance(content, str):
        content = _parts(content, f"{where}.content")
    return {"role": role, "content": content}


def _parts(parts: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(parts, list):
        raise _bad(f"{where} must be a string or an array of content parts", where)
    return [_part(part, f"{where}[{j}]") for j, part in enumerate(parts)]


def _part(part: Any, where: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": _string(part, "text", where)}
    if kind == "refusal":
        return {"type": "refusal", "refusal": _string(part, "refusal", where)}
    if kind == "input_image":
        image: dict[str, Any] = {"url": _string(part, "image_url", where)}
        if part.get("detail") is not None:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    raise _bad(
        f"{where} must be an input_text, output_text, input_image (with image_url) or refusal part",
        f"{where}.type",
    )


def _add_function_call(messages: list[dict[str, Any]], item: dict[str, Any], where: str) -> None:
    call = {
        "id": _string(item, "call_id", where),
        "type": "function",
        "function": {
            "name": _string(item, "name", where),
            "arguments": _string(item, "arguments", where),
        },
    }
    # Calls that follow an assistant message or one another are one chat turn.
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _string(item: dict[str, Any], name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise _bad(f"{where}.{name} must be a string", f"{where}.{name}")
    return value


# -- tools, text, reasoning -------------------------------------------------------


def _tool_params(tools: Any, choice: Any) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("'tools' must be an array", "tools")
        params["tools"] = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    if choice is not None:
        params["tool_choice"] = _tool_choice(choice)
    return params


def _tool(tool: Any, where: str) -> dict[str, Any]:
    kind = tool.get("type") if isinstance(tool, dict) else None
    if kind != "function":
        raise _bad(
            f"{where}: tool type {kind!r} is not served by this gateway (only function tools)",
            f"{where}.type",
        )
    function = {"name": tool.get("name")}
    for name in ("description", "parameters", "strict"):
        if tool.get(name) is not None:
            function[name] = tool[name]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": _string(choice, "name", "tool_choice")}}
    raise _bad(
        '\'tool_choice\' must be auto, none, required or {"type": "function", "name"}',
        "tool_choice",
    )


def _text_params(text: Any) -> dict[str, Any]:
    if text is None:
        return {}
    if not isinstance(text, dict):
        raise _bad("'text' must be an object", "text")
    if text.get("verbosity") not in (None, "low", "medium", "high"):
        raise _bad("text.verbosity must be low, medium or high", "text.verbosity")
    form = text.get("format")
    kind = form.get("type") if isinstance(form, dict) else None
    if form is None or kind == "text":
        return {}
    if kind == "json_object":
        return {"response_format": {"type": "json_object"}}
    if kind != "json_schema":
        raise _bad("text.format.type must be text, json_object or json_schema", "text.format.type")
    schema = {"name": _string(form, "name", "text.format"), "schema": form.get("schema")}
    if not isinstance(schema["schema"], dict):
        raise _bad("text.format.schema must be an object", "text.format.schema")
    for name in ("description", "strict"):
        if form.get(name) is not None:
            schema[name] = form[name]
    return {"response_format": {"type": "json_schema", "json_schema": schema}}


def _reasoning_params(reasoning: Any) -> dict[str, Any]:
    if reasoning is None:
        return {}
    if not isinstance(reasoning, dict):
        raise _bad("'reasoning' must be an object", "reasoning")
    effort = reasoning.get("effort")
    if effort is None:
        return {}
    if effort not in _EFFORTS:
        raise _bad(f"reasoning.effort must be one of {sorted(_EFFORTS)}", "reasoning.effort")
    return {"reasoning_effort": effort}


# -- what the Response echoes ------------------------------------------------------


def _check_echoed(data: dict[str, Any]) -> None:
    if data.get("store") is not None and not isinstance(data["store"], bool):
        raise _bad("'store' must be a boolean", "store")
    include = data.get("include")
    if include is not None and not (
        isinstance(include, list) and all(isinstance(name, str) for name in include)
    ):
        raise _bad("'include' must be an array of strings", "include")
    if data.get("truncation") not in (None, "auto", "disabled"):
        raise _bad("'truncation' must be auto or disabled", "truncation")
    for name in ("service_tier", "prompt_cache_key", "safety_identifier"):
        value = data.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > 256):
            raise _bad(f"'{name}' must be a string of at most 256 characters", name)


def _echo(data: dict[str, Any]) -> dict[str, Any]:
    """The request as a Response object shows it, with OpenAI's defaults."""
    given = {name: data.get(name) for name in _ECHO_DEFAULTS}
    echo = {
        name: default if given[name] is None else given[name]
        for name, default in _ECHO_DEFAULTS.items()
    }
    echo["tools"] = [_echo_tool(tool) for tool in data.get("tools") or ()]
    text = dict(data.get("text") or {})
    echo["text"] = {**text, "format": text.get("format") or {"type": "text"}}
    echo["reasoning"] = {"effort": None, "summary": None, **(data.get("reasoning") or {})}
    echo["metadata"] = dict(data.get("metadata") or {})
    return echo


_ECHO_DEFAULTS: dict[str, Any] = {
    "model": None,
    "instructions": None,
    "tool_choice": "auto",
    "temperature": None,
    "top_p": None,
    "max_output_tokens": None,
    "parallel_tool_calls": True,
    "background": False,
    "store": True,
    "user": None,
    "truncation": "disabled",
    "service_tier": None,
    "prompt_cache_key": None,
    "safety_identifier": None,
}


def _echo_tool(tool: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "name": tool["name"],
        "description": tool.get("description"),
        "parameters": tool.get("parameters"),
        "strict": tool.get("strict"),
    }

"""A stored request and response as the turns of a conversation, in plain text.

Every inbound protocol is stored as chat messages (the Responses and Messages
APIs are translated to chat before they are routed), so one reading serves
them all: ``system``/``developer``, ``user``, ``assistant`` (text and tool
calls), ``tool`` (a tool's result, with the call it answers). Images, audio
and files are named, not shown. A turn is ``(role, heading, text)``: the role
a CSS class (one of ``ROLES``), the heading and text unescaped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

ROLES = frozenset(("system", "developer", "user", "assistant", "tool", "function"))
Turn = tuple[str, str, str]


def conversation(messages: list[Any]) -> Iterator[Turn]:
    """The request's messages, in order."""
    for message in messages:
        if not isinstance(message, dict):
            yield "other", "?", pretty(message)
            continue
        role = str(message.get("role", "?"))
        yield from _message_turns(role, message)


def _message_turns(role: str, message: dict[str, Any]) -> Iterator[Turn]:
    kind = role if role in ROLES else "other"
    heading = role
    if message.get("name"):
        heading += f" ({message['name']})"
    if role in ("tool", "function"):
        heading = f"tool result for {message.get('tool_call_id') or message.get('name') or '?'}"
    text = content_text(message.get("content"))
    calls = message.get("tool_calls")
    if text or not calls:
        yield kind, heading, text
    for call in calls if isinstance(calls, list) else ():
        yield "tool-call", *tool_call(call)


def response_turns(text: str, tool_calls: list[Any], finish_reason: str) -> Iterator[Turn]:
    """The answer: the assistant's text, its tool calls, and why it stopped."""
    if text or not tool_calls:
        yield "assistant", "assistant", text
    for call in tool_calls or ():
        yield "tool-call", *tool_call(call)
    yield "finish", "finish reason", finish_reason or "-"


def tool_call(call: Any) -> tuple[str, str]:
    """A call's heading (``tool call NAME (id)``) and its arguments (pretty JSON if they parse)."""
    if not isinstance(call, dict):
        return "tool call", pretty(call)
    function: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else {}
    name = function.get("name") or call.get("name") or "?"
    heading = f"tool call {name}" + (f" ({call['id']})" if call.get("id") else "")
    arguments = function.get("arguments", call.get("arguments", ""))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return heading, arguments  # as the model sent it, even if not JSON
    return heading, pretty(arguments)


def content_text(content: Any) -> str:
    """A message's content: a string, or its parts (text as text, media named)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_part(p) for p in content)
    return pretty(content)


def _part(part: Any) -> str:
    if not isinstance(part, dict):
        return pretty(part)
    kind = part.get("type")
    if isinstance(part.get("text"), str):
        return str(part["text"])
    if kind == "refusal":
        return f"[refusal] {part.get('refusal', '')}"
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url", "") if isinstance(image, dict) else str(image or "")
        return f"[image: {_source(url)}]"
    if kind == "input_audio":
        return "[audio]"
    if kind == "file":
        return "[file]"
    return pretty(part)


def _source(url: str) -> str:
    """An image's source, without its data: a data URL is named by its type and size."""
    if url.startswith("data:"):
        media = url[5:].split(";", 1)[0] or "data"
        return f"{media}, {len(url)} characters inline"
    return url[:200]


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)

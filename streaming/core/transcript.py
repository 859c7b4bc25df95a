"""What the model said, accumulated from chunk bodies for the audit record
and for non-streaming responses."""

from __future__ import annotations

from typing import Any

import orjson

from audit.records import AuditEntry
from streaming.core.events import FINISH, TEXT, TOOL_CALL, USAGE
from streaming.routing.continuation import TextPieces


class Transcript:
    """Folds OpenAI chunk bodies into text, tool calls, finish reason, usage."""

    __slots__ = ("finish_reason", "parts", "tool_calls", "usage")

    def __init__(self) -> None:
        self.parts = TextPieces()
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] = {}

    def add(self, body: dict[str, Any]) -> None:
        if body.get("usage"):
            self.usage = body["usage"]
        for choice in body.get("choices") or ():
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                self.parts.append(content)
            for call in delta.get("tool_calls") or ():
                self._add_tool_call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def add_event(self, kind: int, payload: bytes) -> None:
        """Fold one neutral log event (``streaming.core.events``) in, as ``add`` a chunk."""
        if kind == TEXT:
            self.parts.append(orjson.loads(payload))
        elif kind == TOOL_CALL:
            call = orjson.loads(payload)
            function = {k: call[k] for k in ("name", "arguments") if k in call}
            self._add_tool_call(
                {"index": call.get("index", 0), "id": call.get("id"), "function": function}
            )
        elif kind == FINISH:
            self.finish_reason = orjson.loads(payload)
        elif kind == USAGE:
            self.usage = orjson.loads(payload)

    def _add_tool_call(self, fragment: dict[str, Any]) -> None:
        index = fragment.get("index", 0)
        call = self.tool_calls.setdefault(
            index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if fragment.get("id"):
            call["id"] = fragment["id"]
        function = fragment.get("function") or {}
        if function.get("name"):
            call["function"]["name"] += function["name"]
        if function.get("arguments"):
            call["function"]["arguments"] += function["arguments"]

    @property
    def text(self) -> str:
        return self.parts.text()

    def message(self) -> dict[str, Any]:
        """The assistant message of a non-streaming chat.completion."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return message

    def fill(self, entry: AuditEntry) -> None:
        entry.response_text = self.text
        entry.tool_calls = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        entry.finish_reason = self.finish_reason or ""
        entry.usage = self.usage

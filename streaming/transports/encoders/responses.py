"""OpenAI Responses API: a stream's events as Responses streaming events over SSE.

A Responses stream numbers its own events (``sequence_number``), and one log
entry may be several of them (the first text opens an output item and its
content part before its delta). So a reader always feeds the whole log from
its first entry, and ``after`` (the client's ``starting_after``) drops the
events the client already has: the output is a pure function of the log, the
same bytes on every replay on any instance. Item ids derive from the response
id and the output index; nothing here reads a clock or a random source.

A text, refusal or reasoning delta is spliced into a preformatted frame (the
payload is a JSON string already); the pieces are kept as they came and
joined once, for the done events and the Response object.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from streaming.core.events import (
    END,
    ERROR,
    FINISH,
    REASONING,
    REFUSAL,
    START,
    TEXT,
    TOOL_CALL,
    USAGE,
    Entry,
    Failure,
)
from streaming.transports.encoders.chat import SSE_KEEPALIVE

# The content part each delta kind writes, and the item that holds it.
_PART_KIND = {TEXT: "output_text", REFUSAL: "refusal", REASONING: "reasoning_text"}
_DELTA_EVENT = {
    "output_text": "response.output_text.delta",
    "refusal": "response.refusal.delta",
    "reasoning_text": "response.reasoning_text.delta",
}
_DONE_EVENT = {  # and the field that holds the whole text
    "output_text": ("response.output_text.done", "text"),
    "refusal": ("response.refusal.done", "refusal"),
    "reasoning_text": ("response.reasoning_text.done", "text"),
}
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


class _Part:
    """One content part: its delta frame around the payload, and its pieces so far."""

    __slots__ = ("entry_kind", "event", "head", "index", "kind", "pieces", "tail")

    def __init__(self, entry_kind: int, item_id: str, output_index: int, index: int) -> None:
        self.entry_kind = entry_kind
        self.kind = _PART_KIND[entry_kind]
        self.index = index
        self.pieces: list[bytes] = []
        name = _DELTA_EVENT[self.kind].encode()
        self.event = b'event: %s\ndata: {"type":"%s","sequence_number":' % (name, name)
        self.head = b',"item_id":%s,"output_index":%d,"content_index":%d,"delta":' % (
            orjson.dumps(item_id),
            output_index,
            index,
        )
        self.tail = b',"logprobs":[]}\n\n' if self.kind == "output_text" else b"}\n\n"

    def text(self) -> str:
        # Each piece is a whole JSON string: their insides join into one.
        text: str = orjson.loads(b'"%s"' % b"".join([piece[1:-1] for piece in self.pieces]))
        return text

    def body(self, text: str | None = None) -> dict[str, Any]:
        text = self.text() if text is None else text
        if self.kind == "refusal":
            return {"type": "refusal", "refusal": text}
        if self.kind == "reasoning_text":
            return {"type": "reasoning_text", "text": text}
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class _ContentItem:
    """A message (output text, refusals) or a reasoning item (reasoning text)."""

    __slots__ = ("id", "index", "parts", "status", "type")

    def __init__(self, item_type: str, item_id: str, index: int) -> None:
        self.type, self.id, self.index = item_type, item_id, index
        self.parts: list[_Part] = []
        self.status = "in_progress"

    def body(self) -> dict[str, Any]:
        content = [part.body() for part in self.parts]
        if self.type == "reasoning":
            return {
                "id": self.id,
                "type": "reasoning",
                "status": self.status,
                "summary": [],
                "content": content,
            }
        return {
            "id": self.id,
            "type": "message",
            "status": self.status,
            "role": "assistant",
            "content": content,
        }


class _Call:
    """A function call item, assembled from chat tool call fragments of one index."""

    __slots__ = ("arguments", "call_id", "id", "index", "name", "status")

    def __init__(self, item_id: str, index: int, fragment: dict[str, Any]) -> None:
        self.id, self.index = item_id, index
        # A client knows a call by its call_id from the first event on: one the
        # upstream did not send at once is made up, and kept.
        self.call_id: str = fragment.get("id") or "call" + item_id[2:]
        self.name: str = fragment.get("name", "")
        self.arguments: list[str] = []
        self.status = "in_progress"

    def body(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function_call",
            "status": self.status,
            "call_id": self.call_id,
            "name": self.name,
            "arguments": "".join(self.arguments),
        }


class ResponsesEncoder:
    """One reader's Responses SSE renderer, and the Response object so far (``snapshot``).

    Feed it every entry of the log from the first, in order, in batches of
    any size; it writes the events numbered above ``after``.
    """

    __slots__ = (
        "_after",
        "_calls",
        "_closing",
        "_content",
        "_created",
        "_echo",
        "_ended",
        "_error",
        "_id",
        "_incomplete",
        "_items",
        "_model",
        "_part",
        "_seq",
        "_started",
        "_status",
        "_suffix",
        "_usage",
    )

    def __init__(
        self, response_id: str, created: int, echo: dict[str, Any], *, after: int = -1
    ) -> None:
        self._id, self._created, self._echo, self._after = response_id, created, echo, after
        self._suffix = response_id.partition("_")[2] or response_id
        self._model: Any = echo.get("model")
        self._seq = 0  # the next event's sequence_number
        self._started = self._ended = False
        self._status = "in_progress"
        self._closing = "completed"  # the status items get when they close
        self._items: list[_ContentItem | _Call] = []
        self._content: _ContentItem | None = None
        self._part: _Part | None = None
        self._calls: dict[int, _Call] = {}
        self._usage: dict[str, Any] | None = None
        self._error: dict[str, Any] | None = None
        self._incomplete: dict[str, Any] | None = None

    # -- the Encoder surface -------------------------------------------------------

    @property
    def after(self) -> int:
        """The client's cursor in this protocol's numbering (-1: from the start)."""
        return self._after

    def encode(self, batch: Sequence[Entry]) -> bytes:
        out = bytearray()
        for _seq, kind, payload in batch:
            part = self._part
            if part is not None and part.entry_kind == kind:  # a token: the hot path
                self._delta(out, part, payload)
            elif not self._ended:
                self._entry(out, kind, payload)
        return bytes(out)

    def keepalive(self) -> bytes:
        return SSE_KEEPALIVE

    def farewell(self, failure: Failure) -> bytes:
        """An ``error`` event without an SSE id, numbered as the last event the
        client has: one resuming after it misses nothing."""
        event = {
            "type": "error",
            "sequence_number": max(self._after, self._seq - 1),
            "code": failure.code,
            "message": failure.message,
            "param": failure.param,
        }
        return b"event: error\ndata: %s\n\n" % orjson.dumps(event)

    def snapshot(self) -> dict[str, Any]:
        """The Response object as of the events seen (the body of a non-streamed
        response once END is fed, and of ``GET /v1/responses/{id}``)."""
        return {
            "id": self._id,
            "object": "response",
            "created_at": self._created,
            "status": self._status,
            **self._echo,
            "model": self._model,
            "output": [item.body() for item in self._items],
            "usage": self._usage,
            "error": self._error,
            "incomplete_details": self._incomplete,
        }

    # -- entries -------------------------------------------------------------------

    def _entry(self, out: bytearray, kind: int, payload: bytes) -> None:
        if not self._started:
            self._begin(out, kind, payload)
        if kind in _PART_KIND:
            self._piece(out, kind, payload)
        elif kind == TOOL_CALL:
            self._tool_call(out, orjson.loads(payload))
        elif kind == FINISH:
            reason = _INCOMPLETE.get(orjson.loads(payload))
            if reason:
                self._incomplete = {"reason": reason}
                self._closing = "incomplete"
            self._close(out)
        elif kind == USAGE:
            self._usage = responses_usage(orjson.loads(payload))
        elif kind == ERROR:
            self._fail(out, Failure.from_payload(payload))
        elif kind == END:
            self._close(out)
            self._status = "incomplete" if self._incomplete else "completed"
            self._emit(out, f"response.{self._status}", {"response": self.snapshot()})
            self._ended = True
        # A later START (a continuation) and LOGPROBS write nothing.

    def _begin(self, out: bytearray, kind: int, payload: bytes) -> None:
        self._started = True
        if kind == START:
            self._model = orjson.loads(payload)["model"]
        self._emit(out, "response.created", {"response": self.snapshot()})
        self._emit(out, "response.in_progress", {"response": self.snapshot()})

    def _fail(self, out: bytearray, failure: Failure) -> None:
        self._closing = "incomplete"
        self._close(out)
        if failure.code == "cancelled":
            self._status = "cancelled"
        else:
            self._status = "failed"
            self._error = {"code": _error_code(failure), "message": failure.message}
        self._emit(out, "response.failed", {"response": self.snapshot()})
        self._ended = True

    def _emit(self, out: bytearray, event_type: str, body: dict[str, Any]) -> None:
        n = self._seq
        self._seq = n + 1
        if n > self._after:
            event = orjson.dumps({"type": event_type, "sequence_number": n, **body})
            out += b"id: %d\nevent: %s\ndata: %s\n\n" % (n, event_type.encode(), event)

    def _item_id(self, prefix: str) -> str:
        return f"{prefix}_{self._suffix}_{len(self._items)}"

    # -- text, refusals and reasoning ----------------------------------------------

    def _piece(self, out: bytearray, kind: int, payload: bytes) -> None:
        item_type = "reasoning" if kind == REASONING else "message"
        content = self._content
        if content is None or content.type != item_type:
            self._close(out)
            content = self._open_content(out, item_type)
        elif self._part is not None:  # a refusal after text, or text after a refusal
            self._close_part(out)
        part = _Part(kind, content.id, content.index, len(content.parts))
        self._emit(out, "response.content_part.added", self._at(part, part=part.body("")))
        content.parts.append(part)
        self._part = part
        self._delta(out, part, payload)

    def _delta(self, out: bytearray, part: _Part, payload: bytes) -> None:
        part.pieces.append(payload)
        n = self._seq
        self._seq = n + 1
        if n > self._after:
            out += b"id: %d\n%s%d%s%s%s" % (n, part.event, n, part.head, payload, part.tail)

    def _open_content(self, out: bytearray, item_type: str) -> _ContentItem:
        prefix = "rs" if item_type == "reasoning" else "msg"
        content = _ContentItem(item_type, self._item_id(prefix), len(self._items))
        self._items.append(content)
        self._content = content
        self._emit(out, "response.output_item.added", self._item_event(content))
        return content

    def _close_part(self, out: bytearray) -> None:
        part = self._part
        assert part is not None
        self._part = None
        text = part.text()
        done_event, field = _DONE_EVENT[part.kind]
        done = self._at(part, **{field: text})
        if part.kind == "output_text":
            done["logprobs"] = []
        self._emit(out, done_event, done)
        self._emit(out, "response.content_part.done", self._at(part, part=part.body(text)))

    def _at(self, part: _Part, /, **fields: Any) -> dict[str, Any]:
        content = self._content
        assert content is not None
        return {
            "item_id": content.id,
            "output_index": content.index,
            "content_index": part.index,
            **fields,
        }

    # -- function calls ----------------------------------------------------------------

    def _tool_call(self, out: bytearray, fragment: dict[str, Any]) -> None:
        self._close_content(out)
        call = self._calls.get(fragment["index"])
        if call is None:
            call = _Call(self._item_id("fc"), len(self._items), fragment)
            self._items.append(call)
            self._calls[fragment["index"]] = call
            self._emit(out, "response.output_item.added", self._item_event(call))
        else:  # a later fragment may bring the name the first one lacked
            call.name = call.name or fragment.get("name", "")
        arguments = fragment.get("arguments")
        if arguments:
            call.arguments.append(arguments)
            delta = {"item_id": call.id, "output_index": call.index, "delta": arguments}
            self._emit(out, "response.function_call_arguments.delta", delta)

    # -- closing -------------------------------------------------------------------------

    def _close(self, out: bytearray) -> None:
        self._close_content(out)
        calls, self._calls = self._calls, {}
        for call in calls.values():
            done = {"item_id": call.id, "output_index": call.index}
            done["arguments"] = "".join(call.arguments)
            self._emit(out, "response.function_call_arguments.done", done)
            call.status = self._closing
            self._emit(out, "response.output_item.done", self._item_event(call))

    def _close_content(self, out: bytearray) -> None:
        content = self._content
        if content is None:
            return
        if self._part is not None:
            self._close_part(out)
        content.status = self._closing
        self._emit(out, "response.output_item.done", self._item_event(content))
        self._content = None

    @staticmethod
    def _item_event(item: _ContentItem | _Call) -> dict[str, Any]:
        return {"output_index": item.index, "item": item.body()}


def responses_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """Chat usage (prompt/completion tokens and their details) in the Responses shape."""
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": prompt_details.get("cached_tokens") or 0,
            "cache_write_tokens": prompt_details.get("cache_write_tokens") or 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": completion_details.get("reasoning_tokens") or 0,
        },
        "total_tokens": usage.get("total_tokens") or prompt + completion,
    }


def _error_code(failure: Failure) -> str:
    """The Responses error code (a closed list) nearest the failure."""
    if failure.status == 429:
        return "rate_limit_exceeded"
    if failure.status in (400, 413, 422):
        return "invalid_prompt"
    return "server_error"

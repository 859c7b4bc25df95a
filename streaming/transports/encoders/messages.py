"""Anthropic's Messages API out: a stream's events as the Messages event stream.

``MessagesEncoder`` renders the log as the server-sent events of ``POST
/v1/messages`` with ``stream: true`` and, when asked, keeps the Message
object a non-streaming response returns. Anthropic's events are not the
log's one for one (a text delta may first open a block; the end closes one
and adds two), so the encoder numbers its own events from 0 and is fed the
whole log from its first entry on every read: ``after`` (the client's last
event id) drops what the client already has. Its output is a function of the
log alone, so a replay on any instance gives the same bytes.

A text delta's payload is a JSON string already: it is spliced into a
template made when its block opened, not re-encoded.
"""

from __future__ import annotations

import hashlib
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

PING = b'{"type": "ping"}'
KEEPALIVE = b"event: ping\ndata: " + PING + b"\n\n"

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

# Anthropic's error types by status (its errors page); 503 is the gateway
# having no healthy target, which Anthropic calls being overloaded.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}

# Block kinds, and the delta each carries: (delta type, its field).
TEXT_BLOCK = "text"
THINKING_BLOCK = "thinking"
TOOL_BLOCK = "tool_use"
_DELTAS = {
    TEXT_BLOCK: (b"text_delta", b"text"),
    THINKING_BLOCK: (b"thinking_delta", b"thinking"),
    TOOL_BLOCK: (b"input_json_delta", b"partial_json"),
}


def anthropic_error_type(status: int) -> str:
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def anthropic_error(failure: Failure) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message"}}``, as Anthropic writes an error."""
    return {
        "type": "error",
        "error": {"type": anthropic_error_type(failure.status), "message": failure.message},
    }


class MessagesEncoder:
    """One reader's rendering of a stream as Messages API events (an ``Encoder[bytes]``).

    ``echo`` is ``MessagesRequest.echo``: the model asked for (named until a
    ``START`` says which answers) and whether the client asked for thinking
    (reasoning is dropped otherwise). A refusal is text: Anthropic has no
    refusal block, and ``stop_reason: "refusal"`` comes with the finish.

    With ``collect`` the encoder also keeps the content for ``snapshot()``
    (the non-streaming response body); a streaming reader leaves it off and
    keeps nothing but a few counters.
    """

    __slots__ = (
        "_after",
        "_block",
        "_call",
        "_collected",
        "_delta_head",
        "_ended",
        "_id",
        "_model",
        "_next",
        "_open",
        "_reason",
        "_thinking",
        "_usage",
        "failure",
    )

    def __init__(
        self, message_id: str, echo: dict[str, Any], *, after: int = -1, collect: bool = False
    ) -> None:
        self._id = message_id
        self._model: str = echo.get("model") or ""
        self._thinking = bool(echo.get("thinking"))
        self._after = after
        self._next = 0  # the number of the next event
        self._block = -1  # the index of the last block opened
        self._open: str | None = None  # the kind of the open block
        self._call: Any = None  # the chat index of the open tool call
        self._delta_head = b""
        self._reason = "end_turn"
        self._usage: dict[str, int] = {"input_tokens": 0, "output_tokens": 0}
        self._ended = False  # END or ERROR seen: nothing more is rendered
        self.failure: Failure | None = None
        # Each block's start object and the inside of its JSON string so far.
        self._collected: list[tuple[dict[str, Any], bytearray]] | None = [] if collect else None

    # -- the Encoder protocol -----------------------------------------------------

    @property
    def after(self) -> int:
        """The client's cursor in this protocol's numbering (-1: from the start)."""
        return self._after

    def encode(self, batch: Sequence[Entry]) -> bytes:
        if len(batch) == 1:  # the usual case: no buffer
            return self.event(*batch[0])
        out = bytearray()
        for entry in batch:
            out += self.event(*entry)
        return bytes(out)

    def keepalive(self) -> bytes:
        return KEEPALIVE

    def farewell(self, failure: Failure) -> bytes:
        """An error event, unnumbered: a reader cut short resumes from the last numbered one."""
        return b"event: error\ndata: %s\n\n" % orjson.dumps(anthropic_error(failure))

    # -- one log entry ------------------------------------------------------------

    def event(self, seq: int, kind: int, payload: bytes) -> bytes:
        """The events (zero or more) one log entry adds."""
        block = _BLOCK_OF.get(kind)
        if block is not None and block == self._open:
            return self._delta(payload)  # the hot path: a token in the open block
        if self._ended:
            return b""
        out = bytearray()
        if self._next == 0:
            self._message_start(kind, payload, out)
        if block is not None and (kind != REASONING or self._thinking):
            self._start_block(block, {}, out)
            out += self._delta(payload)
        elif kind == TOOL_CALL:
            self._tool_call(orjson.loads(payload), out)
        elif kind == FINISH:
            self._stop_block(out)
            self._reason = STOP_REASONS.get(orjson.loads(payload), "end_turn")
        elif kind == USAGE:
            self._usage = _usage(orjson.loads(payload))
        elif kind == END:
            self._message_stop(out)
        elif kind == ERROR:
            self._stop_block(out)
            self.failure = Failure.from_payload(payload)
            self._emit(out, b"error", orjson.dumps(anthropic_error(self.failure)))
            self._ended = True
        # START after the first (a continuation) and LOGPROBS add nothing.
        return bytes(out)

    def _emit(self, out: bytearray, name: bytes, data: bytes) -> None:
        number = self._next
        self._next = number + 1
        if number > self._after:
            out += b"id: %d\nevent: %s\ndata: %s\n\n" % (number, name, data)

    def _delta(self, payload: bytes) -> bytes:
        if self._collected is not None:
            self._collected[-1][1].extend(memoryview(payload)[1:-1])
        number = self._next
        self._next = number + 1
        if number > self._after:
            return b"id: %d\n%s%s}}\n\n" % (number, self._delta_head, payload)
        return b""

    def _message_start(self, kind: int, payload: bytes, out: bytearray) -> None:
        if kind == START:
            self._model = orjson.loads(payload).get("model") or self._model
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self._model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        self._emit(
            out, b"message_start", orjson.dumps({"type": "message_start", "message": message})
        )
        self._emit(out, b"ping", PING)

    def _message_stop(self, out: bytearray) -> None:
        self._stop_block(out)
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": self._reason, "stop_sequence": None},
            "usage": self._usage,
        }
        self._emit(out, b"message_delta", orjson.dumps(delta))
        self._emit(out, b"message_stop", b'{"type":"message_stop"}')
        self._ended = True

    # -- content blocks -----------------------------------------------------------

    def _start_block(self, block: str, fields: dict[str, Any], out: bytearray) -> None:
        self._stop_block(out)
        self._block += 1
        self._open = block
        start = {"type": block, **fields, **_EMPTY[block]}
        data = {"type": "content_block_start", "index": self._block, "content_block": start}
        self._emit(out, b"content_block_start", orjson.dumps(data))
        delta_type, field = _DELTAS[block]
        self._delta_head = (
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
            b'"delta":{"type":"%s","%s":' % (self._block, delta_type, field)
        )
        if self._collected is not None:
            self._collected.append((start, bytearray()))

    def _stop_block(self, out: bytearray) -> None:
        if self._open is not None:
            self._open = self._call = None
            stop = b'{"type":"content_block_stop","index":%d}' % self._block
            self._emit(out, b"content_block_stop", stop)

    def _tool_call(self, call: dict[str, Any], out: bytearray) -> None:
        """A fragment of a chat tool call: a new chat index is a new tool_use block."""
        index = call.get("index", 0)
        if self._open != TOOL_BLOCK or index != self._call:
            call_id, name = call.get("id"), call.get("name")
            fields = {
                "id": call_id if isinstance(call_id, str) and call_id else self._tool_id(),
                "name": name if isinstance(name, str) else "",
            }
            self._start_block(TOOL_BLOCK, fields, out)
            self._call = index
        arguments = call.get("arguments")
        if isinstance(arguments, str) and arguments:
            out += self._delta(orjson.dumps(arguments))

    def _tool_id(self) -> str:
        """An id for a call the upstream sent none for: the same on every replay."""
        digest = hashlib.blake2b(f"{self._id}:{self._block + 1}".encode(), digest_size=12)
        return f"toolu_{digest.hexdigest()}"

    # -- the Message object -------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The Message as a client accumulating the events so far would hold it."""
        if self._collected is None:
            raise RuntimeError("snapshot() needs an encoder made with collect=True")
        ended = self._ended and self.failure is None
        return {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "content": [_finished(start, inside) for start, inside in self._collected],
            "model": self._model,
            "stop_reason": self._reason if ended else None,
            "stop_sequence": None,
            "usage": dict(self._usage) if ended else {"input_tokens": 0, "output_tokens": 0},
        }


_BLOCK_OF = {TEXT: TEXT_BLOCK, REFUSAL: TEXT_BLOCK, REASONING: THINKING_BLOCK}
_EMPTY: dict[str, dict[str, Any]] = {
    TEXT_BLOCK: {"text": ""},
    THINKING_BLOCK: {"thinking": "", "signature": ""},
    TOOL_BLOCK: {"input": {}},
}


def _finished(start: dict[str, Any], inside: bytearray) -> dict[str, Any]:
    joined: str = orjson.loads(b'"%s"' % inside)
    block = dict(start)
    if start["type"] == TOOL_BLOCK:
        block["input"] = _json_object(joined)
    else:
        block[start["type"]] = joined
    return block


def _json_object(arguments: str) -> dict[str, Any]:
    """A call's input; {} when the upstream's JSON is cut short or not an object."""
    try:
        value = orjson.loads(arguments) if arguments else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _usage(usage: dict[str, Any]) -> dict[str, int]:
    """Chat usage in Anthropic's terms: its input_tokens leave out cache reads."""
    details = usage.get("prompt_tokens_details") or {}
    cached = _count(details.get("cached_tokens") if isinstance(details, dict) else None)
    counted = {
        "input_tokens": max(_count(usage.get("prompt_tokens")) - cached, 0),
        "output_tokens": _count(usage.get("completion_tokens")),
    }
    if cached:
        counted["cache_read_input_tokens"] = cached
    return counted


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0

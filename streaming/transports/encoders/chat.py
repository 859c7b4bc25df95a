"""OpenAI chat completions: events as ``chat.completion.chunk`` objects.

``ChatChunks`` renders one event as the chunk JSON an OpenAI client expects;
the framings around it (``ChatSSE``, ``ChatEventSource``, ``ChatNDJSON``,
``ChatWebSocket``) write whole batches. Event payloads are JSON already, so a
text delta is spliced into its chunk, not re-encoded. A batch of thousands of
events is written into one growing buffer, not collected as pieces to join:
the pieces took more memory than the result (see streaming.core.log.LogBatch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from streaming.core.events import (
    END,
    ERROR,
    FINISH,
    LOGPROBS,
    REASONING,
    REFUSAL,
    START,
    TEXT,
    TOOL_CALL,
    USAGE,
    Entry,
    Failure,
)

SSE_KEEPALIVE = b": keep-alive\n\n"


class ChatChunks:
    """One reader's chunk renderer: the stream's id and creation time, and the
    model answering (which a ``START`` event changes after a continuation)."""

    __slots__ = ("_head", "_prefix")

    def __init__(self, stream_id: str, created: int, model: str) -> None:
        self._head = b'{"id":%s,"object":"chat.completion.chunk","created":%d,"model":' % (
            orjson.dumps(stream_id),
            created,
        )
        self._prefix = self._head + orjson.dumps(model) + b","

    def chunk(self, kind: int, payload: bytes) -> bytes:
        """The chunk for one event (not ERROR or END)."""
        if kind == TEXT:
            return self._delta(b'{"content":%s}' % payload)
        if kind == START:
            start = orjson.loads(payload)
            self._prefix = self._head + orjson.dumps(start["model"]) + b","
            # A continuation goes on in the same message: no second role.
            return self._delta(b"{}" if start.get("continued") else _ROLE)
        if kind == REASONING:
            return self._delta(b'{"reasoning_content":%s}' % payload)
        if kind == TOOL_CALL:
            return self._delta(b'{"tool_calls":[%s]}' % orjson.dumps(_tool_call(payload)))
        if kind == FINISH:
            choice = b'{"index":0,"delta":{},"finish_reason":%s}' % payload
            return self._prefix + b'"choices":[%s]}' % choice
        if kind == USAGE:
            return self._prefix + b'"choices":[],"usage":%s}' % payload
        if kind == REFUSAL:
            return self._delta(b'{"refusal":%s}' % payload)
        if kind == LOGPROBS:
            choice = b'{"index":0,"delta":{},"logprobs":%s,"finish_reason":null}' % payload
            return self._prefix + b'"choices":[%s]}' % choice
        raise ValueError(f"no chunk for an event of kind {kind}")

    def _delta(self, delta: bytes) -> bytes:
        return self._prefix + b'"choices":[{"index":0,"delta":%s,"finish_reason":null}]}' % delta


_ROLE = b'{"role":"assistant","content":""}'


def _tool_call(payload: bytes) -> dict[str, Any]:
    call = orjson.loads(payload)
    fragment: dict[str, Any] = {"index": call["index"]}
    if "id" in call:
        fragment["id"] = call["id"]
        fragment["type"] = "function"
    function = {name: call[name] for name in ("name", "arguments") if name in call}
    if function:
        fragment["function"] = function
    return fragment


def error_json(failure: Failure) -> bytes:
    return orjson.dumps(failure.openai_error())


class _ChatFraming:
    """Writes every event of a batch through ``event``, end to end."""

    __slots__ = ("chunks",)

    def __init__(self, chunks: ChatChunks) -> None:
        self.chunks = chunks

    def event(self, seq: int, kind: int, payload: bytes) -> bytes:
        raise NotImplementedError

    def encode(self, batch: Sequence[Entry]) -> bytes:
        if len(batch) == 1:  # the usual case: no buffer
            return self.event(*batch[0])
        out = bytearray()
        for entry in batch:
            out += self.event(*entry)
        return bytes(out)

    def keepalive(self) -> bytes:
        return b""


class ChatSSE(_ChatFraming):
    """Server-Sent Events exactly as OpenAI sends them, plus ``id:`` for resume.

    ``retry:`` rides on the first event: a block with no data of its own trips
    up some clients (the OpenAI SDK).
    """

    __slots__ = ("_preamble",)
    DONE = b"data: [DONE]\n\n"

    def __init__(self, chunks: ChatChunks, *, retry_ms: int) -> None:
        super().__init__(chunks)
        self._preamble = b"retry: %d\n" % retry_ms

    def encode(self, batch: Sequence[Entry]) -> bytes:
        data = super().encode(batch)
        if self._preamble:
            data, self._preamble = self._preamble + data, b""
        return data

    def event(self, seq: int, kind: int, payload: bytes) -> bytes:
        if kind == END:
            return b"id: %d\n%s" % (seq, self.DONE)
        if kind == ERROR:
            return b"id: %d\ndata: %s\n\n" % (seq, error_json(Failure.from_payload(payload)))
        return b"id: %d\ndata: %s\n\n" % (seq, self.chunks.chunk(kind, payload))

    def keepalive(self) -> bytes:
        return SSE_KEEPALIVE

    def farewell(self, failure: Failure) -> bytes:
        """An error in OpenAI's shape, then the end marker; no seq: nothing follows."""
        return b"data: %s\n\n%s" % (error_json(failure), self.DONE)


class ChatEventSource(ChatSSE):
    """``ChatSSE`` for the GET endpoints a browser's ``EventSource`` opens.

    The end is a named ``done`` event: an ``onmessage`` handler that parses
    every message as JSON never sees the ``[DONE]`` sentinel, while parsers
    that look for ``data: [DONE]`` (the OpenAI SDK's) still stop on it.
    """

    __slots__ = ()
    DONE = b"event: done\ndata: [DONE]\n\n"


class ChatNDJSON(_ChatFraming):
    """``{"seq", "chunk"}``, ``{"seq", "error"}`` or ``{"seq", "done"}``, one a line."""

    __slots__ = ()

    def event(self, seq: int, kind: int, payload: bytes) -> bytes:
        if kind == END:
            return b'{"seq":%d,"done":true}\n' % seq
        if kind == ERROR:
            return b'{"seq":%d,%s\n' % (seq, error_json(Failure.from_payload(payload))[1:])
        return b'{"seq":%d,"chunk":%s}\n' % (seq, self.chunks.chunk(kind, payload))

    def farewell(self, failure: Failure) -> bytes:
        return error_json(failure) + b"\n"


class ChatWebSocket:
    """WebSocket text frames: ``chunk``, ``error`` and ``stream.done`` messages."""

    __slots__ = ("_sid", "chunks")

    def __init__(self, chunks: ChatChunks, stream_id: str) -> None:
        self.chunks = chunks
        self._sid = orjson.dumps(stream_id)

    def encode(self, batch: Sequence[Entry]) -> list[bytes]:
        return [self.frame(*entry) for entry in batch]

    def frame(self, seq: int, kind: int, payload: bytes) -> bytes:
        sid = self._sid
        if kind == END:
            return b'{"type":"stream.done","stream_id":%s,"seq":%d}' % (sid, seq)
        if kind == ERROR:
            error = error_json(Failure.from_payload(payload))[1:]
            return b'{"type":"error","stream_id":%s,"seq":%d,%s' % (sid, seq, error)
        chunk = self.chunks.chunk(kind, payload)
        return b'{"type":"chunk","stream_id":%s,"seq":%d,"chunk":%s}' % (sid, seq, chunk)

    def keepalive(self) -> list[bytes]:
        return []

    def farewell(self, failure: Failure) -> list[bytes]:
        return []  # a revoked socket is closed with its own code and reason

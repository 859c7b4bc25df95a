"""Wire encoders: a batch of log entries in, the bytes one transport sends out.

Plain functions with no I/O. Chunk payloads are already JSON, so encoders
splice bytes instead of re-encoding per token. A batch of thousands of events
is written into one growing buffer, not collected as pieces to join: the
pieces took more memory than the result (see streaming.core.log.LogBatch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson

from streaming.core.log import CHUNK, END, ERROR, Entry


def sse_event(seq: int, kind: int, payload: bytes) -> bytes:
    """One event as OpenAI sends it, plus ``id:`` for resume."""
    if kind == END:
        return b"id: %d\ndata: [DONE]\n\n" % seq
    return b"id: %d\ndata: %s\n\n" % (seq, payload)


def sse_batch(entries: Sequence[Entry]) -> bytes:
    """Server-Sent Events, one per entry."""
    return _each(sse_event, entries)


def eventsource_event(seq: int, kind: int, payload: bytes) -> bytes:
    """One event for the GET endpoints a browser's ``EventSource`` opens.

    As ``sse_event``, except that the end is a named ``done`` event: an
    ``onmessage`` handler that parses every message as JSON never sees the
    ``[DONE]`` sentinel, while parsers that look for ``data: [DONE]`` (the
    OpenAI SDK's) still stop on it.
    """
    if kind == END:
        return b"id: %d\nevent: done\ndata: [DONE]\n\n" % seq
    return b"id: %d\ndata: %s\n\n" % (seq, payload)


def eventsource_batch(entries: Sequence[Entry]) -> bytes:
    """Server-Sent Events for ``EventSource`` readers, one per entry."""
    return _each(eventsource_event, entries)


def sse_preamble(retry_ms: int) -> bytes:
    """Prefix for the first event block (not a block of its own)."""
    return b"retry: %d\n" % retry_ms


SSE_KEEPALIVE = b": keep-alive\n\n"


def ndjson_line(seq: int, kind: int, payload: bytes) -> bytes:
    """``{"seq", "chunk"}``, ``{"seq", "error"}`` or ``{"seq", "done"}``, and a newline."""
    if kind == CHUNK:
        return b'{"seq":%d,"chunk":%s}\n' % (seq, payload)
    if kind == ERROR:
        return b'{"seq":%d,%s\n' % (seq, payload[1:])
    return b'{"seq":%d,"done":true}\n' % seq


def ndjson_batch(entries: Sequence[Entry]) -> bytes:
    """One JSON object a line."""
    return _each(ndjson_line, entries)


def _each(encode: Callable[[int, int, bytes], bytes], entries: Sequence[Entry]) -> bytes:
    """``encode`` of every entry, end to end (one entry, the usual case: no buffer)."""
    if len(entries) == 1:
        return encode(*entries[0])
    out = bytearray()
    for entry in entries:
        out += encode(*entry)
    return bytes(out)


def text_batch(entries: Sequence[Entry]) -> bytes:
    """Just the generated text, for ``curl -N`` and humans."""
    out = bytearray()
    for _seq, kind, payload in entries:
        if kind == CHUNK:
            for choice in orjson.loads(payload).get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    out += content.encode()
        elif kind == ERROR:
            message = orjson.loads(payload).get("error", {}).get("message", "error")
            out += b"\n[error: " + message.encode() + b"]\n"
        else:
            out += b"\n"
    return bytes(out)


# Last words of a response whose identity was revoked (accounts.revocation):
# ``body`` is an OpenAI error body. They carry no seq: nothing follows them.
def sse_farewell(body: dict[str, Any]) -> bytes:
    """An ``error`` event in OpenAI's shape, then ``data: [DONE]``."""
    return b"data: " + orjson.dumps(body) + b"\n\ndata: [DONE]\n\n"


def eventsource_farewell(body: dict[str, Any]) -> bytes:
    """``sse_farewell`` for ``EventSource`` readers: the end is the named ``done`` event."""
    return b"data: " + orjson.dumps(body) + b"\n\nevent: done\ndata: [DONE]\n\n"


def ndjson_farewell(body: dict[str, Any]) -> bytes:
    """One ``{"error": {...}}`` line."""
    return orjson.dumps(body) + b"\n"


def text_farewell(body: dict[str, Any]) -> bytes:
    """A last line saying why the text stops, as a stream's own error is written."""
    return b"\n[error: " + str(body["error"]["message"]).encode() + b"]\n"


def ws_messages(stream_id: str, entries: Sequence[Entry]) -> list[str]:
    """WebSocket text frames: ``chunk``, ``error`` and ``stream.done`` messages."""
    sid = orjson.dumps(stream_id).decode()
    out = []
    for seq, kind, payload in entries:
        if kind == CHUNK:
            out.append(
                f'{{"type":"chunk","stream_id":{sid},"seq":{seq},"chunk":{payload.decode()}}}'
            )
        elif kind == ERROR:
            out.append(f'{{"type":"error","stream_id":{sid},"seq":{seq},{payload.decode()[1:]}')
        else:
            out.append(f'{{"type":"stream.done","stream_id":{sid},"seq":{seq}}}')
    return out

"""Wire encoders: a batch of log entries in, the bytes one transport sends out.

Plain functions with no I/O. Chunk payloads are already JSON, so encoders
splice bytes instead of re-encoding per token.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from streaming.log import CHUNK, END, ERROR, Entry


def sse_batch(entries: Sequence[Entry]) -> bytes:
    """Server-Sent Events, as OpenAI sends them, plus ``id:`` for resume."""
    out = []
    for seq, kind, payload in entries:
        if kind == END:
            out.append(b"id: %d\ndata: [DONE]\n\n" % seq)
        else:
            out.append(b"id: %d\ndata: %s\n\n" % (seq, payload))
    return b"".join(out)


def sse_preamble(retry_ms: int) -> bytes:
    """Prefix for the first event block (not a block of its own)."""
    return b"retry: %d\n" % retry_ms


SSE_KEEPALIVE = b": keep-alive\n\n"


def ndjson_batch(entries: Sequence[Entry]) -> bytes:
    """One JSON object a line: ``{"seq", "chunk"}``, ``{"seq", "error"}``, ``{"seq", "done"}``."""
    out = []
    for seq, kind, payload in entries:
        if kind == CHUNK:
            out.append(b'{"seq":%d,"chunk":%s}\n' % (seq, payload))
        elif kind == ERROR:
            out.append(b'{"seq":%d,%s\n' % (seq, payload[1:]))
        else:
            out.append(b'{"seq":%d,"done":true}\n' % seq)
    return b"".join(out)


def text_batch(entries: Sequence[Entry]) -> bytes:
    """Just the generated text, for ``curl -N`` and humans."""
    out = []
    for _seq, kind, payload in entries:
        if kind == CHUNK:
            for choice in orjson.loads(payload).get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    out.append(content.encode())
        elif kind == ERROR:
            message = orjson.loads(payload).get("error", {}).get("message", "error")
            out.append(b"\n[error: " + message.encode() + b"]\n")
        else:
            out.append(b"\n")
    return b"".join(out)


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

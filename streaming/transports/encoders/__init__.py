"""Encoders: a stream's neutral events in, one protocol's bytes out, per reader.

Plain classes with no I/O (``streaming.core.reader.Encoder``). Each inbound
protocol renders events its own way (``chat``: OpenAI chat completion chunks
over SSE, NDJSON and WebSocket frames; ``text``: the bare text). A new inbound
protocol is a new module here with one class per framing it is read over.
"""

from __future__ import annotations

from typing import Any

import orjson

from streaming.core.reader import Encoder, StreamHandle
from streaming.transports.encoders.messages import MessagesEncoder
from streaming.transports.encoders.responses import ResponsesEncoder


def encoder_for(handle: StreamHandle, after: int) -> Encoder[bytes]:
    """The Server-Sent Events encoder of a stream started in a protocol that
    numbers its own events (``handle.inbound.api``), for a reader that had
    every event up to ``after`` (-1: none)."""
    echo: dict[str, Any] = orjson.loads(handle.inbound.echo)
    if handle.inbound.api == "responses":
        return ResponsesEncoder(handle.id, handle.created, echo, after=after)
    if handle.inbound.api == "messages":
        return MessagesEncoder(handle.id, echo, after=after)
    raise ValueError(f"no event encoder for the '{handle.inbound.api}' API")

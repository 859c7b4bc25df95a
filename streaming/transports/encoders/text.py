"""Plain text: just the generated text, for ``curl -N`` and humans."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from streaming.core.events import END, ERROR, TEXT, Entry, Failure


class PlainText:
    """The answer's text as it comes; an error as a last ``[error: ...]`` line."""

    __slots__ = ()

    def encode(self, batch: Sequence[Entry]) -> bytes:
        out = bytearray()
        for _seq, kind, payload in batch:
            if kind == TEXT:
                out += orjson.loads(payload).encode()
            elif kind == ERROR:
                out += self.farewell(Failure.from_payload(payload))
            elif kind == END:
                out += b"\n"
        return bytes(out)

    def keepalive(self) -> bytes:
        return b""

    def farewell(self, failure: Failure) -> bytes:
        return b"\n[error: " + failure.message.encode() + b"]\n"

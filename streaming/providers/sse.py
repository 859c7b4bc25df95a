"""An incremental Server-Sent Events decoder, with no I/O.

Feed it the body bytes as they arrive, split anywhere; it returns the events
completed so far. It follows the WHATWG event-stream rules (``\\r\\n``, ``\\n``
or ``\\r`` line endings, ``:`` comments, one optional space after the colon,
``id`` persisting across events) and works line by line, never character by
character, because it runs once per upstream token.
"""

from __future__ import annotations

from dataclasses import dataclass

_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event. ``data`` is the data lines joined by ``\\n``."""

    data: str = ""
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Turns a byte stream into :class:`ServerSentEvent` objects."""

    def __init__(self) -> None:
        self._pending = b""  # an incomplete last line
        self._skip_lf = False  # the last chunk ended in \r: a leading \n is its pair
        self._at_start = True
        self._data: list[str] = []
        self._event = ""
        self._retry: int | None = None
        self._last_id: str | None = None
        self._has_fields = False

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode ``chunk`` and return the events it completed."""
        if not chunk:
            return []
        if (
            not self._at_start
            and not self._pending
            and not self._has_fields
            and chunk.startswith(b"data: ")
            and chunk.endswith(b"\n\n")
            and chunk.count(b"\n") == 2
            and b"\r" not in chunk
        ):
            # The usual upstream read: exactly one whole one-line data event.
            self._skip_lf = False
            return [ServerSentEvent(chunk[6:-2].decode("utf-8", "replace"), id=self._last_id)]
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if self._pending:
            chunk = self._pending + chunk
            self._pending = b""
        if self._at_start:
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._pending = chunk  # can't tell a BOM yet
                return []
            self._at_start = False
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
        lines = chunk.splitlines(keepends=True)
        if lines and not lines[-1].endswith((b"\n", b"\r")):
            self._pending = lines.pop()
        elif lines and lines[-1].endswith(b"\r"):
            # "\r" then "\n" in the next chunk is one line ending, not two.
            self._skip_lf = True
        events: list[ServerSentEvent] = []
        for line in lines:
            event = self._process_line(line.rstrip(b"\r\n"))
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[ServerSentEvent]:
        """End of stream: dispatch what is left, even without its blank line.

        The spec drops an unterminated event; being lenient costs nothing and
        keeps a last ``data: [DONE]`` from an upstream that forgets the blank line.
        """
        events: list[ServerSentEvent] = []
        if self._pending:
            event = self._process_line(self._pending)
            self._pending = b""
            if event is not None:
                events.append(event)
        event = self._dispatch()
        if event is not None:
            events.append(event)
        return events

    def _process_line(self, line: bytes) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == 0x3A:  # ":" starts a comment (keep-alives)
            return None
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        self._set_field(name, value.decode("utf-8", "replace"))
        return None

    def _set_field(self, name: bytes, value: str) -> None:
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value
        elif name == b"id":
            if "\0" in value:
                return
            self._last_id = value
        elif name == b"retry":
            if not value.isascii() or not value.isdigit():
                return
            self._retry = int(value)
        else:
            return  # unknown fields are ignored
        self._has_fields = True

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._has_fields:
            return None
        event = ServerSentEvent(
            data="\n".join(self._data),
            event=self._event or "message",
            id=self._last_id,
            retry=self._retry,
        )
        self._data = []
        self._event = ""
        self._retry = None
        self._has_fields = False
        return event

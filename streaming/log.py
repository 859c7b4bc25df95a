"""StreamLog: the ordered, resumable record of one stream's events.

Every event gets a sequence number (1, 2, ...). Readers hold a cursor (the
last seq they have) and ask for what comes after it. The producer appends
without awaiting, so a slow reader can never slow the generation down; a
reader that falls behind simply gets a bigger batch next time.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

CHUNK = 0  # an OpenAI chat.completion.chunk (JSON bytes)
ERROR = 1  # an OpenAI-shaped error object (JSON bytes)
END = 2  # the stream is over; payload empty

Entry = tuple[int, int, bytes]  # (seq, kind, payload)


class StreamLogFull(Exception):
    """The stream produced more than the per-stream cap allows."""


class CursorTrimmed(Exception):
    """The events after the cursor are no longer kept."""


@dataclass(slots=True)
class LogLimits:
    max_events: int
    max_bytes: int


class MemoryStreamLog:
    """The in-process log: a list, plus the futures of the readers waiting on it."""

    __slots__ = ("_entries", "_waiters", "bytes", "ended", "limits")

    def __init__(self, limits: LogLimits) -> None:
        self._entries: list[Entry] = []
        self._waiters: list[asyncio.Future[None]] = []
        self.limits = limits
        self.bytes = 0
        self.ended = False

    @property
    def last_seq(self) -> int:
        return len(self._entries)

    def append(self, kind: int, payload: bytes) -> int:
        """Add an event; never waits. Raises StreamLogFull past the cap."""
        if self.ended:
            raise RuntimeError("append to an ended stream log")
        if kind == CHUNK and (
            len(self._entries) >= self.limits.max_events
            or self.bytes + len(payload) > self.limits.max_bytes
        ):
            raise StreamLogFull(
                f"stream exceeded the per-stream cap ({self.limits.max_events} events, "
                f"{self.limits.max_bytes} bytes)"
            )
        seq = len(self._entries) + 1
        self._entries.append((seq, kind, payload))
        self.bytes += len(payload)
        if kind == END:
            self.ended = True
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        return seq

    def read_after(self, cursor: int, max_bytes: int) -> list[Entry]:
        """Events after ``cursor``, at most about ``max_bytes`` (at least one)."""
        if cursor < 0 or cursor > len(self._entries):
            raise CursorTrimmed(f"no event {cursor} in this stream")
        out: list[Entry] = []
        size = 0
        for entry in self._entries[cursor : cursor + 4096]:
            out.append(entry)
            size += len(entry[2])
            if size >= max_bytes:
                break
        return out

    def next_append(self) -> asyncio.Future[None]:
        """A future resolved by the next append (already resolved once the log ended).

        Whoever holds it may also resolve it early to wake its reader (a keep-alive).
        """
        waiter = asyncio.get_running_loop().create_future()
        if self.ended:
            waiter.set_result(None)
            return waiter
        if len(self._waiters) > 16:  # woken early or cancelled, while no append came
            self._waiters = [w for w in self._waiters if not w.done()]
        self._waiters.append(waiter)
        return waiter

    async def wait_after(self, cursor: int) -> None:
        """Return once there is an event after ``cursor`` (or the log ended)."""
        while len(self._entries) <= cursor and not self.ended:
            await self.next_append()

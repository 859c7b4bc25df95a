"""StreamLog: the ordered, resumable record of one stream's events.

Every event gets a sequence number (1, 2, ...). Readers hold a cursor (the
last seq they have) and ask for what comes after it. The producer appends
without awaiting, so a slow reader can never slow the generation down; a
reader that falls behind simply gets a bigger batch next time.
"""

from __future__ import annotations

import asyncio
from array import array
from dataclasses import dataclass

CHUNK = 0  # an OpenAI chat.completion.chunk (JSON bytes)
ERROR = 1  # an OpenAI-shaped error object (JSON bytes)
END = 2  # the stream is over; payload empty

Entry = tuple[int, int, bytes]  # (seq, kind, payload)


class StreamLogFull(Exception):
    """The stream produced more than the per-stream cap allows."""


class CursorTrimmed(Exception):
    """The events after the cursor are no longer kept."""


@dataclass(slots=True, frozen=True)
class LogLimits:
    max_events: int
    max_bytes: int

    @classmethod
    def shared(cls, max_events: int, max_bytes: int) -> LogLimits:
        """One instance per pair of values: a finished log is kept for its TTL,
        and every object it keeps is one more for the garbage collector to walk."""
        return _limits.setdefault((max_events, max_bytes), cls(max_events, max_bytes))


_limits: dict[tuple[int, int], LogLimits] = {}
_SEALED = LogLimits(0, 0)  # an unsealed log is ended: nothing is appended to it
Sealed = tuple[bytearray, bytes, bytearray]  # payloads, ends (array "Q" bytes), kinds


class MemoryStreamLog:
    """The in-process log: the payloads end to end in one buffer, their ends and
    kinds in two arrays, plus the futures of the readers waiting on it.

    One buffer, not an object per event: small objects share the allocator's
    arenas with everything else the process allocates, and a few long-lived
    neighbours kept an expired log's memory from ever going back to the OS
    (see streaming.memory). Reads copy the payloads they return.
    """

    __slots__ = ("_data", "_ends", "_kinds", "_waiters", "ended", "limits")

    def __init__(self, limits: LogLimits) -> None:
        self._data = bytearray()
        self._ends = array("Q")  # event i's payload is _data[_ends[i - 1]:_ends[i]]
        self._kinds = bytearray()
        self._waiters: list[asyncio.Future[None]] | None = []  # None once ended
        self.limits = limits
        self.ended = False

    @property
    def last_seq(self) -> int:
        return len(self._kinds)

    @property
    def size(self) -> int:
        """Bytes of payload held."""
        return len(self._data)

    def append(self, kind: int, payload: bytes) -> int:
        """Add an event; never waits. Raises StreamLogFull past the cap."""
        if self.ended:
            raise RuntimeError("append to an ended stream log")
        if kind == CHUNK and (
            len(self._kinds) >= self.limits.max_events
            or len(self._data) + len(payload) > self.limits.max_bytes
        ):
            raise StreamLogFull(
                f"stream exceeded the per-stream cap ({self.limits.max_events} events, "
                f"{self.limits.max_bytes} bytes)"
            )
        self._data += payload
        self._ends.append(len(self._data))
        self._kinds.append(kind)
        waiters = self._waiters
        if kind == END:
            self.ended = True
            self._waiters = None
        elif waiters:
            self._waiters = []
        if waiters:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        return len(self._kinds)

    def read_after(self, cursor: int, max_bytes: int) -> list[Entry]:
        """Events after ``cursor``, at most about ``max_bytes`` (at least one)."""
        count = len(self._kinds)
        if cursor < 0 or cursor > count:
            raise CursorTrimmed(f"no event {cursor} in this stream")
        ends, kinds = self._ends, self._kinds
        start = ends[cursor - 1] if cursor else 0
        if count == cursor + 1:  # a reader keeping up: one new event
            return [(count, kinds[cursor], bytes(self._data[start : ends[cursor]]))]
        out: list[Entry] = []
        first = start
        with memoryview(self._data) as data:
            for index in range(cursor, min(count, cursor + 4096)):
                end = ends[index]
                out.append((index + 1, kinds[index], bytes(data[start:end])))
                start = end
                if end - first >= max_bytes:
                    break
        return out

    def seal(self) -> Sealed:
        """The ended log's events, held by objects the garbage collector does not
        track (an array is tracked; its bytes are not). Shares the payload buffer."""
        if not self.ended:
            raise RuntimeError("only an ended stream log can be sealed")
        return self._data, self._ends.tobytes(), self._kinds

    @classmethod
    def unseal(cls, sealed: Sealed) -> MemoryStreamLog:
        """An ended log over sealed events, to read them again."""
        data, ends, kinds = sealed
        log = cls(_SEALED)
        log._data, log._kinds = data, kinds
        log._ends.frombytes(ends)
        log.ended, log._waiters = True, None
        return log

    def next_append(self) -> asyncio.Future[None]:
        """A future resolved by the next append (already resolved once the log ended).

        Whoever holds it may also resolve it early to wake its reader (a keep-alive).
        """
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:  # ended
            waiter.set_result(None)
            return waiter
        if len(self._waiters) > 16:  # woken early or cancelled, while no append came
            self._waiters = [w for w in self._waiters if not w.done()]
        self._waiters.append(waiter)
        return waiter

    async def wait_after(self, cursor: int) -> None:
        """Return once there is an event after ``cursor`` (or the log ended)."""
        while len(self._kinds) <= cursor and not self.ended:
            await self.next_append()

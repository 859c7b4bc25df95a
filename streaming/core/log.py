"""StreamLog: the ordered, resumable record of one stream's events.

Every event gets a sequence number (1, 2, ...). Readers hold a cursor (the
last seq they have) and ask for what comes after it. The producer appends
without awaiting, so a slow reader can never slow the generation down; a
reader that falls behind simply gets a bigger batch next time.
"""

from __future__ import annotations

import asyncio
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from streaming.core.events import END, ERROR, Entry

# What an encoder adds to an event's payload, at most: an OpenAI chat chunk's
# fields (id, object, created, a model name of up to 64 characters, choices)
# in a WebSocket message is about 250 bytes around a text delta.
FRAMING_BYTES = 256
_UNCAPPED = frozenset((ERROR, END))  # a full log can still say so and end


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
    (see streaming.core.memory). Reads copy the payloads they return.
    """

    __slots__ = ("_data", "_ends", "_kinds", "_waiters", "ended", "limits", "notify")

    def __init__(self, limits: LogLimits) -> None:
        self._data = bytearray()
        # Event i's payload is _data[_ends[i - 1]:_ends[i]]. An array while the
        # log grows; once sealed, a view of the sealed bytes (see ``seal``).
        self._ends: array[int] | memoryview = array("Q")
        self._kinds = bytearray()
        self._waiters: list[asyncio.Future[None]] | None = []  # None once ended
        self.limits = limits
        self.ended = False
        self.notify: Callable[[], None] | None = None  # told of each append (its Redis mirror)

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
        if kind not in _UNCAPPED and (
            len(self._kinds) >= self.limits.max_events
            or len(self._data) + len(payload) > self.limits.max_bytes
        ):
            raise StreamLogFull(
                f"stream exceeded the per-stream cap ({self.limits.max_events} events, "
                f"{self.limits.max_bytes} bytes)"
            )
        self._data += payload
        self._ends.append(len(self._data))  # type: ignore[union-attr]  # live: an array
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
        if self.notify is not None:
            self.notify()
        return len(self._kinds)

    def read_after(self, cursor: int, max_bytes: int) -> Sequence[Entry]:
        """Events after ``cursor``, at least one, at most about ``max_bytes``
        counting ``FRAMING_BYTES`` per event, for the wire format around it."""
        count = len(self._kinds)
        if cursor < 0 or cursor > count:
            raise CursorTrimmed(f"no event {cursor} in this stream")
        ends = self._ends
        start = ends[cursor - 1] if cursor else 0
        if count == cursor + 1:  # a reader keeping up: one new event
            return [(count, self._kinds[cursor], bytes(self._data[start : ends[cursor]]))]
        stop = cursor
        while stop < count:
            stop += 1
            if ends[stop - 1] - start + FRAMING_BYTES * (stop - cursor) >= max_bytes:
                break
        return LogBatch(self, cursor, stop)

    def seal(self) -> Sealed:
        """The ended log's events, held by objects the garbage collector does not
        track (an array is tracked; its bytes are not). Shares the payload buffer.

        The log then reads its ends from the sealed bytes too: readers still
        following it (a slow client can hold on for READER_STALL_SECONDS) keep
        one copy of them, not two.
        """
        if not self.ended:
            raise RuntimeError("only an ended stream log can be sealed")
        if isinstance(self._ends, array):
            self._ends = memoryview(self._ends.tobytes()).cast("Q")
        ends = self._ends.obj
        assert isinstance(ends, bytes)
        return self._data, ends, self._kinds

    @classmethod
    def unseal(cls, sealed: Sealed) -> MemoryStreamLog:
        """An ended log over sealed events, to read them again (no copy)."""
        data, ends, kinds = sealed
        log = cls(_SEALED)
        log._data, log._ends, log._kinds = data, memoryview(ends).cast("Q"), kinds
        log.ended, log._waiters, log.notify = True, None, None
        return log

    def last_of(self, kind: int, cursor: int) -> bytes | None:
        """The payload of the last ``kind`` event at or before ``cursor``."""
        position = self._kinds.rfind(bytes((kind,)), 0, cursor)
        if position < 0:
            return None
        ends = self._ends
        return bytes(self._data[ends[position - 1] if position else 0 : ends[position]])

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


class LogBatch(Sequence[Entry]):
    """Events ``first + 1 .. stop`` of a log, read from its buffer when iterated.

    A reader that fell behind gets a batch of thousands of events. As a list of
    (seq, kind, bytes) tuples it took 1.5 times its payload; held while the
    encoded batch waits on a slow client, it was a third copy of the batch.
    This holds only the log and two numbers: each event's payload exists while
    the encoder uses it. A log only grows, so the events stay where they are.
    """

    __slots__ = ("_first", "_log", "_stop")

    def __init__(self, log: MemoryStreamLog, first: int, stop: int) -> None:
        self._log, self._first, self._stop = log, first, stop

    def __len__(self) -> int:
        return self._stop - self._first

    def __getitem__(self, index: int) -> Entry:  # type: ignore[override]
        position = index + self._stop if index < 0 else index + self._first
        if not self._first <= position < self._stop:
            raise IndexError("batch index out of range")
        ends = self._log._ends
        start = ends[position - 1] if position else 0
        payload = bytes(self._log._data[start : ends[position]])
        return position + 1, self._log._kinds[position], payload

    def __iter__(self) -> Iterator[Entry]:
        log = self._log
        data, ends, kinds = log._data, log._ends, log._kinds
        start = ends[self._first - 1] if self._first else 0
        for position in range(self._first, self._stop):
            end = ends[position]
            yield position + 1, kinds[position], bytes(data[start:end])
            start = end

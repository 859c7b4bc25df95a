"""Finished streams, kept for their TTL so clients can replay and resume them.

A finished stream needs only its log, its owner and its outcome. The
``StreamSession`` that ran it holds much more (the request, transcript,
audit entry, task, coroutine, contexts: about 24 objects the garbage
collector tracks). Kept for the TTL (600 s), those added up: after 30,000
requests a full collection walked 700,000 objects and stopped the event
loop for 540 ms. What is kept instead is a tuple of the owner, the outcome
and the sealed log (bytes and bytearrays): after one collection the
collector stops tracking it at all. ``find`` builds an ``EndedStream`` over
it for the reader that asks. One timer for all of them expires them in order.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import orjson
from django.conf import settings

from streaming.core import deliveries, memory
from streaming.core.deliveries import Delivery
from streaming.core.events import CHAT, START, Entry, Inbound
from streaming.core.log import MemoryStreamLog
from streaming.core.reader import follow


@dataclass(slots=True, eq=False)
class EndedStream:
    """A finished stream on this instance: the reader-facing surface of a session."""

    id: str
    app_id: int
    created: int
    log: MemoryStreamLog
    outcome: str  # for readers' close reason (reader.end_reason)
    inbound: Inbound = CHAT

    @property
    def finished(self) -> bool:
        return True

    def outcome_now(self) -> str:
        return self.outcome

    def model_at(self, cursor: int) -> str:
        start = self.log.last_of(START, max(cursor, 1))
        return orjson.loads(start)["model"] if start else ""

    def attach(self, *, resumed: bool, delivery: Delivery | None = None) -> None:
        """Nothing to keep alive: the generation is over."""

    def detach(self, delivery: Delivery | None = None) -> None:
        """Read after the record was made: the delivery is a note."""
        if delivery is not None:
            deliveries.note_delivery(self.id, delivery, self.log.last_seq)

    async def remaining(self, cursor: int) -> bool:
        """Whether events follow ``cursor``; CursorTrimmed if it is not in the log."""
        return bool(self.log.read_after(cursor, 1))

    async def request_cancel(self) -> None:
        """Nothing to cancel: the generation is over."""

    async def entries(self) -> Sequence[Entry]:
        return self.log.read_after(0, 1 << 62)

    def follow(
        self, cursor: int, *, keepalive: float | None = None
    ) -> AsyncIterator[Sequence[Entry] | None]:
        buffer_bytes = settings.SLUICE_READER_BUFFER_BYTES
        return follow(self.log, cursor, buffer_bytes=buffer_bytes, keepalive=keepalive)


# id -> (app_id, created, outcome, api, echo, *sealed log): flat, so one collection untracks it
_kept: dict[str, tuple[int, int, str, str, bytes, bytearray, bytes, bytearray]] = {}
_expiry: list[tuple[float, str]] = []  # (time.monotonic() deadline, id), a heap
_sweep: tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle, float] | None = None


def keep(
    stream_id: str,
    app_id: int,
    created: int,
    outcome: str,
    log: MemoryStreamLog,
    ttl: float,
    *,
    inbound: Inbound = CHAT,
) -> None:
    """Keep an ended stream findable for ``ttl`` seconds from now."""
    deadline = time.monotonic() + ttl
    _kept[stream_id] = (app_id, created, outcome, inbound.api, inbound.echo, *log.seal())
    heapq.heappush(_expiry, (deadline, stream_id))
    _arm(asyncio.get_running_loop(), deadline)


def find(stream_id: str) -> EndedStream | None:
    kept = _kept.get(stream_id)
    if kept is None:
        return None
    app_id, created, outcome, api, echo, data, ends, kinds = kept
    log = MemoryStreamLog.unseal((data, ends, kinds))
    return EndedStream(stream_id, app_id, created, log, outcome, Inbound(api, echo))


def _arm(loop: asyncio.AbstractEventLoop, deadline: float) -> None:
    global _sweep
    if _sweep is not None:
        armed_loop, handle, armed_for = _sweep
        if armed_loop is loop and not loop.is_closed() and armed_for <= deadline:
            return  # the armed sweep comes first
        handle.cancel()
    handle = loop.call_later(max(0.0, deadline - time.monotonic()), _expire_due, loop)
    _sweep = (loop, handle, deadline)


def _expire_due(loop: asyncio.AbstractEventLoop) -> None:
    global _sweep
    _sweep = None
    now = time.monotonic()
    released = 0
    while _expiry and _expiry[0][0] <= now:
        _, stream_id = heapq.heappop(_expiry)
        kept = _kept.pop(stream_id, None)
        if kept is not None:
            released = max(released, len(kept[5]))
    if released >= memory.RELEASE_AFTER_BYTES:
        memory.release_memory()
    if _expiry:
        _arm(loop, _expiry[0][0])

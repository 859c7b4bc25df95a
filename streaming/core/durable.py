"""What a stream's local readers may see: the events already in Redis.

With takeover (streaming.core.takeover), another instance carries a stream on
from its Redis log when this instance is lost. A reader that had been sent an
event the log never got would then resume past events it never saw, or see
two different ones under one seq. So a local reader is served the events the
mirror has written, never more: ``DurableView`` is the session's log cut at
the mirror's mark. The mirror writes at once when idle (one round trip, a
fraction of a millisecond on a LAN), and batches whatever came meanwhile.
Should the mirror fail (Redis away), the view lets everything through:
local readers go on as without takeover.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from streaming.core.events import Entry
from streaming.core.log import LogBatch, MemoryStreamLog


class DurableView:
    """The read side of a ``MemoryStreamLog`` (as reader.follow uses it), up to ``durable``."""

    __slots__ = ("_waiters", "durable", "gone", "log", "open")

    def __init__(self, log: MemoryStreamLog, durable: int = 0) -> None:
        self.log = log
        self.durable = durable
        self.open = False  # everything readable: the mirror is gone
        self.gone = False  # handed over (shutdown): readers end at ``durable``, to resume elsewhere
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def last_seq(self) -> int:
        return self.log.last_seq if self.open else min(self.durable, self.log.last_seq)

    @property
    def ended(self) -> bool:
        return self.gone or (self.log.ended and self.last_seq == self.log.last_seq)

    def advance(self, seq: int) -> None:
        """The mirror wrote every event up to ``seq``."""
        self.durable = max(self.durable, seq)
        self._wake()

    def release(self) -> None:
        """The mirror stopped (Redis failed): readers get the log as it is."""
        if not self.gone:
            self.open = True
            self._wake()

    def leave(self) -> None:
        """The stream was handed over: readers end at what Redis holds (no END)."""
        self.gone = True
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def read_after(self, cursor: int, max_bytes: int) -> Sequence[Entry]:
        batch = self.log.read_after(cursor, max_bytes)
        limit = self.last_seq
        if cursor + len(batch) <= limit:
            return batch
        return LogBatch(self.log, cursor, max(cursor, limit))

    def last_of(self, kind: int, cursor: int) -> bytes | None:
        return self.log.last_of(kind, cursor)

    def next_append(self) -> asyncio.Future[None]:
        if self.open:
            return self.log.next_append()
        waiter = asyncio.get_running_loop().create_future()
        if self.ended:
            waiter.set_result(None)
        else:
            if len(self._waiters) > 16:
                self._waiters = [w for w in self._waiters if not w.done()]
            self._waiters.append(waiter)
        return waiter

    async def wait_after(self, cursor: int) -> None:
        while self.last_seq <= cursor and not self.ended:
            await self.next_append()

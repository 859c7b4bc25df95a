"""Following a stream from a cursor: replay what was missed, then go live.

Every transport reads through ``follow``, and cuts off a client whose sends
stall with ``SendWatch``. A reader that falls behind gets the events it
missed in one larger batch, so it holds no queue of its own: what it holds
is bounded by SLUICE_READER_BUFFER_BYTES (see ``follow``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from redis.exceptions import RedisError

from streaming.core.log import CursorTrimmed, Entry, MemoryStreamLog

# What a reader's follow raises when the rest of its stream cannot be read:
# the log expired under a reader on another instance, or Redis failed. The
# head is out by then, so the transport ends the reader short ("broken").
UNREADABLE = (CursorTrimmed, RedisError)


class _KeepAlive:
    """Wakes a waiting reader after ``interval`` seconds without events.

    One timer per interval, not one per event: each event only records the
    time, and the timer, when it fires early, re-arms for the remainder.
    """

    __slots__ = ("_handle", "_interval", "_loop", "last", "waiter")

    def __init__(self, interval: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._interval = interval
        self.last = self._loop.time()
        self.waiter: asyncio.Future[None] | None = None
        self._handle = self._loop.call_at(self.last + interval, self._check)

    def _check(self) -> None:
        due = self.last + self._interval
        now = self._loop.time()
        if now >= due:
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)
            due = now + self._interval
        self._handle = self._loop.call_at(due, self._check)

    def touch(self) -> None:
        self.last = self._loop.time()

    def cancel(self) -> None:
        self._handle.cancel()


class SendWatch:
    """Cancels the current task when one send has waited ``limit`` seconds.

    Per send it only notes the time; its one timer fires once per ``limit``
    and re-arms for the remainder (a timer per send was a good part of the
    cost of relaying a token).
    """

    __slots__ = ("_handle", "_loop", "_since", "fired", "limit", "task")

    def __init__(self, limit: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.limit = limit
        self.fired = False
        self._loop = asyncio.get_running_loop()
        self._since: float | None = None
        self._handle = self._loop.call_at(self._loop.time() + limit, self._check)

    def sending(self) -> None:
        self._since = self._loop.time()

    def sent(self) -> None:
        self._since = None

    def _check(self) -> None:
        now = self._loop.time()
        since = self._since
        if since is not None and now - since >= self.limit:
            self.fired = True
            self.task.cancel()
            return
        base = now if since is None else since
        self._handle = self._loop.call_at(base + self.limit, self._check)

    def cancel(self) -> None:
        self._handle.cancel()


async def follow(
    log: MemoryStreamLog,
    cursor: int,
    *,
    buffer_bytes: int,
    keepalive: float | None = None,
) -> AsyncIterator[Sequence[Entry] | None]:
    """Yield batches of entries after ``cursor`` until END; None means 'send a keep-alive'.

    A batch is a view of the log (``LogBatch``), encoded into one write. While
    a slow client's socket is full, its reader holds that write, the server's
    framed copy of it, and what the transport still buffers from before (up
    to its high-water mark: 64 KiB on uvicorn). So a batch is at most a
    quarter of ``buffer_bytes``, and what one reader holds stays within it.
    (Measured with the default 256 KiB, 8 stalled readers: at half, 0.33 to
    0.44 MiB of RSS per reader; at a quarter, about 0.1.)
    """
    batch_bytes = buffer_bytes // 4
    idle = _KeepAlive(keepalive) if keepalive else None
    try:
        while True:
            if log.last_seq <= cursor and not log.ended:
                if idle is None:
                    await log.wait_after(cursor)
                else:
                    idle.waiter = log.next_append()
                    await idle.waiter
                    idle.waiter = None
                    if log.last_seq <= cursor and not log.ended:
                        idle.touch()
                        yield None
                        continue
            batch = log.read_after(cursor, batch_bytes)
            if not batch:
                return
            cursor += len(batch)
            if idle is not None:
                idle.touch()
            yield batch
            if log.ended and cursor == log.last_seq:
                return  # that batch ended with END
    finally:
        if idle is not None:
            idle.cancel()

"""Following a stream from a cursor: replay what was missed, then go live.

Every transport reads through ``follow``. A reader that falls behind gets
the events it missed in one larger batch (bounded by
SLUICE["READER_BUFFER_BYTES"]), so it holds no queue of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from streaming.log import END, Entry, MemoryStreamLog


async def follow(
    log: MemoryStreamLog,
    cursor: int,
    *,
    max_batch_bytes: int,
    keepalive: float | None = None,
) -> AsyncIterator[list[Entry] | None]:
    """Yield batches of entries after ``cursor`` until END; None means 'send a keep-alive'."""
    while True:
        if log.last_seq <= cursor and not log.ended:
            if keepalive is None:
                await log.wait_after(cursor)
            else:
                try:
                    async with asyncio.timeout(keepalive):
                        await log.wait_after(cursor)
                except TimeoutError:
                    yield None
                    continue
        batch = log.read_after(cursor, max_batch_bytes)
        if not batch:
            return
        cursor = batch[-1][0]
        yield batch
        if batch[-1][1] == END:
            return

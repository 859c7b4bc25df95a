"""The StreamLog's copy in Redis, so another instance can resume a stream.

The producing instance keeps serving its own readers from memory;
``streaming.core.mirror`` copies the log to a Redis Stream in batches, off
the hot path (one pipeline for all of a worker's streams a round, never one
round trip per token). Entry ids are ``<seq>-0``, so a reader's cursor is a
Redis stream id. A ``RemoteStream`` is the view of a stream produced elsewhere:
replay with XRANGE, then follow with a blocking XREAD on its own connection
pool (a blocking read holds its connection).

Control: cancelling a stream that runs on another instance is a PUBLISH on
``sluice:cancel``; every instance listens and cancels its local session. A
remote reader keeps ``…:readers`` alive so the producer does not abandon a
stream someone is reading elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import redis.asyncio as redis
from django.conf import settings

from gateway.redis import FOLLOW_BLOCK_SECONDS, async_client
from gateway.redis import redis_enabled as redis_enabled  # session.py asks redis_log for it
from streaming.core import deliveries
from streaming.core.deliveries import Delivery
from streaming.core.events import END, Entry, Inbound
from streaming.core.log import CursorTrimmed

logger = logging.getLogger("sluice.redis")

CANCEL_CHANNEL = "sluice:cancel"
# Every running stream's id, scored by its owner's last heartbeat (streaming.core.takeover).
RUNNING_KEY = "sluice:streams:running"
_AT_END = frozenset(("completed", "cancelled", "error"))  # a reader's close reasons at END
_listeners: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}


async def stop_cancel_listener() -> None:
    """Stop this event loop's cancel listener (before its Redis clients close)."""
    task = _listeners.pop(asyncio.get_running_loop(), None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _keys(stream_id: str) -> tuple[str, str, str]:
    base = f"sluice:stream:{stream_id}"
    return f"{base}:log", f"{base}:meta", f"{base}:readers"


def meta_key(stream_id: str) -> str:
    """A stream's meta hash: its app, model, status (and, with takeover, its request)."""
    return _keys(stream_id)[1]


def log_key(stream_id: str) -> str:
    """The Redis Stream holding a stream's log (read by ``streaming.core.recovery``)."""
    return _keys(stream_id)[0]


class RemoteStream:
    """A stream produced by another instance, read through Redis."""

    def __init__(self, stream_id: str, meta: dict[str, str]) -> None:
        self.id = stream_id
        self.app_id = int(meta.get("app_id", "0"))
        self.created = int(meta.get("created", "0"))
        self.model = meta.get("model", "")
        self.finished = meta.get("status") == "done"
        self.inbound = Inbound(meta.get("api", "chat"), meta.get("echo", "{}").encode())

    def model_at(self, cursor: int) -> str:
        """The model answering when this reader found the stream (a reader
        resuming before a continuation names the newer model until its START)."""
        return self.model

    def outcome_now(self) -> str:
        return "completed"  # the outcome is the producer's; its events say how it ended

    def attach(self, *, resumed: bool, delivery: Delivery | None = None) -> None:
        """The producer learns of readers elsewhere through ``…:readers`` (see follow)."""

    def detach(self, delivery: Delivery | None = None) -> None:
        """Read on another instance than the record's: the delivery is a note
        (what was generated is known if this reader saw the end)."""
        if delivery is not None:
            generated = delivery.last_seq if delivery.ended in _AT_END else None
            deliveries.note_delivery(self.id, delivery, generated)

    @classmethod
    async def find(cls, stream_id: str) -> RemoteStream | None:
        _, meta_key, _ = _keys(stream_id)
        raw: Any = await async_client().hgetall(meta_key)
        if not raw:
            return None
        return cls(stream_id, {k.decode(): v.decode() for k, v in raw.items()})

    async def remaining(self, cursor: int) -> bool:
        """Whether events follow ``cursor``; CursorTrimmed if they are gone."""
        log_key, _, _ = _keys(self.id)
        first: Any = await async_client().xrange(log_key, count=1)
        last: Any = await async_client().xrevrange(log_key, count=1)
        first_seq = _seq(first[0][0]) if first else 1
        last_seq = _seq(last[0][0]) if last else 0
        if cursor + 1 < first_seq or (cursor > last_seq and self.finished):
            raise CursorTrimmed(f"no event {cursor} in this stream")
        return cursor < last_seq or not self.finished

    async def request_cancel(self) -> None:
        await async_client().publish(CANCEL_CHANNEL, self.id)

    async def entries(self) -> Sequence[Entry]:
        """Every event mirrored so far (up to the producer's last batch)."""
        log_key, _, _ = _keys(self.id)
        reply: Any = await async_client().xrange(log_key)
        return [(_seq(eid), int(f[b"k"]), f[b"d"]) for eid, f in reply]

    async def follow(
        self, cursor: int, *, keepalive: float | None = None, watch: bool = False
    ) -> AsyncIterator[Sequence[Entry] | None]:
        """Like reader.follow, over Redis: XREAD from the cursor, blocking when caught up.

        With ``watch`` (a staff member's live tail) it leaves no reader's mark:
        a watcher does not keep a stream its clients abandoned alive.

        A finished stream's log holds every event up to END, so finding nothing
        after the cursor means its keys expired under the reader: that is
        CursorTrimmed, never a wait for events that cannot come.
        """
        log_key, meta_key, readers_key = _keys(self.id)
        client = async_client("blocking")
        max_batch_bytes = settings.SLUICE_READER_BUFFER_BYTES
        abandon = settings.SLUICE_STREAM_ABANDON_SECONDS
        # The reader's mark (below) lasts ``abandon`` seconds and is renewed
        # between reads: a read blocking longer let it lapse, and the instance
        # running the stream abandoned it with this reader still on it.
        block_ms = int(min(keepalive or FOLLOW_BLOCK_SECONDS, abandon / 2) * 1000)
        touched = 0.0
        count = max(1, max_batch_bytes // 256)
        while True:
            if not watch and time.monotonic() - touched > abandon / 3:
                await client.set(readers_key, b"1", ex=max(1, int(abandon)))
                touched = time.monotonic()
            block = None if self.finished else block_ms
            reply: Any = await client.xread({log_key: f"{cursor}-0"}, count=count, block=block)
            if not reply:
                if self.finished:
                    raise CursorTrimmed(f"stream {self.id} expired while it was read")
                status = await async_client().hget(meta_key, "status")
                if status is None:
                    raise CursorTrimmed(f"stream {self.id} expired while it was read")
                self.finished = status == b"done"  # if so, the next read settles it at once
                yield None
                continue
            batch = [(_seq(eid), int(f[b"k"]), f[b"d"]) for eid, f in reply[0][1]]
            if batch[0][0] != cursor + 1:
                raise CursorTrimmed(f"events after {cursor} are no longer kept")
            cursor = batch[-1][0]
            yield batch
            if batch[-1][1] == END:
                return


def _seq(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[0])


async def remote_reader_active(stream_id: str) -> bool:
    _, _, readers_key = _keys(stream_id)
    try:
        return bool(await async_client().exists(readers_key))
    except (redis.RedisError, OSError):
        return False


def ensure_cancel_listener(cancel_local: Callable[[str], None]) -> None:
    """Start (once per event loop) the listener that cancels local sessions."""
    loop = asyncio.get_running_loop()
    task = _listeners.get(loop)
    if task is None or task.done():
        _listeners[loop] = loop.create_task(_listen(cancel_local))


async def _listen(cancel_local: Callable[[str], None]) -> None:
    await subscribe(CANCEL_CHANNEL, lambda data: cancel_local(data.decode()))


async def subscribe(channel: str, on_message: Callable[[bytes], None]) -> None:
    """Call ``on_message`` with each message published on ``channel``, for ever:
    subscribed again a second after Redis fails (its connection let go first)."""
    while True:
        pubsub = async_client().pubsub()
        try:
            await pubsub.subscribe(channel)
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    on_message(message["data"])
        except (redis.RedisError, OSError):
            pass
        finally:
            with contextlib.suppress(redis.RedisError, OSError):
                await pubsub.aclose()
        await asyncio.sleep(1.0)

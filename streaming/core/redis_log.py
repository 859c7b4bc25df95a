"""The StreamLog's copy in Redis, so another instance can resume a stream.

The producing instance keeps serving its own readers from memory; a
``RedisMirror`` copies the log to a Redis Stream in small batches, off the
hot path (one pipeline every SLUICE_REDIS_BATCH_SECONDS, never one round
trip per token). Entry ids are ``<seq>-0``, so a reader's cursor is a Redis
stream id. A ``RemoteStream`` is the view of a stream produced elsewhere:
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

import orjson
import redis.asyncio as redis
from django.conf import settings

from gateway.redis import FOLLOW_BLOCK_SECONDS, async_client
from gateway.redis import redis_enabled as redis_enabled  # session.py asks redis_log for it
from streaming.core.events import CHAT, END, START, Entry, Inbound
from streaming.core.log import CursorTrimmed, MemoryStreamLog
from streaming.observability.logging import warn_throttled

logger = logging.getLogger("sluice.redis")

CANCEL_CHANNEL = "sluice:cancel"
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


class RedisMirror:
    """Copies one session's log to Redis in batches until the log ends."""

    def __init__(
        self,
        stream_id: str,
        log: MemoryStreamLog,
        *,
        app_id: int,
        model: str,
        created: int,
        inbound: Inbound = CHAT,
    ) -> None:
        self.stream_id = stream_id
        self.inbound = inbound
        self.log = log
        self.app_id = app_id
        self.model = model
        self.created = created
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        _, meta_key, _ = _keys(self.stream_id)
        client = async_client()
        mirrored = 0
        try:
            # Running streams keep their keys; the TTL starts when they end.
            running_ttl = int(settings.SLUICE_STREAM_ABANDON_SECONDS) + 24 * 3600
            await client.hset(
                meta_key,
                mapping={
                    "app_id": self.app_id,
                    "model": self.model,
                    "created": self.created,
                    "status": "running",
                    "api": self.inbound.api,
                    "echo": self.inbound.echo,
                },
            )
            await client.expire(meta_key, running_ttl)
            while True:
                await self.log.wait_after(mirrored)
                await asyncio.sleep(settings.SLUICE_REDIS_BATCH_SECONDS)
                batch = self.log.read_after(mirrored, 1 << 30)
                mirrored = batch[-1][0]
                ended = batch[-1][1] == END
                await self._write(client, batch, ended, running_ttl)
                if ended:
                    return
        except (redis.RedisError, OSError) as error:
            # Local readers are unaffected; only cross-instance resume is lost.
            warn_throttled(
                logger, "stream %s: redis mirror failed: %s", self.stream_id, type(error).__name__
            )

    async def _write(
        self, client: redis.Redis, batch: Sequence[Entry], ended: bool, ttl: int
    ) -> None:
        log_key, meta_key, _ = _keys(self.stream_id)
        async with client.pipeline(transaction=False) as pipe:
            for seq, kind, payload in batch:
                if kind == START:  # the model answering, for encoders of readers elsewhere
                    pipe.hset(meta_key, "model", orjson.loads(payload)["model"])
                pipe.xadd(
                    log_key,
                    {"k": kind, "d": payload},
                    id=f"{seq}-0",
                    maxlen=settings.SLUICE_STREAM_MAX_EVENTS,
                    approximate=True,
                )
            if ended:
                pipe.hset(meta_key, "status", "done")
                pipe.expire(meta_key, settings.SLUICE_STREAM_TTL_SECONDS)
                pipe.expire(log_key, settings.SLUICE_STREAM_TTL_SECONDS)
            else:
                pipe.expire(log_key, ttl)
            await pipe.execute()


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

    def attach(self, *, resumed: bool) -> None:
        """The producer learns of readers elsewhere through ``…:readers`` (see follow)."""

    def detach(self) -> None:
        """See ``attach``."""

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
        self, cursor: int, *, keepalive: float | None = None
    ) -> AsyncIterator[Sequence[Entry] | None]:
        """Like reader.follow, over Redis: XREAD from the cursor, blocking when caught up.

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
            if time.monotonic() - touched > abandon / 3:
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
    while True:
        try:
            pubsub = async_client().pubsub()
            await pubsub.subscribe(CANCEL_CHANNEL)
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    cancel_local(message["data"].decode())
        except (redis.RedisError, OSError):
            await asyncio.sleep(1.0)

"""The copy of every local stream's log in Redis, written by one task per worker.

A ``RedisMirror`` is one stream's share: what it has written, and what
another instance needs to resume or carry the stream on (its meta hash,
written with its first batch). The ``MirrorWriter`` of the event loop writes
the new events of every stream that has any, all in one pipeline: one round
trip and one task wake-up per round, whatever the number of streams. A task
and a pipeline per stream cost 22% of a worker's CPU at 100 streams.

A log tells its mirror of an append (``MemoryStreamLog.notify``); the writer
starts a round at once with takeover (local readers wait for the copy, see
streaming.core.durable), else SLUICE_REDIS_BATCH_SECONDS later so that a
round carries several events per stream. Appends during a round go in the
next. With takeover, each stream's events are written by a script that
writes only while this instance owns the stream (``OWNED_WRITE``); a stream
another instance took over is fenced: its local readers end, to resume there.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as redis
from django.conf import settings
from redis.exceptions import NoScriptError

from audit.instance import instance_id
from gateway.redis import async_client
from streaming.core.durable import DurableView
from streaming.core.events import CHAT, END, START, Inbound
from streaming.core.log import MemoryStreamLog
from streaming.core.redis_log import RUNNING_KEY, log_key, meta_key
from streaming.observability.logging import warn_throttled

logger = logging.getLogger("sluice.redis")

# KEYS: log, meta, running. ARGV: owner, maxlen, ended, running ttl (0: set
# already), ended ttl, stream id, model answering ("" if no START here), then
# seq, kind, payload...
OWNED_WRITE = """
if redis.call('HGET', KEYS[2], 'owner') ~= ARGV[1] then return 0 end
for i = 8, #ARGV, 3 do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], ARGV[i] .. '-0', 'k', ARGV[i + 1],
    'd', ARGV[i + 2])
end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[2], 'model', ARGV[7]) end
if ARGV[3] == '1' then
  redis.call('ZREM', KEYS[3], ARGV[6])
  redis.call('HSET', KEYS[2], 'status', 'done')
  redis.call('EXPIRE', KEYS[2], ARGV[5])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
elseif ARGV[4] ~= '0' then
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
return 1
"""
OWNED_WRITE_SHA = hashlib.sha1(OWNED_WRITE.encode()).hexdigest()


def _running_ttl() -> int:
    """A running stream's keys last this long; the TTL proper starts when it ends."""
    return int(settings.SLUICE_STREAM_ABANDON_SECONDS) + 24 * 3600


class RedisMirror:
    """One session's log, copied to Redis by the loop's ``MirrorWriter`` until it ends."""

    def __init__(
        self,
        stream_id: str,
        log: MemoryStreamLog,
        *,
        app_id: int,
        model: str,
        created: int,
        inbound: Inbound = CHAT,
        view: DurableView | None = None,
        registration: Callable[[], dict[str, Any]] | None = None,
        resume_from: int = 0,
    ) -> None:
        self.stream_id = stream_id
        self.log = log
        self.app_id = app_id
        self.model = model
        self.created = created
        self.inbound = inbound
        # Takeover: the local readers' view, advanced as events are written;
        # what another instance needs to carry the stream on (in the meta);
        # the events already in the log (a stream taken over: they are there).
        self.view = view
        self.registration = registration
        self.mirrored = resume_from
        self.registered = bool(resume_from)
        self.ttl_set = False
        self.done = False
        self.sent = 0  # how many commands this round holds for it
        self.on_fenced: Callable[[], None] | None = None  # told when another instance owns it
        self.on_end: Callable[[], None] | None = None  # told once END is written (or cannot be)
        self._writer: MirrorWriter | None = None

    def start(self) -> None:
        self._writer = MirrorWriter.of_this_loop()
        self.log.notify = self._appended
        self._writer.mark(self)

    def stop(self) -> None:
        """Write no more (the stream is handed over); readers get the log as it is."""
        self._finish()
        if self.view is not None:
            self.view.release()

    def _appended(self) -> None:
        if self._writer is not None:
            self._writer.mark(self)

    def _finish(self) -> None:
        self.done = True
        self.log.notify = None
        if self._writer is not None:
            self._writer.forget(self)

    # -- one round -------------------------------------------------------
    def queue(self, pipe: Any) -> int:
        """Queue this stream's writes on ``pipe`` (``sent`` counts the commands);
        the seq they reach."""
        self.sent = 0
        if not self.registered:
            self._register(pipe)
        last = self.log.last_seq
        if last <= self.mirrored:
            return self.mirrored
        batch = self.log.read_after(self.mirrored, 1 << 30)
        ended = batch[-1][1] == END
        if self.view is None:
            self._write(pipe, batch, ended)
        else:
            self._write_owned(pipe, batch, ended)
        self.ttl_set = True
        return batch[-1][0]

    def _register(self, pipe: Any) -> None:
        mapping: dict[str | bytes, Any] = {
            "app_id": self.app_id,
            "model": self.model,
            "created": self.created,
            "status": "running",
            "api": self.inbound.api,
            "echo": self.inbound.echo,
        }
        if self.registration is not None:
            mapping.update(self.registration())
            pipe.zadd(RUNNING_KEY, {self.stream_id: time.time()})
            self.sent += 1
        meta = meta_key(self.stream_id)
        pipe.hset(meta, mapping=mapping)
        pipe.expire(meta, _running_ttl())
        self.sent += 2

    def _write(self, pipe: Any, batch: Any, ended: bool) -> None:
        log, meta = log_key(self.stream_id), meta_key(self.stream_id)
        maxlen = settings.SLUICE_STREAM_MAX_EVENTS
        for seq, kind, payload in batch:
            if kind == START:  # the model answering, for encoders of readers elsewhere
                pipe.hset(meta, "model", orjson.loads(payload)["model"])
                self.sent += 1
            fields = {"k": kind, "d": payload}
            pipe.xadd(log, fields, id=f"{seq}-0", maxlen=maxlen, approximate=True)
            self.sent += 1
        if ended:
            ttl = settings.SLUICE_STREAM_TTL_SECONDS
            pipe.zrem(RUNNING_KEY, self.stream_id)
            pipe.hset(meta, "status", "done")
            pipe.expire(meta, ttl)
            pipe.expire(log, ttl)
            self.sent += 4
        elif not self.ttl_set:
            pipe.expire(log, _running_ttl())
            self.sent += 1

    def _write_owned(self, pipe: Any, batch: Any, ended: bool) -> None:
        model = ""
        args: list[Any] = [instance_id(), settings.SLUICE_STREAM_MAX_EVENTS, int(ended)]
        args += [0 if self.ttl_set else _running_ttl(), settings.SLUICE_STREAM_TTL_SECONDS]
        args += [self.stream_id, ""]
        for seq, kind, payload in batch:
            if kind == START:
                model = orjson.loads(payload)["model"]
            args += (seq, kind, payload)
        args[6] = model
        keys = (log_key(self.stream_id), meta_key(self.stream_id), RUNNING_KEY)
        pipe.evalsha(OWNED_WRITE_SHA, len(keys), *keys, *args)
        self.sent += 1

    def written(self, replies: list[Any], reached: int) -> bool:
        """Take this stream's ``replies``; False if it must be sent again (the
        script was not loaded: nothing of it ran)."""
        if self.done:
            return True
        for reply in replies:
            if isinstance(reply, NoScriptError):
                return False
            if isinstance(reply, Exception):
                self.failed(reply)
                return True
        self.registered = True
        if self.view is not None and reached > self.mirrored and not replies[-1]:
            # Taken over by another instance (this one was thought dead): it
            # carries the stream on; this one stops, its readers resume there.
            self._finish()
            self.view.leave()
            if self.on_fenced is not None:
                self.on_fenced()
            return True
        self.mirrored = reached
        if self.view is not None:
            self.view.advance(reached)
        if self.log.ended and reached == self.log.last_seq:
            self._finish()
            self._ended()
        return True

    def failed(self, error: BaseException) -> None:
        """Redis failed this stream: local readers are unaffected; only
        cross-instance resume (and takeover) is lost."""
        if self.done:
            return
        self._finish()
        if self.view is not None:
            self.view.release()
        self._ended()
        warn_throttled(
            logger, "stream %s: redis mirror failed: %s", self.stream_id, type(error).__name__
        )

    def _ended(self) -> None:
        on_end, self.on_end = self.on_end, None
        if on_end is not None:
            on_end()


class MirrorWriter:
    """Writes the new events of every local stream to Redis, all in one pipeline a round."""

    _writers: dict[asyncio.AbstractEventLoop, MirrorWriter] = {}

    def __init__(self) -> None:
        self._dirty: dict[RedisMirror, None] = {}  # an ordered set
        self._wake = asyncio.Event()
        self.rounds = 0  # pipelines sent
        self._task = asyncio.get_running_loop().create_task(self._run(), name="redis mirror")

    @classmethod
    def of_this_loop(cls) -> MirrorWriter:
        loop = asyncio.get_running_loop()
        writer = cls._writers.get(loop)
        if writer is None or writer._task.done():
            for closed in [other for other in cls._writers if other.is_closed()]:
                del cls._writers[closed]  # tests make many loops
            writer = cls._writers[loop] = cls()
        return writer

    def mark(self, mirror: RedisMirror) -> None:
        """``mirror`` has something to write."""
        self._dirty[mirror] = None
        if not self._wake.is_set():
            self._wake.set()

    def forget(self, mirror: RedisMirror) -> None:
        self._dirty.pop(mirror, None)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            # One mode for every stream of a process: without takeover (no fenced
            # view), a round waits to carry several events.
            if self._dirty and next(iter(self._dirty)).view is None:
                await asyncio.sleep(settings.SLUICE_REDIS_BATCH_SECONDS)
            self._wake.clear()
            mirrors, self._dirty = list(self._dirty), {}
            if mirrors:
                await self._round(mirrors)

    async def _round(self, mirrors: list[RedisMirror]) -> None:
        client = async_client()
        self.rounds += 1
        try:
            async with client.pipeline(transaction=False) as pipe:
                reached = [m.queue(pipe) for m in mirrors]
                replies = await pipe.execute(raise_on_error=False)
        except (redis.RedisError, OSError) as error:
            for mirror in mirrors:
                mirror.failed(error)
            return
        except Exception as error:  # a bug: the streams lose their copy, not the writer
            logger.exception("redis mirror round failed")
            for mirror in mirrors:
                mirror.failed(error)
            return
        again = []
        start = 0
        for mirror, seq in zip(mirrors, reached, strict=True):
            if not mirror.written(replies[start : start + mirror.sent], seq):
                again.append(mirror)
            start += mirror.sent
        if again:
            with contextlib.suppress(redis.RedisError, OSError):
                await client.script_load(OWNED_WRITE)
            for mirror in again:
                self.mark(mirror)

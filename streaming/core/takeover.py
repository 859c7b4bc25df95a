"""Stream takeover: a stream outlives the instance that generated it.

Every worker process (an instance, ``audit.instance.instance_id``) runs one
``Takeover`` task while Redis is configured. Once a second it

- refreshes the heartbeat of the streams it generates: one ZADD (``XX``:
  never bringing back an ended one) of their ids, scored with the time, in
  ``sluice:streams:running`` (a stream's mirror adds it with its meta hash,
  which holds the request; its last batch removes it);
- looks for streams whose heartbeat is older than SLUICE_TAKEOVER_SECONDS,
  claims each with one Lua script (the score still stale: it becomes this
  instance's heartbeat and the meta's owner; exactly one claimant wins), and
  carries it on: a new StreamSession with the same id whose log starts as the
  Redis log ends, continued with the route's mid-stream continuation policy
  (streaming.core.takeover_state), appending to the same Redis log.

Readers anywhere resume with their cursor and see one stream: local readers
were only ever sent what Redis holds (streaming.core.durable).

At shutdown, streams still running at the grace deadline are handed over:
stopped without END, their last events written, their heartbeat set to 0 so
another instance claims them at its next look.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

import orjson
import redis.asyncio as redis
from django.conf import settings

from accounts.identity import AppIdentity
from accounts.limiter import limiter
from audit.instance import instance_id
from gateway.redis import async_client
from streaming.core import session as sessions
from streaming.core.admission import Admission
from streaming.core.events import END, ERROR, Entry, Inbound
from streaming.core.redis_log import RUNNING_KEY, log_key, meta_key, subscribe
from streaming.core.shutdown import draining
from streaming.core.takeover_state import _lost, adopt, ended
from streaming.observability import metrics
from streaming.observability.logging import warn_throttled
from streaming.providers import ChatRequest
from streaming.routing.routes import resolve_route

logger = logging.getLogger("sluice.takeover")

BEAT_SECONDS = 1.0
# A stream handed over at shutdown is announced here: the others look at once.
HANDOVER_CHANNEL = "sluice:takeover"
SCAN_LIMIT = 100  # streams claimed per look, at most

# KEYS: running zset, meta hash. ARGV: stream id, stale before, now, claimant.
# {1, the owner it had}: claimed; {0}: someone is alive on it (or claimed it
# first); {-1}: it ended.
CLAIM = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return {0} end
if redis.call('HGET', KEYS[2], 'status') ~= 'running' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return {-1}
end
local owner = redis.call('HGET', KEYS[2], 'owner') or ''
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], 'owner', ARGV[4])
return {1, owner}
"""


async def claim(stream_id: str, *, stale_before: float, client: Any = None) -> str | None:
    """Claim ``stream_id`` if its heartbeat is older than ``stale_before`` (see
    CLAIM); the instance it is taken from, or None if not claimed."""
    client = client or async_client()
    keys = [RUNNING_KEY, meta_key(stream_id)]
    args = [stream_id, repr(stale_before), repr(time.time()), instance_id()]
    reply: Any = await client.eval(CLAIM, len(keys), *keys, *args)
    if int(reply[0]) != 1:
        return None
    return (reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])) or "unknown"


async def beat() -> None:
    """Refresh the heartbeat of the streams this instance generates."""
    ids = [sid for sid, s in sessions._sessions.items() if not s.handing_over]
    if ids:
        now = time.time()
        await async_client().zadd(RUNNING_KEY, dict.fromkeys(ids, now), xx=True)


async def look() -> int:
    """Claim and carry on the orphaned streams; how many were taken over."""
    stale_before = time.time() - settings.SLUICE_TAKEOVER_SECONDS
    client = async_client()
    orphans: Any = await client.zrangebyscore(RUNNING_KEY, "-inf", stale_before, 0, SCAN_LIMIT)
    taken = 0
    for raw in orphans:
        stream_id = raw.decode()
        if stream_id in sessions._sessions:
            continue  # ours (a slow beat): never take over from oneself
        lost = await claim(stream_id, stale_before=stale_before, client=client)
        if lost is not None:
            taken += 1
            _spawn(carry_on(stream_id, lost))
    return taken


_tasks: set[asyncio.Task[None]] = set()


def _spawn(coro: Any) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def carry_on(stream_id: str, lost: str) -> None:
    """Carry on a stream this instance claimed (see the module's docstring)."""
    client = async_client()
    raw: Any = await client.hgetall(meta_key(stream_id))
    meta = {k.decode(): v for k, v in raw.items()}
    reply: Any = await client.xrange(log_key(stream_id))
    entries: list[Entry] = [(int(eid.split(b"-", 1)[0]), int(f[b"k"]), f[b"d"]) for eid, f in reply]
    if ended(entries):  # it ended as its instance went: nothing to carry on
        await _done(client, stream_id, give_back=lost)
        return
    outcome = "continued"
    try:
        session = await _session_of(stream_id, meta)
    except LookupError as error:
        await _end_in_redis(client, stream_id, entries, str(error), give_back=lost)
        metrics.stream_taken_over("failed")
        logger.warning("stream %s of %s not taken over: %s", stream_id, lost, error)
        return
    if [seq for seq, _, _ in entries] != list(range(1, len(entries) + 1)):
        session.adopted = None
        await _end_in_redis(client, stream_id, entries, "its log is incomplete", give_back=lost)
        metrics.stream_taken_over("failed")
        return
    started_at = float(meta.get("started_at", b"0") or 0) or time.time()
    adopted = adopt(session, entries, lost=lost, started_at=started_at)
    if adopted.refusal is not None:
        outcome = "ended"
    session.start()
    metrics.stream_taken_over(outcome)
    logger.warning(
        "stream %s taken over from %s at seq %d (%s)", stream_id, lost, adopted.seq, outcome
    )


async def _session_of(stream_id: str, meta: dict[str, bytes]) -> sessions.StreamSession:
    """A StreamSession for the request in ``meta`` (LookupError if it cannot be made)."""
    if "request" not in meta or "identity" not in meta:
        raise LookupError("the stream's request was not kept")
    request = orjson.loads(meta["request"])
    who = orjson.loads(meta["identity"])
    route = await resolve_route(meta["route"].decode())
    if route is None:
        raise LookupError("its model no longer exists")
    identity = AppIdentity(
        app_id=who["app_id"],
        client_id=who["client_id"],
        name=who["name"],
        token_id=who["token_id"],
        scopes=frozenset(),
        allowed_models=None,
        expires_at=math.inf,
        staff_user_id=who["staff_user_id"],
        staff_username=who["staff_username"],
        redact=tuple(who["redact"]),
    )
    chat = ChatRequest(
        model=route.model,
        messages=request["messages"],
        params=request["params"],
        stream=request["stream"],
        include_usage=request["include_usage"],
    )
    session = sessions.StreamSession(
        identity=identity,
        request=chat,
        route=route,
        protocol=meta.get("protocol", b"sse").decode(),
        client_ip=meta.get("client_ip", b"").decode() or None,
        inbound=Inbound(meta.get("api", b"chat").decode(), meta.get("echo", b"{}")),
        background=meta.get("background") == b"1",
        stream_id=stream_id,
    )
    session.created = int(meta.get("created", b"0") or 0) or session.created
    if meta.get("reservation"):  # the lost instance's admission: held and settled here
        admissions = limiter()
        session.admission = Admission(
            admissions, admissions.resume(orjson.loads(meta["reservation"]))
        )
    return session


async def _end_in_redis(
    client: Any, stream_id: str, entries: list[Entry], why: str, *, give_back: str
) -> None:
    """End a stream that cannot be carried on: an error event and END, in its log."""
    seq = entries[-1][0] if entries else 0
    error = _lost(why).payload()
    async with client.pipeline(transaction=False) as pipe:
        pipe.xadd(log_key(stream_id), {"k": ERROR, "d": error}, id=f"{seq + 1}-0")
        pipe.xadd(log_key(stream_id), {"k": END, "d": b""}, id=f"{seq + 2}-0")
        await pipe.execute()
    await _done(client, stream_id, give_back=give_back)


async def _done(client: Any, stream_id: str, *, give_back: str) -> None:
    """A claimed stream this instance does not carry on: ended, and named again as
    ``give_back``'s (the lost instance), so that the sweeper that finds its record
    open completes it as ``interrupted`` (streaming.core.recovery.taken_over).
    Left as this instance's, the record stayed ``in_progress``: every sweeper took
    this instance for a taker that would complete it."""
    ttl = settings.SLUICE_STREAM_TTL_SECONDS
    async with client.pipeline(transaction=False) as pipe:
        pipe.zrem(RUNNING_KEY, stream_id)
        pipe.hset(meta_key(stream_id), mapping={"status": "done", "owner": give_back})
        pipe.expire(meta_key(stream_id), ttl)
        pipe.expire(log_key(stream_id), ttl)
        await pipe.execute()


# -- handing over at shutdown ------------------------------------------------------
async def hand_over(session: sessions.StreamSession, *, flush_seconds: float = 2.0) -> bool:
    """Stop ``session`` without END, its events written, its claim released at
    once, its local readers ended (to resume elsewhere). Without its copy in
    Redis (takeover off, Redis failed) it is cancelled instead."""
    view = session.view
    if view is None or view.open:
        session.cancel("cancelled")
        return False
    session.handing_over = True
    if session.task is not None and not session.task.done():
        session.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await session.task
    mirror = session.mirror
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(flush_seconds):
            await view.wait_after(session.log.last_seq - 1)  # the mirror wrote them all
    view.leave()
    if mirror is not None:
        mirror.stop()
    client = async_client()
    await client.zadd(RUNNING_KEY, {session.id: 0}, xx=True)
    await client.publish(HANDOVER_CHANNEL, session.id)
    metrics.stream_taken_over("handed_over")
    return True


# -- the loop ----------------------------------------------------------------------
class Takeover:
    """This process's heartbeat of its streams and its look for orphans."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []
        self.wake = asyncio.Event()  # a stream was handed over somewhere: look now

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(self._run(), name="takeover"),
            loop.create_task(self._listen(), name="takeover listener"),
        ]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        next_beat = 0.0
        while True:
            self.wake.clear()
            try:
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + BEAT_SECONDS
                    await beat()
                if not draining():  # shutting down: it hands streams over, takes none
                    await look()
            except (redis.RedisError, OSError) as error:
                warn_throttled(logger, "takeover: redis failed: %s", type(error).__name__)
            except Exception:
                logger.exception("takeover look failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_beat - time.monotonic())):
                    await self.wake.wait()

    async def _listen(self) -> None:
        await subscribe(HANDOVER_CHANNEL, lambda _: self.wake.set())


_running: Takeover | None = None


def start_takeover() -> None:
    """Start this process's takeover loop (Redis mode, takeover on)."""
    global _running
    from gateway.redis import redis_enabled

    if _running is None and redis_enabled() and settings.SLUICE_TAKEOVER_SECONDS > 0:
        _running = Takeover()
        _running.start()


async def stop_takeover() -> None:
    global _running
    if _running is not None:
        await _running.stop()
        _running = None

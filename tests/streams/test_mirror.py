"""streaming.core.mirror against a real Redis: every local stream's log copied
in one pipeline a round, fenced once another instance owns the stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from audit.instance import instance_id
from gateway.redis import async_client, close_async_clients
from streaming.core.durable import DurableView
from streaming.core.events import END, START, TEXT
from streaming.core.log import LogLimits, MemoryStreamLog
from streaming.core.mirror import MirrorWriter, RedisMirror
from streaming.core.redis_log import RUNNING_KEY, log_key, meta_key
from tests.conftest import unique

LIMITS = LogLimits.shared(10_000, 1 << 20)


@pytest.fixture
async def client(settings, redis_url) -> AsyncIterator[aioredis.Redis]:  # type: ignore[no-untyped-def]
    settings.REDIS_URL = redis_url
    settings.SLUICE_REDIS_BATCH_SECONDS = 0.01
    yield async_client()
    await close_async_clients()


def mirrored(*, owned: bool) -> tuple[RedisMirror, MemoryStreamLog, DurableView | None]:
    log = MemoryStreamLog(LIMITS)
    view = DurableView(log) if owned else None
    mirror = RedisMirror(
        unique("chatcmpl-mirror"),
        log,
        app_id=7,
        model="alice-model",
        created=1,
        view=view,
        registration=(lambda: {"owner": instance_id()}) if owned else None,
    )
    mirror.start()
    return mirror, log, view


async def in_redis(client: aioredis.Redis, stream_id: str) -> list[tuple[int, int, bytes]]:
    reply: Any = await client.xrange(log_key(stream_id))
    return [(int(eid.split(b"-")[0]), int(f[b"k"]), f[b"d"]) for eid, f in reply]


def speak(log: MemoryStreamLog, words: list[str]) -> list[tuple[int, int, bytes]]:
    """``words`` appended to ``log`` as an answer, ended; every event of the log."""
    for word in words:
        log.append(TEXT, orjson.dumps(word))
    log.append(END, b"")
    return list(log.read_after(0, 1 << 30))


@pytest.mark.parametrize("owned", [False, True], ids=["plain", "takeover"])
async def test_fifty_streams_are_written_in_a_few_pipelines_not_one_each(client, owned) -> None:  # type: ignore[no-untyped-def]
    streams = [mirrored(owned=owned) for _ in range(50)]
    writer = MirrorWriter.of_this_loop()
    before = writer.rounds
    for _, log, _ in streams:
        log.append(START, orjson.dumps({"model": "m-1"}))
    expected = {m.stream_id: speak(log, ["Hello", " there"]) for m, log, _ in streams}
    ended = asyncio.Event()
    remaining = set(expected)

    def end_of(stream_id: str) -> Any:
        def done() -> None:
            remaining.discard(stream_id)
            if not remaining:
                ended.set()

        return done

    for mirror, _, _ in streams:
        mirror.on_end = end_of(mirror.stream_id)
    async with asyncio.timeout(10):
        await ended.wait()
    assert writer.rounds - before <= 3  # every stream's events and meta, together
    for mirror, _, view in streams:
        assert await in_redis(client, mirror.stream_id) == expected[mirror.stream_id]
        meta: Any = await client.hgetall(meta_key(mirror.stream_id))
        assert meta[b"status"] == b"done" and meta[b"model"] == b"m-1"
        assert await client.ttl(log_key(mirror.stream_id)) > 0
        assert await client.zscore(RUNNING_KEY, mirror.stream_id) is None
        if view is not None:
            assert view.ended and view.last_seq == 4


async def test_local_readers_see_only_what_redis_holds(client) -> None:  # type: ignore[no-untyped-def]
    mirror, log, view = mirrored(owned=True)
    assert view is not None
    log.append(START, orjson.dumps({"model": "m-1"}))
    assert view.last_seq == 0  # not in Redis yet
    await view.wait_after(0)
    assert view.last_seq == 1 and len(await in_redis(client, mirror.stream_id)) == 1
    assert await client.zscore(RUNNING_KEY, mirror.stream_id) is not None


async def test_a_stream_another_instance_owns_is_fenced(client) -> None:  # type: ignore[no-untyped-def]
    mirror, log, view = mirrored(owned=True)
    assert view is not None
    fenced = asyncio.Event()
    mirror.on_fenced = fenced.set
    log.append(START, orjson.dumps({"model": "m-1"}))
    await view.wait_after(0)
    await client.hset(meta_key(mirror.stream_id), "owner", "bob-instance")  # taken over

    log.append(TEXT, orjson.dumps("mine"))
    async with asyncio.timeout(5):
        await fenced.wait()
    assert view.gone and view.last_seq == 1
    assert len(await in_redis(client, mirror.stream_id)) == 1  # nothing written over bob's
    log.append(TEXT, orjson.dumps("later"))  # the writer has let go of it
    await asyncio.sleep(0.1)
    assert len(await in_redis(client, mirror.stream_id)) == 1


async def test_a_flushed_script_is_loaded_again_and_nothing_is_lost(client) -> None:  # type: ignore[no-untyped-def]
    mirror, log, view = mirrored(owned=True)
    assert view is not None
    log.append(START, orjson.dumps({"model": "m-1"}))
    await view.wait_after(0)
    await client.script_flush()  # Redis restarted, or someone flushed it

    expected = speak(log, ["after", " the", " flush"])
    async with asyncio.timeout(5):
        await view.wait_after(len(expected) - 1)  # written: readers may see it
    assert await in_redis(client, mirror.stream_id) == expected
    assert view.ended and not view.open


async def test_with_redis_gone_readers_get_the_log_and_the_end_is_told(settings) -> None:  # type: ignore[no-untyped-def]
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    try:
        mirror, log, view = mirrored(owned=True)
        assert view is not None
        told = asyncio.Event()
        mirror.on_end = told.set
        log.append(START, orjson.dumps({"model": "m-1"}))
        async with asyncio.timeout(10):
            await told.wait()
        assert view.open and view.last_seq == 1  # local readers go on without the copy
    finally:
        await close_async_clients()

"""gateway.cache.SingleFlightCache: one load per key at a time, kept for a TTL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from gateway.cache import SingleFlightCache


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Loader:
    """Counts its loads; each load waits until the test releases it."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.release.set()

    def __call__(self, value: str | Exception) -> Callable[[], Awaitable[str]]:
        async def load() -> str:
            self.calls += 1
            await self.release.wait()
            if isinstance(value, Exception):
                raise value
            return value

        return load


def make_cache(clock: Clock, *, ttl: float = 10.0, max_entries: int = 100) -> SingleFlightCache:
    def keep(value: str) -> float:
        return 0.0 if value == "do-not-keep" else ttl

    return SingleFlightCache(ttl=keep, max_entries=max_entries, clock=clock)


async def test_concurrent_misses_share_one_load() -> None:
    cache, loader = make_cache(Clock()), Loader()
    loader.release.clear()

    waiters = [asyncio.create_task(cache.get("alice", loader("alice's value"))) for _ in range(5)]
    await asyncio.sleep(0)
    loader.release.set()

    assert await asyncio.gather(*waiters) == ["alice's value"] * 5
    assert loader.calls == 1
    assert await cache.get("alice", loader("reloaded")) == "alice's value"  # a hit
    assert loader.calls == 1


async def test_a_cancelled_waiter_does_not_cancel_the_shared_load() -> None:
    cache, loader = make_cache(Clock()), Loader()
    loader.release.clear()
    first = asyncio.create_task(cache.get("alice", loader("v")))
    second = asyncio.create_task(cache.get("alice", loader("v")))
    await asyncio.sleep(0)

    first.cancel()
    loader.release.set()

    assert await second == "v"
    assert cache.peek("alice") == "v"


async def test_a_load_racing_an_invalidation_is_returned_but_not_kept() -> None:
    cache, loader = make_cache(Clock()), Loader()
    loader.release.clear()
    racing = asyncio.create_task(cache.get("alice", loader("read before the change")))
    await asyncio.sleep(0)

    cache.invalidate()
    loader.release.set()

    assert await racing == "read before the change"
    assert cache.peek("alice") is None
    assert await cache.get("alice", loader("read after")) == "read after"
    assert loader.calls == 2


async def test_a_miss_after_an_invalidation_does_not_join_the_load_before_it() -> None:
    cache, loader = make_cache(Clock()), Loader()
    loader.release.clear()
    before = asyncio.create_task(cache.get("alice", loader("old")))
    await asyncio.sleep(0)

    cache.invalidate(lambda value: True)
    after = asyncio.create_task(cache.get("alice", loader("new")))
    await asyncio.sleep(0)
    loader.release.set()

    assert [await before, await after] == ["old", "new"]
    assert loader.calls == 2
    assert cache.peek("alice") == "new"


async def test_entries_expire_after_their_ttl() -> None:
    clock = Clock()
    cache, loader = make_cache(clock, ttl=10.0), Loader()
    await cache.get("alice", loader("first"))

    clock.now += 9.9
    assert await cache.get("alice", loader("second")) == "first"
    clock.now += 0.1
    assert cache.peek("alice") is None
    assert await cache.get("alice", loader("second")) == "second"
    assert loader.calls == 2


async def test_a_value_with_no_ttl_is_not_kept() -> None:
    cache, loader = make_cache(Clock()), Loader()

    await cache.get("charlie", loader("do-not-keep"))
    await cache.get("charlie", loader("do-not-keep"))

    assert loader.calls == 2
    assert len(cache) == 0


async def test_the_oldest_entry_is_evicted_first() -> None:
    cache, loader = make_cache(Clock(), max_entries=3), Loader()
    for key in ["alice", "bob", "charlie"]:
        await cache.get(key, loader(key))

    await cache.get("dave", loader("dave"))

    assert len(cache) == 3
    assert cache.peek("alice") is None
    assert [cache.peek(key) for key in ["bob", "charlie", "dave"]] == ["bob", "charlie", "dave"]


async def test_a_failing_load_is_shared_by_its_waiters_but_not_kept() -> None:
    cache, loader = make_cache(Clock()), Loader()
    loader.release.clear()
    failure = LookupError("the database is away")
    waiters = [asyncio.create_task(cache.get("bob", loader(failure))) for _ in range(3)]
    await asyncio.sleep(0)
    loader.release.set()

    results = await asyncio.gather(*waiters, return_exceptions=True)

    assert results == [failure] * 3
    assert loader.calls == 1
    assert await cache.get("bob", loader("bob's value")) == "bob's value"
    assert loader.calls == 2


async def test_invalidate_with_a_predicate_drops_only_matching_values() -> None:
    cache, loader = make_cache(Clock()), Loader()
    await cache.get("alice", loader("alice's value"))
    await cache.get("bob", loader("bob's value"))

    cache.invalidate(lambda value: value.startswith("bob"))

    assert cache.peek("alice") == "alice's value"
    assert cache.peek("bob") is None


def test_each_event_loop_gets_its_own_load() -> None:
    # A load left pending on a closed loop (a sync caller's async_to_sync) must
    # not be awaited from another loop.
    cache, loader = make_cache(Clock()), Loader()
    loader.release.clear()
    stuck = asyncio.new_event_loop()
    waiting = stuck.create_task(cache.get("alice", loader("never")))
    stuck.run_until_complete(asyncio.sleep(0))

    loader.release = asyncio.Event()
    loader.release.set()
    assert asyncio.run(cache.get("alice", loader("fresh"))) == "fresh"

    pending = asyncio.all_tasks(stuck)
    assert waiting in pending
    for task in pending:
        task.cancel()
    stuck.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    stuck.close()


async def test_a_stale_value_is_served_while_the_database_is_unreachable() -> None:
    from django.db import IntegrityError, OperationalError

    clock, loader = Clock(), Loader()
    cache = SingleFlightCache(
        ttl=lambda value: 10.0,
        max_entries=10,
        clock=clock,
        stale_on=(OperationalError,),
        stale_ok=lambda value: value != "expired token",
        stale_retry=1.0,
    )
    assert await cache.get("alice", loader("alice's route")) == "alice's route"
    clock.now += 11  # expired; the database is down

    down = OperationalError("connection refused")
    assert await cache.get("alice", loader(down)) == "alice's route"
    assert loader.calls == 2
    assert await cache.get("alice", loader(down)) == "alice's route"  # held a second
    assert loader.calls == 2
    clock.now += 1.5
    assert await cache.get("alice", loader("alice's new route")) == "alice's new route"

    # Never seen: nothing to fall back on. A data error is not an outage.
    with pytest.raises(OperationalError):
        await cache.get("bob", loader(down))
    clock.now += 11
    with pytest.raises(IntegrityError):
        await cache.get("alice", loader(IntegrityError("bad row")))
    # A value its owner says must not outlive its TTL (an expired token) is not served.
    await cache.get("charlie", loader("expired token"))
    clock.now += 11
    with pytest.raises(OperationalError):
        await cache.get("charlie", loader(down))

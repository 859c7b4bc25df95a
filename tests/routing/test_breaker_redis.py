"""RedisBreakers against a real Redis: two boards stand for two instances."""

from __future__ import annotations

import pytest

from gateway.redis import close_async_clients
from streaming.routing.breaker import RedisBreakers, target_key
from tests.conftest import unique


@pytest.fixture
def boards(settings, redis_url):
    settings.REDIS_URL = redis_url
    settings.SLUICE_BREAKER_FAILURES = 2
    settings.SLUICE_BREAKER_COOLDOWN_SECONDS = 5
    now = [1000.0]
    pair = RedisBreakers(), RedisBreakers()
    for board in pair:
        board.clock = lambda: now[0]
    return pair, now


async def test_only_one_instance_gets_the_half_open_probe(boards):
    (one, two), now = boards
    key = target_key(unique("p"), "m")
    try:
        await one.failure(key, "server_error: HTTP 500")
        await two.failure(key, "server_error: HTTP 500")
        two.cached.clear()  # as if its cache had expired
        await two.prefetch([key])
        assert not await two.admit(key)  # open everywhere

        now[0] += 5
        one.cached.clear()
        two.cached.clear()
        await one.prefetch([key])
        await two.prefetch([key])
        assert [await one.admit(key), await two.admit(key)] == [True, False]

        await one.success(key)  # the probe answered: closed for everybody
        two.cached.clear()
        await two.prefetch([key])
        assert await two.admit(key)
        assert two.get(key).failures == 0 and two.get(key).last_error
    finally:
        await close_async_clients()

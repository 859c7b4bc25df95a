"""The admission step itself, in memory and in Redis, on a clock the tests move."""

from __future__ import annotations

import asyncio
import os
import secrets
from calendar import timegm

import pytest

from accounts.limiter import Limiter, MemoryLimiter, RedisLimiter
from accounts.limits import (
    CONCURRENCY,
    MONTHLY_COST,
    MONTHLY_TOKENS,
    REQUESTS,
    SLOT_TTL_SECONDS,
    TOKENS,
    LimitExceeded,
    Limits,
    Window,
    duration,
)

REDIS_URL = os.environ.get("REDIS_URL", "")
# 2026-03-31 23:59:30 UTC: thirty seconds before a minute, and a month, end.
START = float(timegm((2026, 3, 31, 23, 59, 30)))


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
def kind(request: pytest.FixtureRequest, settings) -> str:
    if request.param == "redis":
        if not REDIS_URL:
            pytest.skip("needs REDIS_URL (CI sets it)")
        settings.REDIS_URL = REDIS_URL
    settings.SLUICE_APP_MAX_CONCURRENT_STREAMS = 0
    return str(request.param)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make(kind: str, clock: Clock):
    """A limiter; each call another instance sharing Redis (in memory: the one
    store of the process, so the same instance)."""
    memory = MemoryLimiter(clock=clock)

    def build() -> Limiter:
        return memory if kind == "memory" else RedisLimiter(clock=clock)

    return build


def app() -> str:
    return "test-" + secrets.token_hex(8)  # Redis is shared: each test its own app


async def refused(limiter: Limiter, app_name: str, limits: Limits, **ask) -> LimitExceeded:
    with pytest.raises(LimitExceeded) as caught:
        await limiter.reserve(app=app_name, limits=limits, **ask)
    return caught.value


async def test_requests_per_minute_hold_until_the_next_minute(make, clock):
    limiter, name, limits = make(), app(), Limits(requests_per_minute=2)
    first = await limiter.reserve(app=name, limits=limits, tokens=10)
    await limiter.reserve(app=name, limits=limits, tokens=10)

    refusal = await refused(limiter, name, limits, tokens=10)

    assert refusal.limit == REQUESTS and not refusal.budget
    assert refusal.retry_after == pytest.approx(30.0)
    assert first.headers() == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "30s",
    }
    clock.now += 30
    assert (await limiter.reserve(app=name, limits=limits, tokens=10)).quota.used[REQUESTS] == 1


async def test_tokens_per_minute_take_the_estimate_and_settle_to_the_real_use(make):
    limiter, name, limits = make(), app(), Limits(tokens_per_minute=1000)
    held = await limiter.reserve(app=name, limits=limits, tokens=600)
    refusal = await refused(limiter, name, limits, tokens=600)
    assert refusal.limit == TOKENS and refusal.quota.used[TOKENS] == 600

    limiter.settle(held, tokens=150, cost_usd=0)
    limiter.settle(held, tokens=150, cost_usd=0)  # once only
    await limiter.drain()

    after = await limiter.reserve(app=name, limits=limits, tokens=600)
    assert after.quota.used[TOKENS] == 750
    assert after.headers()["x-ratelimit-remaining-tokens"] == "250"


async def test_concurrency_slots_free_on_settle_and_expire_when_never_settled(make, clock):
    limiter, name, limits = make(), app(), Limits(concurrent_streams=1)
    held = await limiter.reserve(app=name, limits=limits, tokens=1)
    assert (await refused(limiter, name, limits, tokens=1)).limit == CONCURRENCY

    limiter.settle(held, tokens=1, cost_usd=0)
    await limiter.drain()
    await limiter.reserve(app=name, limits=limits, tokens=1)  # this one is never settled

    other = make()  # another process (Redis): the first was killed while it held the slot
    assert (await refused(other, name, limits, tokens=1)).limit == CONCURRENCY
    clock.now += SLOT_TTL_SECONDS + 1
    await other.reserve(app=name, limits=limits, tokens=1)


async def test_a_running_request_keeps_its_slot_past_the_ttl(make, clock):
    limiter, name, limits = make(), app(), Limits(concurrent_streams=1)
    held = await limiter.reserve(app=name, limits=limits, tokens=1)
    for _ in range(4):  # the refresher runs while the request does
        clock.now += SLOT_TTL_SECONDS / 2
        await limiter._refresh(list(limiter._live.values()))
    assert (await refused(limiter, name, limits, tokens=1)).limit == CONCURRENCY
    limiter.settle(held, tokens=1, cost_usd=0)
    await limiter.drain()
    await limiter.reserve(app=name, limits=limits, tokens=1)


async def test_monthly_budgets_are_insufficient_quota_until_the_first(make, clock):
    limiter, name = make(), app()
    limits = Limits(monthly_tokens=1000, monthly_cost_usd=1.0)
    await limiter.reserve(app=name, limits=limits, tokens=900, cost_usd=0.5)

    tokens = await refused(limiter, name, limits, tokens=200, cost_usd=0.1)
    cost = await refused(limiter, name, limits, tokens=50, cost_usd=0.6)

    assert tokens.limit == MONTHLY_TOKENS and tokens.budget
    assert cost.limit == MONTHLY_COST and "$1.00" in cost.message
    assert tokens.retry_after == pytest.approx(30.0)  # the month ends with this minute
    clock.now += 31  # April: a new budget
    await limiter.reserve(app=name, limits=limits, tokens=900, cost_usd=0.9)


async def test_all_or_nothing_a_refusal_takes_nothing(make):
    limiter, name = make(), app()
    limits = Limits(requests_per_minute=5, tokens_per_minute=100, concurrent_streams=5)
    await limiter.reserve(app=name, limits=limits, tokens=90)
    for _ in range(3):
        await refused(limiter, name, limits, tokens=20)
    held = await limiter.reserve(app=name, limits=limits, tokens=10)
    assert held.quota.used == {
        REQUESTS: 2,
        TOKENS: 100,
        CONCURRENCY: 2,
        MONTHLY_TOKENS: 100,
        MONTHLY_COST: 0,
    }


async def test_no_overshoot_under_200_concurrent_reservations(make):
    limiters, name = [make(), make()], app()  # two instances (one Redis, for that kind)
    limits = Limits(tokens_per_minute=5_000)

    async def one(i: int) -> int:
        try:
            await limiters[i % 2].reserve(app=name, limits=limits, tokens=110)
        except LimitExceeded:
            return 0
        return 110

    admitted = await asyncio.gather(*(one(i) for i in range(200)))

    assert sum(admitted) <= 5_000
    assert sum(admitted) > 5_000 - 110  # and no more refused than needed (one store)


def test_the_default_share_applies_when_the_app_has_no_concurrency_of_its_own():
    assert Limits().caps(256)[CONCURRENCY] == 256
    assert Limits(concurrent_streams=3).caps(256)[CONCURRENCY] == 3


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.02, "20ms"), (1, "1s"), (8.64, "8.64s"), (360, "6m0s"), (3723, "1h2m3s"), (0, "0ms")],
)
def test_durations_are_written_as_openai_writes_them(seconds, text):
    assert duration(seconds) == text


def test_windows_are_utc_minutes_and_calendar_months():
    window = Window.at(START)
    assert window.month == "202603"
    assert window.minute_ends - START == 30
    assert window.month_ends == timegm((2026, 4, 1, 0, 0, 0))
    assert Window.at(float(timegm((2026, 12, 15, 0, 0, 0)))).month_ends == timegm(
        (2027, 1, 1, 0, 0, 0)
    )

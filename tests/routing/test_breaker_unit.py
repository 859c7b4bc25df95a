"""The circuit breaker's state machine, on a fake clock."""

from __future__ import annotations

import pytest

from streaming.routing import breaker
from streaming.routing.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerConfig,
    BreakerState,
    MemoryBreakers,
    admit,
    on_failure,
    on_success,
    status,
)

CONFIG = BreakerConfig(failures=3, cooldown=10.0)


def fail(state: BreakerState, now: float, times: int = 1) -> BreakerState:
    for _ in range(times):
        state = on_failure(state, CONFIG, now, "server_error: HTTP 500")
    return state


def test_opens_after_n_consecutive_failures():
    state = fail(BreakerState(), now=100.0, times=2)
    assert status(state, CONFIG, 100.0) == CLOSED
    state = fail(state, now=101.0)
    assert status(state, CONFIG, 101.0) == OPEN
    assert state.opened_at == 101.0 and state.last_error == "server_error: HTTP 500"
    assert admit(state, CONFIG, 105.0)[0] is False


def test_a_success_resets_the_count():
    state = on_success(fail(BreakerState(), now=1.0, times=2))
    state = fail(state, now=2.0, times=2)
    assert status(state, CONFIG, 2.0) == CLOSED
    assert state.last_error  # kept for the admin


def test_half_open_lets_exactly_one_probe_through():
    state = fail(BreakerState(), now=0.0, times=3)
    assert status(state, CONFIG, 10.0) == HALF_OPEN
    allowed, state = admit(state, CONFIG, 10.0)
    assert allowed
    assert admit(state, CONFIG, 10.5)[0] is False  # the probe is in flight


def test_probe_success_closes_and_probe_failure_reopens():
    opened = fail(BreakerState(), now=0.0, times=3)
    _, probing = admit(opened, CONFIG, 12.0)

    closed = on_success(probing)
    assert status(closed, CONFIG, 12.0) == CLOSED and closed.failures == 0

    reopened = fail(probing, now=12.5)
    assert status(reopened, CONFIG, 13.0) == OPEN
    assert status(reopened, CONFIG, 22.5) == HALF_OPEN  # a fresh cooldown from the probe


def test_a_lost_probe_expires():
    state = fail(BreakerState(), now=0.0, times=3)
    _, state = admit(state, CONFIG, 10.0)
    assert admit(state, CONFIG, 10.0 + CONFIG.probe_lease + 0.1)[0] is True


@pytest.fixture
def clock(monkeypatch, settings):
    settings.SLUICE_BREAKER_FAILURES = 2
    settings.SLUICE_BREAKER_COOLDOWN_SECONDS = 5
    settings.REDIS_URL = ""  # the in-process board (CI runs with Redis configured)
    now = [1000.0]
    board = MemoryBreakers()
    board.clock = lambda: now[0]
    monkeypatch.setattr(breaker, "_memory", board)
    return now


async def test_memory_breakers_follow_the_settings(clock):
    board = breaker.breakers()
    key = "sluice:breaker:p:m"
    await board.failure(key, "connect_error: refused")
    assert await board.admit(key)
    await board.failure(key, "connect_error: refused")
    assert not await board.admit(key)
    clock[0] += 5
    assert await board.admit(key)  # the probe
    assert not await board.admit(key)
    await board.success(key)
    assert await board.admit(key)
    [view] = breaker.circuit_views([("p", "m")])
    assert view.status == CLOSED and view.last_error == "connect_error: refused"

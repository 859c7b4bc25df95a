"""Circuit breakers, one per provider target (provider + upstream model).

After SLUICE_BREAKER_FAILURES consecutive failures a target's circuit
opens: the router skips it for SLUICE_BREAKER_COOLDOWN_SECONDS. Then it is
half-open: one request (the probe) goes through; its first token closes the
circuit, its failure opens it again for another cooldown.

The state machine is a set of plain functions over ``BreakerState`` with an
explicit clock, so it is tested without Redis or time passing. State lives in
process, or in Redis (one small hash per target, with a TTL) when REDIS_URL is
set, so every instance sees the same circuits. The request path reads Redis
through a local cache at most every STATE_CACHE_SECONDS per target, in one
pipeline per request; it writes only when something changes (a failure, the
first success after failures, a probe), and never per token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import redis
from django.conf import settings

from gateway.redis import async_client, redis_enabled, sync_client
from streaming.observability.logging import warn_throttled
from streaming.providers.base import UpstreamTarget

logger = logging.getLogger("sluice.breaker")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATE_CACHE_SECONDS = 0.5
KEY_PREFIX = "sluice:breaker:"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failures: int = 5
    cooldown: float = 30.0

    @property
    def probe_lease(self) -> float:
        """How long a probe holds the half-open slot before another may try."""
        return max(self.cooldown, 10.0)

    @property
    def ttl(self) -> int:
        """Redis keys outlive any cooldown, then vanish (a fresh target starts closed)."""
        return int(max(self.cooldown * 10, 3600))


def breaker_config() -> BreakerConfig:
    return BreakerConfig(
        failures=int(settings.SLUICE_BREAKER_FAILURES),
        cooldown=float(settings.SLUICE_BREAKER_COOLDOWN_SECONDS),
    )


@dataclass(frozen=True, slots=True)
class BreakerState:
    """One target's circuit. Times are epoch seconds (shared across instances)."""

    failures: int = 0
    opened_at: float | None = None
    probe_until: float | None = None
    last_error: str = ""
    last_failure_at: float | None = None

    @property
    def clean(self) -> bool:
        return self.failures == 0 and self.opened_at is None and self.probe_until is None


# -- the state machine ------------------------------------------------------
def status(state: BreakerState, config: BreakerConfig, now: float) -> str:
    if state.opened_at is None:
        return CLOSED
    return OPEN if now < state.opened_at + config.cooldown else HALF_OPEN


def admit(state: BreakerState, config: BreakerConfig, now: float) -> tuple[bool, BreakerState]:
    """May a request use the target? In half-open, the first caller takes the probe."""
    current = status(state, config, now)
    if current == CLOSED:
        return True, state
    if current == OPEN or (state.probe_until is not None and state.probe_until > now):
        return False, state
    return True, replace(state, probe_until=now + config.probe_lease)


def on_failure(state: BreakerState, config: BreakerConfig, now: float, error: str) -> BreakerState:
    failures = state.failures + 1
    opened = failures >= config.failures
    return BreakerState(
        failures=failures,
        opened_at=now if opened else state.opened_at,
        probe_until=None if opened else state.probe_until,
        last_error=error,
        last_failure_at=now,
    )


def on_success(state: BreakerState) -> BreakerState:
    """Close the circuit; the last error stays for the admin to see."""
    return BreakerState(last_error=state.last_error, last_failure_at=state.last_failure_at)


def breaker_key(target: UpstreamTarget) -> str:
    return target_key(target.provider, target.model)


def target_key(provider: str, model: str) -> str:
    return f"{KEY_PREFIX}{provider}:{model}"


# -- stores -----------------------------------------------------------------
class MemoryBreakers:
    """Circuits of this process only (the embedded default)."""

    def __init__(self) -> None:
        self.states: dict[str, BreakerState] = {}
        self.clock = time.time

    async def prefetch(self, keys: Iterable[str]) -> None:
        return None

    def get(self, key: str) -> BreakerState:
        return self.states.get(key, BreakerState())

    async def admit(self, key: str) -> bool:
        allowed, self.states[key] = admit(self.get(key), breaker_config(), self.clock())
        return allowed

    async def success(self, key: str) -> None:
        state = self.get(key)
        if not state.clean:
            self.states[key] = on_success(state)

    async def failure(self, key: str, error: str) -> None:
        self.states[key] = on_failure(self.get(key), breaker_config(), self.clock(), error)


_FAILURE_LUA = """
local f = redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('HSET', KEYS[1], 'last_error', ARGV[2], 'last_failure_at', ARGV[1])
if f >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'opened_at', ARGV[1])
  redis.call('HDEL', KEYS[1], 'probe_until')
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return redis.call('HGETALL', KEYS[1])
"""

# Take the half-open probe slot if the circuit is still half-open and nobody holds it.
_PROBE_LUA = """
local opened = tonumber(redis.call('HGET', KEYS[1], 'opened_at') or '')
if not opened then return 1 end
if tonumber(ARGV[1]) < opened + tonumber(ARGV[2]) then return 0 end
local probe = tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '') or 0
if probe > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'probe_until', ARGV[3])
return 1
"""


def _decode(raw: Mapping[bytes, bytes] | list[bytes]) -> BreakerState:
    if isinstance(raw, list):  # HGETALL from a script: a flat list
        raw = dict(zip(raw[::2], raw[1::2], strict=True))
    fields = {k.decode(): v.decode() for k, v in raw.items()}

    def number(name: str) -> float | None:
        return float(fields[name]) if fields.get(name) else None

    return BreakerState(
        failures=int(fields.get("failures") or 0),
        opened_at=number("opened_at"),
        probe_until=number("probe_until"),
        last_error=fields.get("last_error", ""),
        last_failure_at=number("last_failure_at"),
    )


class RedisBreakers:
    """Circuits shared by every instance through Redis, read through a local cache.

    Redis trouble fails open: a target is admitted when its state is unknown.
    """

    def __init__(self) -> None:
        self.cached: dict[str, tuple[float, BreakerState]] = {}
        self.clock = time.time

    def get(self, key: str) -> BreakerState:
        hit = self.cached.get(key)
        return hit[1] if hit else BreakerState()

    def _keep(self, key: str, state: BreakerState) -> None:
        self.cached[key] = (time.monotonic() + STATE_CACHE_SECONDS, state)

    async def prefetch(self, keys: Iterable[str]) -> None:
        """Refresh stale cached states: at most one pipeline."""
        now = time.monotonic()
        stale = [k for k in keys if self.cached.get(k, (0.0,))[0] <= now]
        if not stale:
            return
        try:
            async with async_client().pipeline(transaction=False) as pipe:
                for key in stale:
                    pipe.hgetall(key)
                results = await pipe.execute()
        except (redis.RedisError, OSError):
            warn_throttled(logger, "could not read circuit breakers from Redis")
            return
        for key, raw in zip(stale, results, strict=True):
            self._keep(key, _decode(raw))

    async def admit(self, key: str) -> bool:
        config, now = breaker_config(), self.clock()
        state = self.get(key)
        if status(state, config, now) == CLOSED:
            return True
        allowed, _ = admit(state, config, now)
        if not allowed:
            return False
        try:
            script = async_client().register_script(_PROBE_LUA)
            taken = await script(keys=[key], args=[now, config.cooldown, now + config.probe_lease])
        except (redis.RedisError, OSError):
            return True
        # Either way, this instance does not send another probe until the cache refreshes.
        self._keep(key, replace(state, probe_until=now + config.probe_lease))
        return bool(taken)

    async def success(self, key: str) -> None:
        state = self.get(key)
        if state.clean:
            return
        try:
            async with async_client().pipeline(transaction=True) as pipe:
                pipe.hdel(key, "opened_at", "probe_until")
                pipe.hset(key, "failures", 0)
                await pipe.execute()
        except (redis.RedisError, OSError):
            warn_throttled(logger, "could not close a circuit in Redis")
        self._keep(key, on_success(state))

    async def failure(self, key: str, error: str) -> None:
        config = breaker_config()
        try:
            script = async_client().register_script(_FAILURE_LUA)
            raw = await script(
                keys=[key], args=[self.clock(), error[:300], config.failures, config.ttl]
            )
        except (redis.RedisError, OSError):
            warn_throttled(logger, "could not record a failure in Redis")
            return
        self._keep(key, _decode(raw))


_memory = MemoryBreakers()
_redis = RedisBreakers()


def breakers() -> MemoryBreakers | RedisBreakers:
    """This process's breakers: shared through Redis when it is configured."""
    return _redis if redis_enabled() else _memory


# -- for the admin (sync) ---------------------------------------------------
@dataclass(frozen=True, slots=True)
class CircuitView:
    """What the admin shows about one target's circuit."""

    status: str
    failures: int
    since: float | None
    last_error: str
    last_failure_at: float | None


def _read_states(keys: list[str]) -> list[BreakerState]:
    if not redis_enabled():
        return [_memory.get(key) for key in keys]
    pipe = sync_client().pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    return [_decode(raw) for raw in pipe.execute()]


def circuit_views(targets: list[tuple[str, str]]) -> list[CircuitView]:
    """The circuits of (provider, upstream model) pairs, for display."""
    config, now = breaker_config(), time.time()
    states = _read_states([target_key(p, m) for p, m in targets])
    return [
        CircuitView(
            status=status(s, config, now),
            failures=s.failures,
            since=s.opened_at,
            last_error=s.last_error,
            last_failure_at=s.last_failure_at,
        )
        for s in states
    ]


def reset_circuits(targets: list[tuple[str, str]]) -> None:
    """Close these circuits now (an admin action, e.g. after fixing a key)."""
    keys = [target_key(p, m) for p, m in targets]
    for key in keys:
        _memory.states.pop(key, None)
        _redis.cached.pop(key, None)
    if redis_enabled() and keys:
        sync_client().delete(*keys)

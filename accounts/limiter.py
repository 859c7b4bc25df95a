"""The atomic admission step of accounts.limits, in Redis or in process memory.

``RedisLimiter`` checks and takes all five counters in one Lua script, so
instances sharing Redis never admit past a limit between a read and a
write; ``MemoryLimiter`` does the same between two awaits. Both free
expired concurrency slots before counting them, and refresh the slots of
their own running requests (one batch every third of ``SLOT_TTL_SECONDS``).

When Redis cannot be reached, requests are admitted (a limit outage must not
be a gateway outage) and a warning is logged.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from typing import Any

from django.conf import settings
from redis.exceptions import RedisError

from accounts.limits import (
    CHECK_ORDER,
    CONCURRENCY,
    COUNTERS,
    MONTHLY_COST,
    MONTHLY_TOKENS,
    NANO_USD,
    REQUESTS,
    SLOT_TTL_SECONDS,
    TOKENS,
    LimitExceeded,
    Limits,
    Quota,
    Reservation,
    Window,
)
from gateway.redis import async_client, redis_enabled

logger = logging.getLogger("sluice.limits")

MINUTE_KEY_TTL = 120  # seconds a minute window's counters outlive its start
MONTH_KEY_GRACE = 86_400  # a month's counters outlive its end by a day

Counts = dict[str, int]


def keys(app: str, window: Window) -> dict[str, str]:
    """The Redis key of each counter of ``app`` (a client id) in ``window``
    (one hash slot per app: a cluster can run the script)."""
    base = f"sluice:limit:{{{app}}}"
    return {
        REQUESTS: f"{base}:rpm:{window.minute}",
        TOKENS: f"{base}:tpm:{window.minute}",
        CONCURRENCY: f"{base}:slots",
        MONTHLY_TOKENS: f"{base}:tokens:{window.month}",
        MONTHLY_COST: f"{base}:cost:{window.month}",
    }


class Limiter(ABC):
    """Reserves and settles the counters of apps' limits."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._live: dict[str, tuple[str, Reservation]] = {}  # id -> (app, reservation)
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def reserve(
        self, *, app: str, limits: Limits, tokens: int, cost_usd: float = 0.0
    ) -> Reservation:
        """Take one request, ``tokens`` and ``cost_usd`` (estimates) and a slot
        for ``app`` (a client id), or none of them; LimitExceeded if a limit
        would be passed."""
        window = Window.at(self.clock())
        caps = limits.caps(settings.SLUICE_APP_MAX_CONCURRENT_STREAMS)
        cost = round(max(cost_usd, 0.0) * NANO_USD)
        asks = {REQUESTS: 1, TOKENS: tokens, CONCURRENCY: 1, MONTHLY_TOKENS: tokens}
        asks[MONTHLY_COST] = cost
        rid = secrets.token_hex(8)
        found = await self._admit(app, keys(app, window), caps, asks, window, rid)
        if found is None:
            empty = Quota(caps, dict.fromkeys(COUNTERS, 0), window)
            return Reservation(rid, app, tokens, cost, window, empty, settled=True)
        refused, used = found
        if refused is not None:
            raise LimitExceeded(refused, Quota(caps, used, window), asked=asks[refused])
        after = {c: used[c] + asks[c] for c in COUNTERS}
        reservation = Reservation(rid, app, tokens, cost, window, Quota(caps, after, window))
        self._track(app, reservation)
        return reservation

    def resume(self, kept: dict[str, Any]) -> Reservation:
        """A reservation another instance took (``Reservation.kept``), held from
        now on by this one: its slot kept alive until it is settled here."""
        window = Window.at(float(kept["at"]))
        empty = Quota(dict.fromkeys(COUNTERS, 0), dict.fromkeys(COUNTERS, 0), window)
        reservation = Reservation(
            str(kept["id"]),
            str(kept["app"]),
            int(kept["tokens"]),
            int(kept["cost_nano"]),
            window,
            empty,
        )
        self._track(reservation.app, reservation)
        return reservation

    def settle(self, reservation: Reservation, *, tokens: int, cost_usd: float) -> None:
        """Free the slot and replace the estimates by what was used (once)."""
        if reservation.settled:
            return
        reservation.settled = True
        self._live.pop(reservation.id, None)
        token_delta = tokens - reservation.tokens
        cost_delta = round(max(cost_usd, 0.0) * NANO_USD) - reservation.cost_nano
        self._run(self._settle(reservation, token_delta, cost_delta))

    # -- slots of running requests stay alive while they run ----------------
    def _track(self, app: str, reservation: Reservation) -> None:
        self._live[reservation.id] = (app, reservation)
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(SLOT_TTL_SECONDS / 3, self._refresh_due)

    def _refresh_due(self) -> None:
        self._timer = None
        if self._live:
            self._run(self._refresh(list(self._live.values())))
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(SLOT_TTL_SECONDS / 3, self._refresh_due)

    def _run(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for settles and refreshes under way (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- the backend ----------------------------------------------------------
    @abstractmethod
    async def _admit(
        self, app: str, keys: dict[str, str], caps: Counts, asks: Counts, window: Window, rid: str
    ) -> tuple[str | None, Counts] | None:
        """(the counter refused or None, the counts before this request); None
        when the counters cannot be reached (admitted, nothing held)."""

    @abstractmethod
    async def _settle(self, reservation: Reservation, token_delta: int, cost_delta: int) -> None:
        pass

    @abstractmethod
    async def _refresh(self, live: list[tuple[str, Reservation]]) -> None:
        pass


# -- Redis ----------------------------------------------------------------------
# KEYS: the five counters in COUNTERS order (rpm, tpm, slots, tokens, cost).
# ARGV: now (ms), reservation id, tokens, cost (nano-USD), the five caps (0: none),
#       minute TTL (s), slot TTL (ms), month TTL (s).
# Returns {refused (0: admitted, else the counter's index), the five counts before}.
RESERVE = """
local now = tonumber(ARGV[1])
local asks = {1, tonumber(ARGV[3]), 1, tonumber(ARGV[3]), tonumber(ARGV[4])}
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local used = {}
for i = 1, 5 do
  if i == 3 then used[i] = redis.call('ZCARD', KEYS[3])
  else used[i] = tonumber(redis.call('GET', KEYS[i]) or '0') end
end
for _, i in ipairs({4, 5, 1, 2, 3}) do
  local cap = tonumber(ARGV[4 + i])
  if cap > 0 and used[i] + asks[i] > cap then
    return {i, used[1], used[2], used[3], used[4], used[5]}
  end
end
local amounts = {'1', ARGV[3], false, ARGV[3], ARGV[4]}
local ttls = {ARGV[10], ARGV[10], false, ARGV[12], ARGV[12]}
for _, i in ipairs({1, 2, 4, 5}) do
  redis.call('INCRBY', KEYS[i], amounts[i])
  redis.call('EXPIRE', KEYS[i], ttls[i])
end
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[11]), ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[11])
return {0, used[1], used[2], used[3], used[4], used[5]}
"""

# KEYS: the reservation's token window, slots, month tokens, month cost.
# ARGV: reservation id, token delta, cost delta. Counts never go below 0.
SETTLE = """
redis.call('ZREM', KEYS[2], ARGV[1])
local deltas = {ARGV[2], false, ARGV[2], ARGV[3]}
for _, i in ipairs({1, 3, 4}) do
  if tonumber(deltas[i]) ~= 0 and redis.call('EXISTS', KEYS[i]) == 1 then
    if redis.call('INCRBY', KEYS[i], deltas[i]) < 0 then
      redis.call('SET', KEYS[i], 0, 'KEEPTTL')
    end
  end
end
return 1
"""


class RedisLimiter(Limiter):
    """The counters in Redis, shared by every instance."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock=clock)
        self._scripts: dict[int, tuple[Any, Any]] = {}

    def _script(self, index: int) -> Any:
        client = async_client("limits")
        scripts = self._scripts.get(id(client))
        if scripts is None:
            scripts = (client.register_script(RESERVE), client.register_script(SETTLE))
            self._scripts = {id(client): scripts}
        return scripts[index]

    async def _admit(
        self, app: str, keys: dict[str, str], caps: Counts, asks: Counts, window: Window, rid: str
    ) -> tuple[str | None, Counts] | None:
        month_ttl = int(window.month_ends - window.now) + MONTH_KEY_GRACE
        args = [int(window.now * 1000), rid, asks[TOKENS], asks[MONTHLY_COST]]
        args += [caps[c] for c in COUNTERS]
        args += [MINUTE_KEY_TTL, int(SLOT_TTL_SECONDS * 1000), month_ttl]
        try:
            reply = await self._script(0)(keys=[keys[c] for c in COUNTERS], args=args)
        except RedisError as error:
            logger.warning("limits not enforced: Redis unreachable (%s)", type(error).__name__)
            return None
        refused = COUNTERS[int(reply[0]) - 1] if int(reply[0]) else None
        return refused, {c: int(v) for c, v in zip(COUNTERS, reply[1:], strict=True)}

    async def _settle(self, reservation: Reservation, token_delta: int, cost_delta: int) -> None:
        held = keys(reservation.app, reservation.window)
        names = [held[TOKENS], held[CONCURRENCY], held[MONTHLY_TOKENS], held[MONTHLY_COST]]
        try:
            await self._script(1)(keys=names, args=[reservation.id, token_delta, cost_delta])
        except RedisError as error:
            logger.warning("a reservation was not settled (%s)", type(error).__name__)

    async def _refresh(self, live: list[tuple[str, Reservation]]) -> None:
        ttl = int(SLOT_TTL_SECONDS * 1000)
        expires = int(self.clock() * 1000) + ttl
        try:
            async with async_client("limits").pipeline(transaction=False) as pipe:
                for app, reservation in live:
                    slots = keys(app, reservation.window)[CONCURRENCY]
                    pipe.zadd(slots, {reservation.id: expires}, xx=True)
                    pipe.pexpire(slots, ttl)
                await pipe.execute()
        except RedisError as error:
            logger.warning("concurrency slots not refreshed (%s)", type(error).__name__)


# -- process memory -----------------------------------------------------------
class MemoryLimiter(Limiter):
    """The counters in this process (no Redis): the same rules, one instance."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock=clock)
        self._counts: dict[str, tuple[int, float]] = {}  # key -> (count, expires at)
        self._slots: dict[str, dict[str, float]] = {}  # key -> {reservation id: expires at}

    def _count(self, key: str, now: float) -> int:
        count, expires = self._counts.get(key, (0, 0.0))
        return count if expires > now else 0

    def _live_slots(self, key: str, now: float) -> dict[str, float]:
        slots = self._slots.setdefault(key, {})
        for rid in [r for r, expires in slots.items() if expires <= now]:
            del slots[rid]
        return slots

    async def _admit(
        self, app: str, keys: dict[str, str], caps: Counts, asks: Counts, window: Window, rid: str
    ) -> tuple[str | None, Counts] | None:
        now = window.now
        slots = self._live_slots(keys[CONCURRENCY], now)
        used = {c: self._count(keys[c], now) for c in COUNTERS if c != CONCURRENCY}
        used[CONCURRENCY] = len(slots)
        for counter in CHECK_ORDER:
            if caps[counter] and used[counter] + asks[counter] > caps[counter]:
                return counter, used
        if len(self._counts) > 10_000:
            self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
        for counter in (REQUESTS, TOKENS):
            self._counts[keys[counter]] = (used[counter] + asks[counter], now + MINUTE_KEY_TTL)
        for counter in (MONTHLY_TOKENS, MONTHLY_COST):
            expires = window.month_ends + MONTH_KEY_GRACE
            self._counts[keys[counter]] = (used[counter] + asks[counter], expires)
        slots[rid] = now + SLOT_TTL_SECONDS
        return None, used

    async def _settle(self, reservation: Reservation, token_delta: int, cost_delta: int) -> None:
        held = keys(reservation.app, reservation.window)
        self._slots.get(held[CONCURRENCY], {}).pop(reservation.id, None)
        now = self.clock()
        for key, delta in (
            (held[TOKENS], token_delta),
            (held[MONTHLY_TOKENS], token_delta),
            (held[MONTHLY_COST], cost_delta),
        ):
            count, expires = self._counts.get(key, (0, 0.0))
            if delta and expires > now:
                self._counts[key] = (max(0, count + delta), expires)

    async def _refresh(self, live: list[tuple[str, Reservation]]) -> None:
        expires = self.clock() + SLOT_TTL_SECONDS
        for app, reservation in live:
            slots = self._slots.get(keys(app, reservation.window)[CONCURRENCY], {})
            if reservation.id in slots:
                slots[reservation.id] = expires


_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Limiter] = (
    weakref.WeakKeyDictionary()
)


def limiter() -> Limiter:
    """This event loop's limiter: Redis when it is configured, else memory."""
    loop = asyncio.get_running_loop()
    found = _limiters.get(loop)
    wanted = RedisLimiter if redis_enabled() else MemoryLimiter
    if not isinstance(found, wanted):
        found = _limiters[loop] = wanted()
    return found

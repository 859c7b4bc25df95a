"""Per-app limits: what a request may reserve, and what is left.

Admission reserves, all or nothing in one atomic step, one request in the
minute's request window, the request's token estimate in the minute's token
window and in the month's token budget, its estimated cost in the month's
cost budget, and one concurrency slot. When the request ends its
``Reservation`` is settled: the slot is freed and the estimate is replaced
by what the request really used. The step runs in Redis (one Lua call, see
``accounts.limiter``) when ``REDIS_URL`` is set, so every instance counts
together; in process memory otherwise, with the same semantics.

Windows are fixed and aligned: the minute windows start on each UTC minute
(a request's tokens count in the minute it was admitted, even when it ends
later), the budgets on the first of each calendar month, UTC. A fixed window
lets a burst at the end of one minute be followed by another at the start of
the next; it never admits more than the limit within one window.

Concurrency slots expire ``SLOT_TTL_SECONDS`` after they were last
refreshed, and the process that holds them refreshes them while its
requests run: a process killed mid-stream frees its slots within that time.
"""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

SLOT_TTL_SECONDS = 30.0
NANO_USD = 1_000_000_000  # costs are counted in integer nano-dollars (no float drift)

# The five counters, in the order the atomic step checks them: a budget that
# is spent is said first (waiting for the next minute would not help).
MONTHLY_TOKENS = "monthly_tokens"
MONTHLY_COST = "monthly_cost_usd"
REQUESTS = "requests_per_minute"
TOKENS = "tokens_per_minute"
CONCURRENCY = "concurrent_streams"
COUNTERS = (REQUESTS, TOKENS, CONCURRENCY, MONTHLY_TOKENS, MONTHLY_COST)
CHECK_ORDER = (MONTHLY_TOKENS, MONTHLY_COST, REQUESTS, TOKENS, CONCURRENCY)
BUDGETS = frozenset({MONTHLY_TOKENS, MONTHLY_COST})


@dataclass(frozen=True, slots=True)
class Limits:
    """An app's limits (None: no limit), as its policy sets them."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_streams: int | None = None
    max_tokens: int | None = None
    max_tokens_mode: str = "clamp"
    monthly_tokens: int | None = None
    monthly_cost_usd: float | None = None

    @classmethod
    def of_policy(cls, policy: Any) -> Limits:
        cost = policy.monthly_cost_usd
        return cls(
            requests_per_minute=policy.requests_per_minute,
            tokens_per_minute=policy.tokens_per_minute,
            concurrent_streams=policy.concurrent_streams,
            max_tokens=policy.max_tokens,
            max_tokens_mode=policy.max_tokens_mode or "clamp",
            monthly_tokens=policy.monthly_tokens,
            monthly_cost_usd=float(cost) if cost is not None else None,
        )

    def caps(self, default_concurrency: int) -> dict[str, int]:
        """Each counter's cap as the atomic step takes it (0: none); the app's
        own concurrency, else the gateway's default share."""
        cost = self.monthly_cost_usd
        return {
            REQUESTS: self.requests_per_minute or 0,
            TOKENS: self.tokens_per_minute or 0,
            CONCURRENCY: self.concurrent_streams or default_concurrency,
            MONTHLY_TOKENS: self.monthly_tokens or 0,
            MONTHLY_COST: round(cost * NANO_USD) if cost else 0,
        }


NO_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Window:
    """The windows a moment falls in, and when each ends (epoch seconds)."""

    now: float
    minute: int  # minutes since the epoch
    month: str  # "YYYYMM"
    minute_ends: float
    month_ends: float

    @classmethod
    def at(cls, now: float) -> Window:
        minute = int(now // 60)
        day = datetime.fromtimestamp(now, UTC)
        year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
        month_ends = calendar.timegm((year, month, 1, 0, 0, 0))
        return cls(now, minute, f"{day.year:04d}{day.month:02d}", (minute + 1) * 60.0, month_ends)

    def resets(self, counter: str) -> float:
        """Seconds until ``counter``'s window starts over (a slot: a guess of 1 s)."""
        if counter in BUDGETS:
            return self.month_ends - self.now
        if counter == CONCURRENCY:
            return 1.0
        return self.minute_ends - self.now


@dataclass(frozen=True, slots=True)
class Quota:
    """What is left after an admission (or a refusal): the rate-limit headers."""

    caps: dict[str, int]
    used: dict[str, int]  # counts after this request (when admitted)
    window: Window

    def headers(self) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers, for the minute limits the app has."""
        headers: dict[str, str] = {}
        for counter, name in ((REQUESTS, "requests"), (TOKENS, "tokens")):
            cap = self.caps[counter]
            if cap:
                headers[f"x-ratelimit-limit-{name}"] = str(cap)
                headers[f"x-ratelimit-remaining-{name}"] = str(max(0, cap - self.used[counter]))
                headers[f"x-ratelimit-reset-{name}"] = duration(self.window.resets(counter))
        return headers


def duration(seconds: float) -> str:
    """A duration as OpenAI writes it in its reset headers: ``20ms``, ``1s``,
    ``8.64s``, ``6m0s``, ``1h2m3s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{round(secs, 3):.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}"
    return f"{int(minutes)}m{text}" if minutes else text


class LimitExceeded(Exception):
    """A request refused by one of its app's limits (``limit``: a counter name)."""

    def __init__(self, limit: str, quota: Quota, *, asked: int) -> None:
        self.limit = limit
        self.quota = quota
        self.asked = asked
        self.retry_after = quota.window.resets(limit)
        super().__init__(self.message)

    @property
    def budget(self) -> bool:
        """A monthly budget (OpenAI's ``insufficient_quota``), not a rate."""
        return self.limit in BUDGETS

    @property
    def message(self) -> str:
        cap, used = self.quota.caps[self.limit], self.quota.used[self.limit]
        if self.limit == MONTHLY_COST:
            return (
                f"You exceeded this app's monthly budget of ${cap / NANO_USD:.2f} "
                f"(used ${used / NANO_USD:.2f}); it renews on the 1st (UTC)."
            )
        if self.limit == MONTHLY_TOKENS:
            return (
                f"You exceeded this app's monthly budget of {cap} tokens (used {used}, "
                f"requested {self.asked}); it renews on the 1st (UTC)."
            )
        if self.limit == CONCURRENCY:
            return f"Rate limit reached for concurrent streams: limit {cap}, running {used}."
        unit = "requests" if self.limit == REQUESTS else "tokens"
        return (
            f"Rate limit reached for {unit} per minute (RPM/TPM): limit {cap}, used {used}, "
            f"requested {self.asked}. Please try again in {duration(self.retry_after)}."
        )


@dataclass(slots=True, eq=False)
class Reservation:
    """What one admitted request holds until it is settled."""

    id: str
    app: str  # the app's client id
    tokens: int
    cost_nano: int
    window: Window
    quota: Quota
    settled: bool = field(default=False)

    def headers(self) -> dict[str, str]:
        return self.quota.headers()

    def kept(self) -> dict[str, Any]:
        """What another instance needs to hold and settle this reservation
        (a stream taken over: streaming.core.takeover)."""
        return {
            "id": self.id,
            "app": self.app,
            "tokens": self.tokens,
            "cost_nano": self.cost_nano,
            "at": self.window.now,
        }

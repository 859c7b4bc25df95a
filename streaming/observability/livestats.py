"""This instance's live numbers for the staff dashboard, and their aggregation.

Each gateway process keeps a few minutes of rolling numbers (tokens/s, active
streams, first-token latencies, upstream attempts, errors and fallbacks per
provider) fed by the metrics hooks at stream start, first token and end, and
sampled once a second. With Redis, every instance also writes its snapshot
into one Redis hash each second; the dashboard reads them all and merges
them, so it shows the whole deployment whichever instance serves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import time
from collections import deque
from typing import Any

import orjson

from audit.writer import audit_writer_stats
from gateway.redis import async_client, redis_enabled
from streaming.observability.export import sync_multiprocess_audit
from streaming.observability.logging import warn_throttled

logger = logging.getLogger("sluice.livestats")

WINDOW_SECONDS = 300  # the rates and latencies the dashboard shows
HISTORY_POINTS = 120  # seconds of chart
MAX_STREAMS_LISTED = 100
REDIS_KEY = "sluice:dashboard:instances"
STALE_SECONDS = 5.0
INSTANCE = f"{socket.gethostname()}:{os.getpid()}"


def attempt_steps(attempts: list[Any]) -> list[tuple[str, str, str]]:
    """(provider, what followed its failure, phase) for each failed attempt that was
    followed by another: 'retry' on the same provider, else 'fallback'; the phase
    is 'mid_stream' once a chunk had gone out, else 'before_first_token'."""
    steps = []
    for failed, following in itertools.pairwise(attempts):
        kind = "retry" if following.provider == failed.provider else "fallback"
        started = failed.first_token_at is not None or following.continuation
        steps.append((failed.provider, kind, "mid_stream" if started else "before_first_token"))
    return steps


class InstanceStats:
    """Rolling numbers for one process; every method is O(1) or O(window)."""

    def __init__(self) -> None:
        self.tokens_done = 0  # tokens of streams that have ended
        self.ttfts: deque[tuple[float, float]] = deque(maxlen=2000)
        # One bucket per second: {provider: [attempts, errors, fallbacks]}.
        self.providers: deque[tuple[int, dict[str, list[int]]]] = deque()
        self.history: deque[tuple[int, int, float]] = deque(maxlen=HISTORY_POINTS)
        self.breakers: dict[str, str] = {}
        self._last_total: int | None = None
        self._last_sample = 0.0

    def record_ttft(self, seconds: float) -> None:
        self.ttfts.append((time.time(), seconds))

    def record_end(self, tokens: int, attempts: list[Any]) -> None:
        self.tokens_done += tokens
        bucket = self._bucket(int(time.time()))
        for attempt in attempts:
            counts = bucket.setdefault(attempt.provider, [0, 0, 0])
            counts[0] += 1
            counts[1] += attempt.outcome == "failed"
        for provider, kind, _phase in attempt_steps(attempts):
            if kind == "fallback":
                bucket.setdefault(provider, [0, 0, 0])[2] += 1

    def _bucket(self, second: int) -> dict[str, list[int]]:
        if not self.providers or self.providers[-1][0] != second:
            self.providers.append((second, {}))
        return self.providers[-1][1]

    def sample(self, now: float) -> None:
        """Once a second: tokens/s since the last sample, active streams, window trim."""
        sessions = _active_sessions()
        total = self.tokens_done + sum(_tokens(s) for s in sessions)
        if self._last_total is not None and now > self._last_sample:
            rate = max(0, total - self._last_total) / (now - self._last_sample)
            self.history.append((int(now), len(sessions), round(rate, 1)))
        self._last_total, self._last_sample = total, now
        horizon = now - WINDOW_SECONDS
        while self.providers and self.providers[0][0] < horizon:
            self.providers.popleft()
        while self.ttfts and self.ttfts[0][0] < horizon:
            self.ttfts.popleft()

    def snapshot(self) -> dict[str, Any]:
        """This instance's numbers, as JSON-ready data (what goes to Redis)."""
        sessions = _active_sessions()
        now = time.time()
        providers: dict[str, list[int]] = {}
        for _second, bucket in self.providers:
            for name, counts in bucket.items():
                total = providers.setdefault(name, [0, 0, 0])
                for i, value in enumerate(counts):
                    total[i] += value
        return {
            "instance": INSTANCE,
            "at": now,
            "active": len(sessions),
            "history": list(self.history),
            "ttft": [round(s, 4) for _t, s in self.ttfts],
            "providers": providers,
            "breakers": dict(self.breakers),
            "audit": audit_writer_stats(),
            "streams": [_stream_row(s, now) for s in sessions[:MAX_STREAMS_LISTED]],
        }


# The streams generating on this instance, by id (the metrics hooks keep it).
_active: dict[str, Any] = {}


def stream_started(stream: Any) -> None:
    _active[stream.id] = stream
    ensure_ticker()


def stream_ended(stream: Any, tokens: int) -> None:
    _active.pop(stream.id, None)
    STATS.record_end(tokens, stream.audit.attempts)


def _active_sessions() -> list[Any]:
    return list(_active.values())


def _tokens(session: Any) -> int:
    return sum(attempt.tokens for attempt in session.audit.attempts)


def _stream_row(session: Any, now: float) -> dict[str, Any]:
    audit = session.audit
    return {
        "id": session.id,
        "app": session.identity.name,
        "model": session.route.model,
        "provider": audit.attempts[-1].provider if audit.attempts else "",
        "transport": audit.protocol,
        "age": round(now - audit.started_at, 1),
        "tokens": _tokens(session),
        "readers": session.readers,
        "instance": INSTANCE,
    }


STATS = InstanceStats()


# -- the once-a-second tick -------------------------------------------------
_tick_loop: asyncio.AbstractEventLoop | None = None


def ensure_ticker() -> None:
    """Start this process's once-a-second sampling (idempotent, per event loop).

    A call_later chain, not a task: nothing is left pending when a loop closes.
    """
    global _tick_loop
    loop = asyncio.get_running_loop()
    if _tick_loop is loop:
        return
    _tick_loop = loop
    loop.call_soon(_tick, loop)


def _tick(loop: asyncio.AbstractEventLoop) -> None:
    if _tick_loop is not loop:
        return
    STATS.sample(time.time())
    sync_multiprocess_audit()
    if redis_enabled():
        loop.create_task(_publish())
    loop.call_later(1.0, _tick, loop)


async def _publish() -> None:
    try:
        async with asyncio.timeout(2.0):
            pipe = async_client().pipeline(transaction=False)
            pipe.hset(REDIS_KEY, INSTANCE, orjson.dumps(STATS.snapshot()))
            pipe.expire(REDIS_KEY, int(STALE_SECONDS * 4))
            await pipe.execute()
    except Exception as error:  # the dashboard must never hurt a stream
        warn_throttled(logger, "dashboard snapshot not published: %s", type(error).__name__)


async def deployment_snapshot() -> dict[str, Any]:
    """Every live instance's snapshot merged (this one's alone without Redis)."""
    ensure_ticker()
    snapshots = [STATS.snapshot()]
    if redis_enabled():
        with contextlib.suppress(Exception):
            snapshots = await _instance_snapshots() or snapshots
    return merge(snapshots)


async def _instance_snapshots() -> list[dict[str, Any]]:
    client = async_client()
    async with asyncio.timeout(2.0):
        raw: dict[Any, Any] = await client.hgetall(REDIS_KEY)
    now = time.time()
    others, stale = [], []
    for field, value in raw.items():
        snapshot = orjson.loads(value)
        if now - snapshot["at"] >= STALE_SECONDS:
            stale.append(field)
        elif snapshot["instance"] != INSTANCE:
            others.append(snapshot)
    if stale:
        await client.hdel(REDIS_KEY, *stale)
    return [STATS.snapshot(), *others]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def merge(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """One view of several instances: sums, pooled latencies, the worst breaker state."""
    history: dict[int, list[float]] = {}
    providers: dict[str, list[int]] = {}
    breakers: dict[str, str] = {}
    ttfts: list[float] = []
    streams: list[dict[str, Any]] = []
    for snap in snapshots:
        for second, active, rate in snap["history"]:
            point = history.setdefault(second, [0, 0.0])
            point[0] += active
            point[1] += rate
        for name, counts in snap["providers"].items():
            total = providers.setdefault(name, [0, 0, 0])
            for i, value in enumerate(counts):
                total[i] += value
        for name, state in snap["breakers"].items():
            breakers[name] = _worse(breakers.get(name), state)
        ttfts.extend(snap["ttft"])
        streams.extend(snap["streams"])
    # Each instance samples once a second, at its own phase: a second that some
    # have not sampled yet would show only the others' rate.
    latest = [snap["history"][-1] for snap in snapshots if snap["history"]]
    complete = min((point[0] for point in latest), default=0)
    points = sorted(p for p in history.items() if p[0] <= complete)[-HISTORY_POINTS:]
    streams.sort(key=lambda row: -row["age"])
    return {
        "at": time.time(),
        "instances": sorted(s["instance"] for s in snapshots),
        "active": sum(s["active"] for s in snapshots),
        "tokens_per_second": sum(point[2] for point in latest),
        "history": [[second, int(a), round(r, 1)] for second, (a, r) in points],
        "ttft_p50": percentile(ttfts, 0.5),
        "ttft_p95": percentile(ttfts, 0.95),
        "ttft_samples": len(ttfts),
        "providers": _provider_rows(providers, breakers),
        "audit_queue_depth": sum(s["audit"]["queue_depth"] for s in snapshots),
        "streams": streams[:MAX_STREAMS_LISTED],
        "window_seconds": WINDOW_SECONDS,
    }


def _provider_rows(
    providers: dict[str, list[int]], breakers: dict[str, str]
) -> list[dict[str, Any]]:
    rows = []
    for name in sorted(set(providers) | set(breakers)):
        attempts, errors, fallbacks = providers.get(name, [0, 0, 0])
        rows.append(
            {
                "provider": name,
                "attempts": attempts,
                "errors": errors,
                "fallbacks": fallbacks,
                "error_rate": errors / attempts if attempts else 0.0,
                "fallback_rate": fallbacks / attempts if attempts else 0.0,
                "breaker": breakers.get(name, "closed"),
            }
        )
    return rows


_SEVERITY = {"closed": 0, "half_open": 1, "open": 2}


def _worse(a: str | None, b: str) -> str:
    if a is None:
        return b
    return a if _SEVERITY.get(a, 0) >= _SEVERITY.get(b, 0) else b

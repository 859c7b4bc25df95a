"""Routing one request over its route's targets, with retries and fallback.

Before the first chunk, failures are retried and fallen back over silently:
the client only sees latency. Once a chunk has gone out, a failure ends the
stream with an error (mid-stream continuation is not built yet).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from audit.records import AttemptEntry
from streaming.providers import ChatRequest, UpstreamError, UpstreamTarget, adapter_for
from streaming.routes import ResolvedRoute, RoutePolicy
from streaming.upstream import upstream_client


class RouteExhausted(UpstreamError):
    """Every target failed; carries the last failure."""


def _backoff(policy: RoutePolicy, attempt: int, error: UpstreamError) -> float:
    if error.retry_after is not None:
        return min(error.retry_after, 30.0)
    base = policy.backoff_seconds * (2**attempt)
    return base * (0.5 + random.random() / 2)  # jitter: 50-100% of the base


def _plan(route: ResolvedRoute) -> list[UpstreamTarget]:
    return [t for t in route.targets for _ in range(route.policy.attempts_per_target)]


async def _attempt(
    target: UpstreamTarget,
    request: ChatRequest,
    policy: RoutePolicy,
    record: AttemptEntry,
) -> AsyncIterator[dict[str, Any]]:
    """One upstream call, with first-token and stall timeouts applied."""
    loop = asyncio.get_running_loop()
    stream = adapter_for(target.kind).stream(upstream_client(), target, request)
    async with aclosing(stream):
        try:
            async with asyncio.timeout(policy.first_token_timeout) as deadline:
                async for body in stream:
                    if record.first_token_at is None:
                        record.first_token_at = time.time()
                    record.tokens += 1
                    deadline.reschedule(loop.time() + policy.stall_timeout)
                    yield body
        except TimeoutError:
            kind = "stall" if record.first_token_at else "first_token_timeout"
            raise UpstreamError(f"upstream {kind.replace('_', ' ')}", error_class=kind) from None


async def route_stream(
    route: ResolvedRoute, request: ChatRequest, attempts: list[AttemptEntry]
) -> AsyncIterator[dict[str, Any]]:
    """Yield chunk bodies from the first target that works; record every attempt."""
    plan = _plan(route)
    if not plan:
        raise RouteExhausted("no enabled target for this model", error_class="no_target")
    for position, target in enumerate(plan):
        record = AttemptEntry(
            provider=target.provider, upstream_model=target.model, started_at=time.time()
        )
        attempts.append(record)
        try:
            async for body in _attempt(target, request, route.policy, record):
                yield body
        except UpstreamError as error:
            record.ended_at = time.time()
            record.outcome = "failed"
            record.status_code = error.status
            record.error_class = error.error_class
            record.error_message = error.message[:500]
            last = position == len(plan) - 1
            if record.first_token_at is not None or not error.retryable or last:
                raise
            await asyncio.sleep(_backoff(route.policy, position, error))
            continue
        except BaseException:
            record.ended_at = time.time()
            record.outcome = "cancelled"
            raise
        record.ended_at = time.time()
        return

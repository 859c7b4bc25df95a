"""Routing one request over its route's targets: retries, fallback, continuation.

The plan is the route's targets by priority (weighted-random order among
equal priorities when the route load-balances), each tried
``attempts_per_target`` times; targets whose circuit is open are skipped.

Before the client has seen any output, a failure the route's policy lists in
``retry_on`` is retried (with backoff, or the upstream's Retry-After) or
fallen back over: the client only sees latency. Once text has gone out, a
route that allows it continues on the next planned attempt (see
streaming.routing.continuation): the client's stream goes on, same id, same
sequence. Never after a tool call started, nor without the route's consent:
then the failure ends the stream as an error. Every attempt goes in the audit.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from itertools import groupby
from typing import Any

from audit.records import AttemptEntry, AuditEntry
from streaming.providers import ChatRequest, UpstreamTarget, adapter_for
from streaming.providers.errors import (
    CircuitOpen,
    ContentFilter,
    FirstTokenTimeout,
    NoTarget,
    Stall,
    Timeout,
    UpstreamError,
)
from streaming.providers.pool import upstream_pool
from streaming.routing.breaker import (
    CLOSED,
    breaker_config,
    breaker_key,
    breakers,
    status,
)
from streaming.routing.continuation import ContinuationFilter, StreamProgress, continuation_request
from streaming.routing.routes import ResolvedRoute, RoutePolicy, TargetChoice
from streaming.routing.usage import AttemptMeter, settle

# Waiting longer than this for one target's Retry-After is worse than moving on.
MAX_RETRY_AFTER = 30.0


# Seeding a new Random per request read os.urandom every time.
_rng = random.Random()


# -- planning -------------------------------------------------------------
def weighted_order(choices: Sequence[TargetChoice], rng: random.Random) -> list[TargetChoice]:
    """Each comes first with probability weight/total (Efraimidis-Spirakis); weight 0 last."""

    def key(choice: TargetChoice) -> float:
        return rng.random() ** (1.0 / choice.weight) if choice.weight > 0 else -1.0

    return sorted(choices, key=key, reverse=True)


def plan_attempts(route: ResolvedRoute, rng: random.Random | None = None) -> list[UpstreamTarget]:
    """The upstream calls to try, in order."""
    rng = rng or _rng
    ordered: list[TargetChoice] = []
    by_priority = sorted(route.targets, key=lambda c: c.priority)
    for _, tier in groupby(by_priority, key=lambda c: c.priority):
        choices = list(tier)
        ordered += weighted_order(choices, rng) if route.policy.load_balance else choices
    return [c.upstream for c in ordered for _ in range(route.policy.attempts_per_target)]


def backoff_delay(policy: RoutePolicy, retry: int, error: UpstreamError) -> float:
    """Seconds before retrying the same target: Retry-After, or exponential with jitter."""
    if error.retry_after is not None:
        return error.retry_after
    base = policy.backoff_seconds * (2**retry)
    return base * (0.5 + random.random() / 2)  # jitter: 50-100% of the base


# -- one upstream call ------------------------------------------------------
def has_output(body: dict[str, Any]) -> bool:
    for choice in body.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or choice.get("finish_reason"):
            return True
    return False


def _check_refusal(body: dict[str, Any], policy: RoutePolicy) -> None:
    """A content-filter stop before any text is a failure, if the route retries those."""
    if "content_filter" not in policy.retry_on:
        return
    for choice in body.get("choices") or ():
        delta = choice.get("delta") or {}
        if choice.get("finish_reason") == "content_filter" and not delta.get("content"):
            raise ContentFilter("upstream refused (content filter)")


def _count(record: AttemptEntry, body: dict[str, Any]) -> None:
    usage = body.get("usage")
    if usage and usage.get("completion_tokens"):
        record.tokens = int(usage["completion_tokens"])
        return
    for choice in body.get("choices") or ():
        delta = choice.get("delta")
        if delta and ("content" in delta or "tool_calls" in delta):
            record.tokens += 1
            return


async def upstream_attempt(
    target: UpstreamTarget,
    request: ChatRequest,
    policy: RoutePolicy,
    record: AttemptEntry,
    meter: AttemptMeter,
) -> AsyncIterator[dict[str, Any]]:
    """One upstream call, with first-token and stall timeouts applied; ``meter``
    sees every chunk the upstream sent.

    Chunks with no output (the role-only opener) are held back until the
    first real token, so a failure before it leaves the client nothing to see.
    """
    loop = asyncio.get_running_loop()
    held: list[dict[str, Any]] = []
    # Moving the deadline costs a timer handle; per token that was a third of
    # the gateway's CPU. Move it at most every ``slack`` seconds, to
    # ``stall + slack`` ahead: a stall still needs >= stall_timeout of silence,
    # and is noticed at most ``slack`` late.
    slack = min(1.0, policy.stall_timeout / 4)
    moved_at = -slack
    stream = adapter_for(target.kind).stream(upstream_pool(), target, request)
    async with aclosing(stream):
        try:
            async with asyncio.timeout(policy.first_token_timeout) as deadline:
                async for body in stream:
                    meter.observe(body)
                    if record.first_token_at is None:
                        if not has_output(body):
                            held.append(body)
                            continue
                        _check_refusal(body, policy)
                        record.first_token_at = time.time()
                        for early in held:
                            yield early
                        held.clear()
                    _count(record, body)
                    now = loop.time()
                    if now - moved_at >= slack:
                        deadline.reschedule(now + policy.stall_timeout + slack)
                        moved_at = now
                    yield body
        except TimeoutError:
            if record.first_token_at:
                raise Stall("upstream stall") from None
            raise FirstTokenTimeout("upstream first token timeout") from None
    for body in held:  # an answer with no output at all
        yield body


# -- the fallback chain -------------------------------------------------------
class FallbackRun:
    """One request's way through its plan: admission by the breaker, retries,
    fallback, and an audit record of every attempt.

    Subclasses make the upstream call of one attempt (``_attempt``, inside
    ``_recorded``); the chat's is :class:`ChatRun`, the embeddings' is
    ``streaming.routing.embeddings.EmbeddingRun``.
    """

    def __init__(self, route: ResolvedRoute, audit: AuditEntry) -> None:
        self.route = route
        self.policy = route.policy
        self.audit = audit
        self.skipped: set[str] = set()  # targets not to try again in this request

    async def stream(self) -> AsyncGenerator[Any, None]:
        """What the first attempt that succeeds yields; the last failure if none does.

        However it ends, the audit entry's usage and cost are then its attempts'.
        """
        try:
            plan = plan_attempts(self.route)
            if not plan:
                raise NoTarget("no enabled target for this model")
            board = breakers()
            await board.prefetch({breaker_key(t) for t in plan})
            admitted: dict[str, bool] = {}
            last_error: UpstreamError | None = None
            for position, target in enumerate(plan):
                key = breaker_key(target)
                if key in self.skipped:
                    continue
                if key not in admitted:
                    admitted[key] = await board.admit(key)
                if not admitted[key]:
                    continue
                try:
                    # Closed here, not left to the collector: its record (and
                    # its charge) must be final when this run ends.
                    async with aclosing(self._attempt(target, key)) as attempt:
                        async for body in attempt:
                            yield body
                    return
                except UpstreamError as error:
                    last_error = error
                    if error.counts_against_breaker:
                        # Admission is asked again: a failure that opened the circuit
                        # (or a half-open probe that failed) stops the retries into it.
                        admitted.pop(key, None)
                    await self._after_failure(error, plan, position)
            if last_error is not None:
                raise last_error
            raise CircuitOpen(
                "every target of this model is failing (circuit open); try again later"
            )
        finally:
            settle(self.audit)

    def _attempt(self, target: UpstreamTarget, key: str) -> AsyncGenerator[Any, None]:
        """One upstream call to ``target``, made inside ``self._recorded(target, key)``."""
        raise NotImplementedError

    @asynccontextmanager
    async def _recorded(
        self, target: UpstreamTarget, key: str, *, continuation: bool = False
    ) -> AsyncIterator[AttemptEntry]:
        """The audit record of one attempt; a failure is recorded and counted by the breaker."""
        record = AttemptEntry(
            provider=target.provider,
            upstream_model=target.model,
            started_at=time.time(),
            continuation=continuation,
        )
        self.audit.attempts.append(record)
        try:
            yield record
        except UpstreamError as error:
            record.ended_at = time.time()
            record.outcome = "failed"
            record.status_code = error.status
            record.error_class = error.error_class
            record.error_message = error.message[:500]
            if error.counts_against_breaker:
                await breakers().failure(key, f"{error.error_class}: {error.message}"[:300])
            raise
        except BaseException:
            record.ended_at = time.time()
            record.outcome = "cancelled"
            raise
        record.ended_at = time.time()

    async def _after_failure(
        self, error: UpstreamError, plan: list[UpstreamTarget], position: int
    ) -> None:
        """Raise ``error`` unless the policy lets the next attempt go; wait if it should."""
        kind = error.retry_kind
        if kind is None or kind not in self.policy.retry_on:
            raise error
        self._check_continuable(error)
        key = breaker_key(plan[position])
        if kind not in self.policy.retry_same_target_on:
            self.skipped.add(key)  # e.g. a timeout: the next target gets it at once
            return
        if position + 1 >= len(plan) or breaker_key(plan[position + 1]) != key:
            return  # the next attempt goes elsewhere: no reason to wait
        if status(breakers().get(key), breaker_config(), time.time()) != CLOSED:
            return  # the circuit opened: the retry will not be sent, so no wait for it
        retry = sum(1 for t in plan[:position] if breaker_key(t) == key)
        delay = backoff_delay(self.policy, retry, error)
        if delay > MAX_RETRY_AFTER:
            self.skipped.add(key)
            return
        await asyncio.sleep(delay)

    def _check_continuable(self, error: UpstreamError) -> None:
        """Raise ``error`` if what the client already got rules out another attempt."""


class ChatRun(FallbackRun):
    """A chat completion's way through its plan, continued mid-stream when the route allows."""

    def __init__(
        self,
        route: ResolvedRoute,
        request: ChatRequest,
        audit: AuditEntry,
        progress: StreamProgress | None = None,
    ) -> None:
        super().__init__(route, audit)
        self.request = request
        # Given: what a lost instance sent (a takeover); the first attempt continues it.
        self.progress = progress or StreamProgress()

    async def _attempt(
        self, target: UpstreamTarget, key: str
    ) -> AsyncGenerator[dict[str, Any], None]:
        progress, board = self.progress, breakers()
        continuing = progress.started
        async with self._recorded(target, key, continuation=continuing) as record:
            request, rewrite = self.request, None
            if continuing:
                used = sum(a.tokens for a in self.audit.attempts)
                request = continuation_request(self.request, progress.text, used)
                rewrite = ContinuationFilter(progress.text, earlier_tokens=used)
            healthy, meter = False, AttemptMeter()
            try:
                async for body in upstream_attempt(target, request, self.policy, record, meter):
                    if not healthy:
                        healthy = True  # it answered: that closes a half-open circuit
                        await board.success(key)
                    for out in rewrite.feed(body) if rewrite else (body,):
                        self.audit.continued = self.audit.continued or continuing
                        progress.observe(out)
                        yield out
                for out in rewrite.flush() if rewrite else ():
                    progress.observe(out)
                    yield out
            finally:
                meter.charge(record, request, target.price)

    def _check_continuable(self, error: UpstreamError) -> None:
        if not self.progress.started:
            return
        record = self.audit.attempts[-1]
        if not self.policy.allow_midstream_fallback:
            raise error
        if self.progress.tool_call_started:
            record.error_message = (record.error_message + " (not continued: tool call)")[:500]
            raise error
        if not self.progress.can_continue():
            raise error


def route_stream(
    route: ResolvedRoute,
    request: ChatRequest,
    audit: AuditEntry,
    *,
    progress: StreamProgress | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    """Yield chunk bodies for the request; record every attempt in ``audit``, and
    once closed (or ended), the usage and cost it is charged for. With
    ``progress`` (what another instance already sent), it continues that answer."""
    return ChatRun(route, request, audit, progress).stream()


PROBE_TIMEOUT = 15.0


async def probe_target(target: UpstreamTarget) -> float:
    """Send a 1-token request to ``target``; the milliseconds to its first token.

    Raises UpstreamError (the admin's "test connection" shows it).
    """
    request = ChatRequest(
        model=target.model, messages=[{"role": "user", "content": "ping"}], params={"max_tokens": 1}
    )
    started = time.perf_counter()
    stream = adapter_for(target.kind).stream(upstream_pool(), target, request)
    try:
        async with aclosing(stream), asyncio.timeout(PROBE_TIMEOUT):
            async for body in stream:
                if has_output(body):
                    break
    except TimeoutError:
        raise Timeout("no answer within 15 s") from None
    return (time.perf_counter() - started) * 1000

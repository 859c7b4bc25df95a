"""Prometheus metrics for the gateway, and the hooks the stream core calls.

Nothing here runs per token. The session calls ``stream_started`` once,
``first_token`` once and ``stream_ended`` once; token, attempt, retry and
fallback counts are read off the session's audit entry when it ends. Readers
(one HTTP streaming response, or one stream followed on a WebSocket) are
counted when they open and close, with the bytes they sent added at close.

With ``PROMETHEUS_MULTIPROC_DIR`` set (before the process starts),
prometheus-client keeps every value in a per-process file there and the
``/metrics`` view sums them, so several workers report as one; gauges say how
(``livesum``: the sum over live processes, ``livemax``: the worst one).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from django.conf import settings
from prometheus_client import Counter, Gauge, Histogram

from streaming.core.reader import UNREADABLE
from streaming.observability import livestats

if TYPE_CHECKING:
    from streaming.core.session import StreamSession

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

# Upstream and end-to-end first-token latencies span 50 ms to a minute.
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 30, 60)
# What the gateway itself adds should be a few milliseconds; retries add seconds.
ADDED_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)

BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
CLOSE_REASONS = ("completed", "client_gone", "cancelled", "slow_client", "error")

STREAMS_ACTIVE = Gauge(
    "sluice_streams_active",
    "Streams generating now, by the transport that created them.",
    ["transport"],
    multiprocess_mode="livesum",
)
CONNECTIONS_REFUSED = Counter(
    "sluice_connections_refused",
    "Client connections closed at once (reason=per_client_cap: the address had too many open).",
    ["reason"],
)
CONNECTIONS_TIMED_OUT = Counter(
    "sluice_connections_timed_out",
    "Client connections closed for silence (phase: headers, body, ws_idle).",
    ["phase"],
)
STREAMS_STARTED = Counter("sluice_streams_started", "Streams started.", ["route", "transport"])
STREAM_DURATION = Histogram(
    "sluice_stream_duration_seconds",
    "From the stream's start to its end, by outcome.",
    ["route", "provider", "outcome"],
    buckets=DURATION_BUCKETS,
)
TTFT = Histogram(
    "sluice_ttft_seconds",
    "From the stream's start in the gateway to its first chunk (what a client waits).",
    ["route", "provider"],
    buckets=TTFT_BUCKETS,
)
UPSTREAM_TTFT = Histogram(
    "sluice_upstream_ttft_seconds",
    "From the request to the upstream to its first chunk, on the attempt that answered.",
    ["route", "provider"],
    buckets=TTFT_BUCKETS,
)
GATEWAY_TTFT = Histogram(
    "sluice_gateway_ttft_added_seconds",
    "Time to first token the gateway added on top of the upstream's (incl. retries).",
    ["route", "provider"],
    buckets=ADDED_BUCKETS,
)
TOKENS = Counter(
    "sluice_tokens_relayed",
    "Completion tokens relayed (the upstream's usage count, else chunks), at stream end.",
    ["route", "provider", "app"],
)
UPSTREAM_ATTEMPTS = Counter(
    "sluice_upstream_attempts", "Calls to upstream providers.", ["provider"]
)
UPSTREAM_ERRORS = Counter(
    "sluice_upstream_errors", "Failed upstream calls.", ["provider", "error_class"]
)
RETRIES = Counter(
    "sluice_upstream_retries", "Attempts repeated on the same provider.", ["provider"]
)
FALLBACKS = Counter(
    "sluice_fallbacks",
    "Moves from a failed provider to the next target; phase is before_first_token or mid_stream.",
    ["provider", "phase"],
)
ABANDONED = Counter(
    "sluice_streams_abandoned", "Streams cancelled because nobody read them.", ["route"]
)
BREAKER = Gauge(
    "sluice_circuit_breaker_state",
    "Circuit breaker per provider: 0 closed, 1 half-open, 2 open.",
    ["provider"],
    multiprocess_mode="livemax",
)
CONNECTIONS_ACTIVE = Gauge(
    "sluice_connections_active",
    "Clients reading a stream now.",
    ["transport"],
    multiprocess_mode="livesum",
)
CONNECTIONS_OPENED = Counter(
    "sluice_connections_opened", "Clients that started reading a stream.", ["transport"]
)
CONNECTIONS_CLOSED = Counter(
    "sluice_connections_closed",
    "Clients that stopped reading a stream, by reason.",
    ["transport", "reason"],
)
BYTES_SENT = Counter("sluice_sent_bytes", "Stream bytes sent to clients.", ["transport"])
RESUMES = Counter("sluice_resumes", "Readers that resumed a stream from a cursor.", ["transport"])
REPLAYED = Counter("sluice_replayed_events", "Events replayed to resuming readers.", ["transport"])


_children: dict[tuple[Any, tuple[str, ...]], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once: label values are few (routes,
    providers, transports), and ``labels()`` validated and locked on every call."""
    key = (metric, labels)
    found = _children.get(key)
    if found is None:
        if len(_children) > 10_000:  # label values are bounded; this is only a backstop
            _children.clear()
        found = _children[key] = metric.labels(*labels)
    return found


def _provider(session: StreamSession) -> str:
    attempts = session.audit.attempts
    return attempts[-1].provider if attempts else "none"


def stream_started(session: StreamSession) -> None:
    child(STREAMS_ACTIVE, session.audit.protocol).inc()
    child(STREAMS_STARTED, session.route.model, session.audit.protocol).inc()
    livestats.ensure_ticker()


def first_token(session: StreamSession) -> None:
    """Once per stream, when its first chunk reaches the log."""
    audit = session.audit
    route, provider = session.route.model, _provider(session)
    total = (audit.ttft_ms or 0.0) / 1000
    child(TTFT, route, provider).observe(total)
    attempt = audit.attempts[-1] if audit.attempts else None
    if attempt is not None and attempt.first_token_at is not None:
        upstream = max(0.0, attempt.first_token_at - attempt.started_at)
        child(UPSTREAM_TTFT, route, provider).observe(upstream)
        child(GATEWAY_TTFT, route, provider).observe(max(0.0, total - upstream))
    livestats.STATS.record_ttft(total)


def stream_ended(session: StreamSession) -> None:
    """Once per stream, from its finished audit entry."""
    audit = session.audit
    route, provider = session.route.model, _provider(session)
    child(STREAMS_ACTIVE, audit.protocol).dec()
    child(STREAM_DURATION, route, provider, audit.outcome).observe(
        (audit.duration_ms or 0.0) / 1000
    )
    chunks = stream_chunks(session)
    tokens = relayed_tokens(audit.usage, chunks)
    if tokens:
        child(TOKENS, route, provider, session.identity.name).inc(tokens)
    if audit.outcome == "abandoned":
        child(ABANDONED, route).inc()
    _count_attempts(audit.attempts)
    livestats.STATS.record_end(chunks, audit.attempts)


def stream_chunks(session: StreamSession) -> int:
    return sum(attempt.tokens for attempt in session.audit.attempts)


def relayed_tokens(usage: dict[str, Any], chunks: int) -> int:
    """The upstream's own completion token count when it sent one, else the chunks."""
    reported = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return reported if isinstance(reported, int) and reported >= 0 else chunks


def _count_attempts(attempts: list[Any]) -> None:
    for attempt in attempts:
        child(UPSTREAM_ATTEMPTS, attempt.provider).inc()
        if attempt.outcome == "failed":
            child(UPSTREAM_ERRORS, attempt.provider, attempt.error_class or "unknown").inc()
    for provider, kind, phase in livestats.attempt_steps(attempts):
        if kind == "retry":
            child(RETRIES, provider).inc()
        else:
            child(FALLBACKS, provider, phase).inc()


def breaker_state(provider: str, state: str) -> None:
    """Set a provider's circuit-breaker gauge: 'closed', 'half_open' or 'open'."""
    child(BREAKER, provider).set(BREAKER_STATES[state])
    livestats.STATS.breakers[provider] = state


# -- readers ------------------------------------------------------------------
_CANCELLED_OUTCOMES = {"cancelled", "abandoned", "client_disconnected"}


def end_reason(handle: Any) -> str:
    """Why a reader that got to the end of ``handle``'s stream closed."""
    audit = getattr(handle, "audit", None)
    outcome = getattr(audit, "outcome", None) or getattr(handle, "outcome", None) or "completed"
    if outcome == "completed":
        return "completed"
    return "cancelled" if outcome in _CANCELLED_OUTCOMES else "error"


def _produced(handle: Any) -> int:
    log = getattr(handle, "log", None)
    return int(getattr(log, "last_seq", 0) or getattr(handle, "last_seq", 0) or 0)


class ReaderTracker:
    """One client reading one stream: counted when it opens, and when it closes,
    with the reason and the bytes it was sent."""

    __slots__ = ("_open", "handle", "sent", "transport")

    def __init__(self, transport: str, handle: Any, cursor: int, *, resumed: bool) -> None:
        self.transport = transport
        self.handle = handle
        self.sent = 0
        self._open = True
        child(CONNECTIONS_OPENED, transport).inc()
        child(CONNECTIONS_ACTIVE, transport).inc()
        if resumed:
            child(RESUMES, transport).inc()
            replayed = _produced(handle) - cursor
            if replayed > 0:
                child(REPLAYED, transport).inc(replayed)

    def close(self, reason: str) -> None:
        """Count the close once; later calls are ignored."""
        if not self._open:
            return
        self._open = False
        child(CONNECTIONS_ACTIVE, self.transport).dec()
        child(CONNECTIONS_CLOSED, self.transport, reason).inc()
        if self.sent:
            child(BYTES_SENT, self.transport).inc(self.sent)

    def __enter__(self) -> ReaderTracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close(end_reason(self.handle))
        elif issubclass(exc_type, TimeoutError):
            self.close("slow_client")
        else:
            self.close(_failure_reason(exc_type))


def _failure_reason(exc_type: type[BaseException]) -> str:
    """Why a reader stopped, from the exception that stopped it."""
    if issubclass(exc_type, asyncio.CancelledError | GeneratorExit | OSError):
        return "client_gone"
    if issubclass(exc_type, UNREADABLE):
        return "broken"
    return "error"


async def track_body(
    body: AsyncIterator[bytes], transport: str, handle: Any, cursor: int, *, resumed: bool
) -> AsyncIterator[bytes]:
    """``body`` as sent by an HTTP streaming response, counted as one reader.

    The server closes the body early in two cases: the client left, or a send
    waited READER_STALL_SECONDS and the client was cut off. The body cannot
    see which, but it can see how long its last piece has been out: a send
    that long is the slow-client cut.
    """
    loop = asyncio.get_running_loop()
    stall = settings.SLUICE_READER_STALL_SECONDS
    tracker = ReaderTracker(transport, handle, cursor, resumed=resumed)
    handed_out = loop.time()
    try:
        async with aclosing(body):  # type: ignore[type-var]
            async for data in body:
                tracker.sent += len(data)
                handed_out = loop.time()
                yield data
                del data  # sent: see StreamResponse._pump
    except GeneratorExit:
        slow = loop.time() - handed_out >= stall * 0.99
        tracker.close("slow_client" if slow else "client_gone")
        raise
    except BaseException as error:
        tracker.close(_failure_reason(type(error)))
        raise
    tracker.close(end_reason(handle))

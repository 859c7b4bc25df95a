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

import os
from typing import Any, Protocol

from prometheus_client import Counter, Gauge, Histogram

from audit.records import AuditEntry
from streaming.observability import livestats

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
CHARGED_TOKENS = Counter(
    "sluice_tokens",
    "Tokens requests were charged for (kind: prompt or completion), summed over their "
    "attempts, when they end (chat and embeddings).",
    ["app", "route", "kind"],
)
COST = Counter(
    "sluice_cost_usd",
    "What requests cost in USD at the price table's prices, when they end.",
    ["app", "route"],
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


EMBEDDING_REQUESTS = Counter(
    "sluice_embedding_requests",
    "Embeddings requests (POST /v1/embeddings), by outcome, counted when they end.",
    ["route", "provider", "outcome"],
)
EMBEDDING_DURATION = Histogram(
    "sluice_embedding_duration_seconds",
    "From an embeddings request's start to its answer (retries and fallback included).",
    ["route", "provider"],
    buckets=TTFT_BUCKETS,
)
EMBEDDING_INPUTS = Counter(
    "sluice_embedding_inputs", "Inputs embedded (one vector each).", ["route", "provider", "app"]
)
EMBEDDING_TOKENS = Counter(
    "sluice_embedding_tokens",
    "Prompt tokens embedded (the upstream's usage count).",
    ["route", "provider", "app"],
)

LIMIT_REJECTIONS = Counter(
    "sluice_limit_rejections",
    "Requests refused by their app's limits (429), by the limit reached.",
    ["app", "limit"],
)


STREAM_TAKEOVERS = Counter(
    "sluice_stream_takeovers",
    "Streams of a lost instance claimed here (outcome: continued, ended with an error as the"
    " route forbids continuing or a tool call began, failed), or handed over at shutdown.",
    ["outcome"],
)


def stream_taken_over(outcome: str) -> None:
    child(STREAM_TAKEOVERS, outcome).inc()


def limit_rejected(app: str, limit: str) -> None:
    """A request of ``app`` refused by ``limit`` (a policy field's name)."""
    child(LIMIT_REJECTIONS, app, limit).inc()


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


class Stream(Protocol):
    """What the hooks read of a stream (a ``StreamSession``)."""

    id: str
    audit: AuditEntry

    @property
    def route_name(self) -> str: ...

    @property
    def app_name(self) -> str: ...


def _provider(stream: Stream) -> str:
    attempts = stream.audit.attempts
    return attempts[-1].provider if attempts else "none"


def stream_started(stream: Stream) -> None:
    child(STREAMS_ACTIVE, stream.audit.protocol).inc()
    child(STREAMS_STARTED, stream.route_name, stream.audit.protocol).inc()
    livestats.stream_started(stream)


def first_token(stream: Stream) -> None:
    """Once per stream, when its first chunk reaches the log."""
    audit = stream.audit
    route, provider = stream.route_name, _provider(stream)
    total = (audit.ttft_ms or 0.0) / 1000
    child(TTFT, route, provider).observe(total)
    attempt = audit.attempts[-1] if audit.attempts else None
    if attempt is not None and attempt.first_token_at is not None:
        upstream = max(0.0, attempt.first_token_at - attempt.started_at)
        child(UPSTREAM_TTFT, route, provider).observe(upstream)
        child(GATEWAY_TTFT, route, provider).observe(max(0.0, total - upstream))
    livestats.STATS.record_ttft(total)


def stream_ended(stream: Stream) -> None:
    """Once per stream, from its finished audit entry."""
    audit = stream.audit
    route, provider = stream.route_name, _provider(stream)
    child(STREAMS_ACTIVE, audit.protocol).dec()
    child(STREAM_DURATION, route, provider, audit.outcome).observe(
        (audit.duration_ms or 0.0) / 1000
    )
    chunks = stream_chunks(stream)
    tokens = relayed_tokens(audit.usage, chunks)
    if tokens:
        child(TOKENS, route, provider, stream.app_name).inc(tokens)
    if audit.outcome == "abandoned":
        child(ABANDONED, route).inc()
    _count_charge(stream)
    _count_attempts(audit.attempts)
    livestats.stream_ended(stream, chunks)


def stream_chunks(stream: Stream) -> int:
    return sum(attempt.tokens for attempt in stream.audit.attempts)


def relayed_tokens(usage: dict[str, Any], chunks: int) -> int:
    """The upstream's own completion token count when it sent one, else the chunks."""
    reported = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return reported if isinstance(reported, int) and reported >= 0 else chunks


def _count_charge(request: Stream) -> None:
    audit, app, route = request.audit, request.app_name, request.route_name
    if audit.prompt_tokens:
        child(CHARGED_TOKENS, app, route, "prompt").inc(audit.prompt_tokens)
    if audit.completion_tokens:
        child(CHARGED_TOKENS, app, route, "completion").inc(audit.completion_tokens)
    if audit.cost_usd > 0:
        child(COST, app, route).inc(audit.cost_usd)


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


def embedding_ended(request: Stream, inputs: int) -> None:
    """Once per embeddings request, from its finished audit entry; ``inputs`` were embedded."""
    audit = request.audit
    route, provider = request.route_name, _provider(request)
    child(EMBEDDING_REQUESTS, route, provider, audit.outcome).inc()
    if audit.outcome == "completed":
        child(EMBEDDING_DURATION, route, provider).observe((audit.duration_ms or 0.0) / 1000)
        child(EMBEDDING_INPUTS, route, provider, request.app_name).inc(inputs)
        tokens = audit.usage.get("prompt_tokens")
        if isinstance(tokens, int) and tokens > 0:
            child(EMBEDDING_TOKENS, route, provider, request.app_name).inc(tokens)
    _count_charge(request)
    _count_attempts(audit.attempts)
    livestats.STATS.record_end(0, audit.attempts)  # the dashboard's per-provider counts


def breaker_state(provider: str, state: str) -> None:
    """Set a provider's circuit-breaker gauge: 'closed', 'half_open' or 'open'."""
    child(BREAKER, provider).set(BREAKER_STATES[state])
    livestats.STATS.breakers[provider] = state


# -- readers ------------------------------------------------------------------
class ReaderTracker:
    """Observes one client reading one stream (``streaming.core.reader.Reader``):
    counted when it opens, and when it closes, with the reason and the bytes sent."""

    __slots__ = ("_open", "cursor", "handle", "resumed", "sent_bytes", "transport")

    def __init__(self, transport: str, handle: Any, cursor: int, *, resumed: bool) -> None:
        self.transport, self.handle, self.cursor, self.resumed = transport, handle, cursor, resumed
        self.sent_bytes = 0
        self._open = False

    def opened(self) -> None:
        transport = self.transport
        self._open = True
        child(CONNECTIONS_OPENED, transport).inc()
        child(CONNECTIONS_ACTIVE, transport).inc()
        if self.resumed:
            child(RESUMES, transport).inc()
            replayed = _produced(self.handle) - self.cursor
            if replayed > 0:
                child(REPLAYED, transport).inc(replayed)

    def sent(self, size: int) -> None:
        self.sent_bytes += size

    def closed(self, reason: str) -> None:
        """Count the close once (of a reader that opened); later calls are ignored."""
        if not self._open:
            return
        self._open = False
        child(CONNECTIONS_ACTIVE, self.transport).dec()
        child(CONNECTIONS_CLOSED, self.transport, reason).inc()
        if self.sent_bytes:
            child(BYTES_SENT, self.transport).inc(self.sent_bytes)


def _produced(handle: Any) -> int:
    log = getattr(handle, "log", None)
    return int(getattr(log, "last_seq", 0) or getattr(handle, "last_seq", 0) or 0)

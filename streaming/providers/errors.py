"""What can go wrong upstream, as one class per kind of failure.

Each class says what its failure means to the gateway: the short label
metrics, audit records and API error codes carry (``error_class``), the route
policy's ``retry_on`` kind that lets the router retry or fall back over it
(``retry_kind``, one of streaming.models.RetryOn, or None when no policy may),
whether it says the target is unhealthy (``counts_against_breaker``) and the
HTTP status a client sees for it before its first chunk (``client_status``).
Subclasses group failures that are handled alike (``Stall`` is a
``Timeout``), in the manner of httpx's ``TimeoutException > ConnectTimeout``.
"""

from __future__ import annotations

from typing import Any, ClassVar

# Upstream statuses a client sees as they are: its request's fault, or a rate
# limit it should back off from. Any other failure is the gateway's 502.
PASSED_THROUGH = frozenset({400, 413, 422, 429})


class UpstreamError(Exception):
    """An upstream failed; raise one of the subclasses, which say how."""

    error_class: ClassVar[str]
    retry_kind: ClassVar[str | None] = None
    counts_against_breaker: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.body = body

    @property
    def retryable(self) -> bool:
        """Worth trying elsewhere by default: the failure is the target's, not the request's."""
        return self.counts_against_breaker

    @property
    def client_status(self) -> int:
        """The HTTP status a client sees for this failure before its first chunk."""
        return self.status if self.status in PASSED_THROUGH else 502


# -- the target is unhealthy: retried elsewhere, counted by the circuit breaker --
class TargetFailure(UpstreamError):
    """The target failed, not the request: the circuit breaker counts it."""

    counts_against_breaker = True


class ConnectError(TargetFailure):
    """No connection to the upstream (refused, DNS, TLS, connect timeout)."""

    error_class = "connect_error"
    retry_kind = "connect_error"


class Timeout(TargetFailure):
    """The upstream took too long to answer."""

    error_class = "timeout"
    retry_kind = "timeout"


class FirstTokenTimeout(Timeout):
    """No output within the route's first-token timeout."""

    error_class = "first_token_timeout"


class Stall(Timeout):
    """The stream went silent for the route's stall timeout after its first token."""

    error_class = "stall"


class RateLimited(TargetFailure):
    """HTTP 429 or a rate-limit error event; ``retry_after`` says how long to wait, if known."""

    error_class = "rate_limited"
    retry_kind = "rate_limited"


class ServerError(TargetFailure):
    """HTTP 5xx, or an overloaded / api error event."""

    error_class = "server_error"
    retry_kind = "server_error"


class ProtocolError(ServerError):
    """The stream broke the wire format or ended early."""

    error_class = "protocol_error"


class ProviderError(ServerError):
    """An error event mid-stream the provider did not classify."""

    error_class = "provider_error"


class AuthError(TargetFailure):
    """HTTP 401/403: the upstream refused the gateway's own key (a misconfigured target)."""

    error_class = "auth_error"
    retry_kind = "auth_error"


# -- the request's fault: the target is fine ----------------------------------
class ClientError(UpstreamError):
    """Any other HTTP 4xx: the upstream refused this request."""

    error_class = "client_error"


class ContentFilter(ClientError):
    """The upstream's content filter refused the prompt (or stopped before any output)."""

    error_class = "content_filter"
    retry_kind = "content_filter"


class ContextLength(ClientError):
    """The prompt does not fit the model's context (HTTP 400); a bigger model may take it."""

    error_class = "context_length"
    retry_kind = "context_length"


# -- the router's own: nothing was tried ------------------------------------------
class RouteExhausted(UpstreamError):
    """No target could be tried: the gateway has no healthy target right now."""

    @property
    def client_status(self) -> int:
        return 503


class NoTarget(RouteExhausted):
    """The route has no enabled target."""

    error_class = "no_target"


class CircuitOpen(RouteExhausted):
    """Every target's circuit is open."""

    error_class = "circuit_open"


__all__ = [
    "AuthError",
    "CircuitOpen",
    "ClientError",
    "ConnectError",
    "ContentFilter",
    "ContextLength",
    "FirstTokenTimeout",
    "NoTarget",
    "ProtocolError",
    "ProviderError",
    "RateLimited",
    "RouteExhausted",
    "ServerError",
    "Stall",
    "TargetFailure",
    "Timeout",
    "UpstreamError",
]

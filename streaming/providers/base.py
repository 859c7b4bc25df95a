"""The contract every provider adapter follows.

An adapter turns one upstream wire format into OpenAI ``chat.completion.chunk``
bodies. It knows nothing about Django, transports or the stream log: it gets a
validated request and a target, talks to the upstream through the shared
HTTP client, and yields chunk dicts. Failures are raised as UpstreamError so
the router can decide whether to retry or fall back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """One place a request can go: a provider plus the model name it knows."""

    provider: str
    kind: str
    base_url: str
    model: str
    api_key: str = field(default="", repr=False)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ChatRequest:
    """A validated OpenAI-style chat request, as the gateway received it.

    ``params`` holds every other OpenAI parameter the client sent
    (temperature, max_tokens, tools, tool_choice, stop, ...), passed on as is.
    """

    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    stream: bool = True
    include_usage: bool = False


class UpstreamError(Exception):
    """An upstream failed. ``error_class`` is a short, bounded label.

    Labels: connect_error, timeout, first_token_timeout, stall, rate_limited,
    server_error, client_error, protocol_error, provider_error, content_filter.
    """

    def __init__(
        self,
        message: str,
        *,
        error_class: str,
        status: int | None = None,
        retry_after: float | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_class = error_class
        self.status = status
        self.retry_after = retry_after
        self.body = body

    @property
    def retryable(self) -> bool:
        return self.error_class in {
            "connect_error",
            "timeout",
            "first_token_timeout",
            "stall",
            "rate_limited",
            "server_error",
            "protocol_error",
            "provider_error",
        }


class ProviderAdapter(ABC):
    """Streams one chat completion from an upstream as OpenAI chunk bodies.

    Each yielded dict has ``choices`` (a list with OpenAI chunk choices:
    ``{"index", "delta", "finish_reason"}``) and may have ``usage``
    (``prompt_tokens``, ``completion_tokens``, ``total_tokens``); a usage-only
    chunk has ``choices == []``. The gateway adds ``id``, ``object``,
    ``created`` and ``model`` itself, so fallback keeps one identity.

    The first delta carries ``role: "assistant"``. Tool calls use OpenAI's
    ``delta.tool_calls`` fragments (index, id, type, function.name,
    function.arguments). The final content chunk carries ``finish_reason``
    (stop, length, tool_calls, content_filter).

    Adapters always ask the upstream for usage when the format allows it; the
    gateway decides whether the client sees it. The upstream HTTP response
    must be closed when the generator is closed or cancelled (use
    ``async with client.stream(...)``).
    """

    kind: ClassVar[str]

    @abstractmethod
    def stream(
        self, client: httpx.AsyncClient, target: UpstreamTarget, request: ChatRequest
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield chunk bodies; raise UpstreamError on failure."""

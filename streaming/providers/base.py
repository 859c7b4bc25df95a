"""The contract every provider adapter follows.

An adapter turns one upstream wire format into OpenAI ``chat.completion.chunk``
bodies (and, if the format has them, embeddings). It knows nothing about
Django, transports or the stream log: it gets a validated request and a
target, talks to the upstream through the shared HTTP client, and yields
chunk dicts. Failures are raised as one of the
UpstreamError classes (streaming.providers.errors), which tell the router
whether to retry or fall back.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp
import orjson

from streaming.providers.errors import (
    AuthError,
    ClientError,
    ConnectError,
    ContentFilter,
    ContextLength,
    ProtocolError,
    RateLimited,
    ServerError,
    Timeout,
    UpstreamError,
)
from streaming.providers.pool import UpstreamPool, UpstreamResponse
from streaming.providers.scrub import Scrubber


@dataclass(frozen=True, slots=True)
class Price:
    """What a provider's model costs, in USD per million tokens.

    ``cached_input_per_mtok`` is the price of prompt tokens the upstream
    served from its cache (None: the same as ``input_per_mtok``).
    """

    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None = None

    def cost(self, *, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """USD for one call; ``cached_tokens`` are part of ``prompt_tokens``."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        cached_price = self.cached_input_per_mtok
        if cached_price is None:
            cached_price = self.input_per_mtok
        return (
            (prompt_tokens - cached) * self.input_per_mtok
            + cached * cached_price
            + completion_tokens * self.output_per_mtok
        ) / 1_000_000


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """One place a request can go: a provider plus the model name it knows,
    and its price (None: no price configured, costs count as 0)."""

    provider: str
    kind: str
    base_url: str
    model: str
    api_key: str = field(default="", repr=False)
    params: dict[str, Any] = field(default_factory=dict)
    price: Price | None = None


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


@dataclass(slots=True)
class EmbeddingRequest:
    """A validated OpenAI-style embeddings request.

    ``input`` is what the client sent (a string, strings, a token array or
    token arrays); ``params`` holds ``encoding_format``, ``dimensions`` and
    ``user`` when the client sent them, passed on as is.
    """

    model: str
    input: str | list[Any]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def inputs(self) -> list[Any]:
        """The inputs, one per embedding asked for."""
        single = isinstance(self.input, str) or (
            bool(self.input) and all(isinstance(i, int) for i in self.input)
        )
        return [self.input] if single else list(self.input)


@dataclass(slots=True)
class Embeddings:
    """An upstream's answer: one vector per input, in input order.

    A vector is a list of floats, or base64 of little-endian float32s when the
    request asked for ``encoding_format: base64`` (as OpenAI sends it).
    """

    vectors: list[list[float] | str]
    model: str
    usage: dict[str, int] = field(default_factory=dict)

    @property
    def dimensions(self) -> int:
        if not self.vectors:
            return 0
        first = self.vectors[0]
        if isinstance(first, str):
            return (len(first) * 3 // 4 - first.count("=", -2)) // 4
        return len(first)


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
    path: ClassVar[str] = ""  # appended to the provider's base URL

    def url(self, target: UpstreamTarget) -> str:
        """Where this adapter sends ``target``'s requests (shown by "test connection")."""
        return f"{target.base_url.rstrip('/')}{self.path}"

    @abstractmethod
    def stream(
        self, client: UpstreamPool, target: UpstreamTarget, request: ChatRequest
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Yield chunk bodies; raise UpstreamError on failure."""

    # Whether the wire format has embeddings: the router skips targets without.
    embeds: ClassVar[bool] = False

    async def embed(
        self, client: UpstreamPool, target: UpstreamTarget, request: EmbeddingRequest
    ) -> Embeddings:
        """The embeddings of the request's inputs; raise UpstreamError on failure.

        Only called when ``embeds`` is true.
        """
        raise NotImplementedError(f"{self.kind} has no embeddings")


# Shared HTTP plumbing: every HTTP adapter posts a JSON body, expects a 200
# event stream, and maps failures to the same error classes.


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds form)."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            continue  # an HTTP date: rare for APIs, and the router has its own backoff
        if seconds >= 0:
            return seconds
    return None


def error_for_status(status: int, headers: Mapping[str, str], body: Any) -> UpstreamError:
    """The UpstreamError subclass for a non-200 upstream response, with the provider's own words.

    Its message (scrubbed of secrets on the way out of the adapter) is what ops
    need to see: "Incorrect API key provided" is not "HTTP 401".
    """
    said = _error_message(body)
    message = (
        f"upstream returned HTTP {status}: {said}" if said else f"upstream returned HTTP {status}"
    )
    if status == 429:
        return RateLimited(
            message, status=status, retry_after=parse_retry_after(headers), body=body
        )
    return _class_for_status(status, body, said)(message, status=status, body=body)


def _class_for_status(status: int, body: Any, said: str) -> type[UpstreamError]:
    if status >= 500:
        return ServerError
    if status in (401, 403):
        # The upstream refused Sluice's own credentials: the target is misconfigured.
        return AuthError
    if _error_code(body) in CONTENT_FILTER_CODES:
        return ContentFilter
    if status == 400 and _is_context_length(body, said):
        return ContextLength
    return ClientError


# How providers say a prompt does not fit: OpenAI's code, else the wording of
# OpenAI-compatible servers (vLLM, llama.cpp...) and Anthropic.
CONTEXT_LENGTH_CODES = {"context_length_exceeded", "string_above_max_length"}
CONTEXT_LENGTH_WORDS = re.compile(
    r"maximum context length|context length|context window|prompt is too long"
    r"|too many tokens|exceeds? the (?:model'?s? )?(?:maximum|max) (?:input )?(?:tokens|length)",
    re.IGNORECASE,
)
MESSAGE_CHARS = 300


def _is_context_length(body: Any, said: str) -> bool:
    return _error_code(body) in CONTEXT_LENGTH_CODES or bool(CONTEXT_LENGTH_WORDS.search(said))


def _error_message(body: Any) -> str:
    """The provider's message in an error body (OpenAI's and Anthropic's shape, or text)."""
    error = body.get("error") if isinstance(body, dict) else None
    said = error.get("message") if isinstance(error, dict) else error
    if said is None and isinstance(body, str):
        said = body
    return " ".join(said.split())[:MESSAGE_CHARS] if isinstance(said, str) else ""


# What Azure OpenAI and OpenAI call a prompt their content filter refused.
CONTENT_FILTER_CODES = {"content_filter", "content_policy_violation"}


def _error_code(body: Any) -> Any:
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def error_for_transport(exc: BaseException, *, responded: bool) -> UpstreamError:
    """The UpstreamError for a transport failure, before or after the response began."""
    if responded:
        # Once the body started, a reset, a truncated chunk or a lost
        # connection all mean the same thing.
        return ProtocolError("upstream closed the stream early")
    if isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.ConnectionTimeoutError):
        return Timeout("upstream timed out")
    return ConnectError(f"could not connect to upstream ({type(exc).__name__})")


# An error body larger than this is kept as the start of its text, unparsed.
ERROR_BODY_MAX_BYTES = 64 * 1024


async def _error_body(response: UpstreamResponse) -> Any:
    raw = await response.aread()
    if len(raw) > ERROR_BODY_MAX_BYTES:
        return raw[:2000].decode("utf-8", "replace")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:2000].decode("utf-8", "replace")


def scrub_error(error: UpstreamError, scrubber: Scrubber) -> UpstreamError:
    """``error`` with the secrets taken out of its message and body (in place)."""
    error.message = scrubber.text(error.message)
    error.args = (error.message,)
    error.body = scrubber.json(error.body)
    return error


@asynccontextmanager
async def post_event_stream(
    client: UpstreamPool,
    url: str,
    *,
    headers: dict[str, str],
    body: dict[str, Any],
    api_key: str = "",
) -> AsyncIterator[UpstreamResponse]:
    """POST ``body`` and yield the 200 response; every failure is an UpstreamError.

    Leaving the block normally keeps the connection for the next request;
    leaving it by error or cancellation closes the upstream response, which is
    what lets a client's cancel reach the upstream. Every UpstreamError
    leaving the block, an error status or one the adapter raised from the
    stream (an error event), is scrubbed of ``api_key``, of what the auth
    headers carried and of anything shaped like a credential: this is where
    upstream text enters Sluice.
    """
    headers = {"accept": "text/event-stream", **headers}
    async with _post(client, url, headers=headers, body=body, api_key=api_key) as rsp:
        yield rsp


async def post_json(
    client: UpstreamPool,
    url: str,
    *,
    headers: dict[str, str],
    body: dict[str, Any],
    api_key: str = "",
) -> Any:
    """POST ``body`` and return the decoded JSON of the 200 response.

    Failures are UpstreamErrors as from :func:`post_event_stream`; a body
    that is not JSON is a ProtocolError.
    """
    headers = {"accept": "application/json", **headers}
    async with _post(client, url, headers=headers, body=body, api_key=api_key) as rsp:
        raw = await rsp.aread()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProtocolError("upstream sent malformed JSON") from None


@asynccontextmanager
async def _post(
    client: UpstreamPool, url: str, *, headers: dict[str, str], body: dict[str, Any], api_key: str
) -> AsyncIterator[UpstreamResponse]:
    responded = False
    headers = {"content-type": "application/json", **headers}
    try:
        async with client.stream("POST", url, headers=headers, content=orjson.dumps(body)) as rsp:
            if rsp.status_code != 200:
                raise error_for_status(rsp.status_code, rsp.headers, await _error_body(rsp))
            responded = True
            yield rsp
            await rsp.finish()
    except UpstreamError as error:
        raise scrub_error(error, Scrubber.for_request(api_key, headers)) from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise error_for_transport(exc, responded=responded) from exc

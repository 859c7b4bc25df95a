"""OpenAI Chat Completions, and every server that speaks the same wire format."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import orjson

from streaming.providers.base import (
    ChatRequest,
    ProviderAdapter,
    UpstreamError,
    UpstreamTarget,
    post_event_stream,
)
from streaming.providers.sse import SSEDecoder
from streaming.upstream import UpstreamPool


def build_body(target: UpstreamTarget, request: ChatRequest) -> dict[str, Any]:
    """The upstream request body: client params, then the target's, then what we require."""
    return {
        **request.params,
        **target.params,
        "model": target.model,
        "messages": request.messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def build_headers(target: UpstreamTarget) -> dict[str, str]:
    if not target.api_key:
        return {}
    return {"authorization": f"Bearer {target.api_key}"}


class OpenAIStreamDecoder:
    """Turns the ``data:`` payloads of an OpenAI stream into chunk bodies, sans I/O."""

    def __init__(self) -> None:
        self.done = False  # saw ``data: [DONE]``
        self.finished = False  # saw a finish_reason

    def feed(self, data: str) -> dict[str, Any] | None:
        """One event's data: a chunk body to yield, or None if there is nothing in it."""
        if data == "[DONE]":
            self.done = True
            return None
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                "upstream sent malformed JSON", error_class="protocol_error"
            ) from None
        if not isinstance(obj, dict):
            raise UpstreamError("upstream sent a non-object chunk", error_class="protocol_error")
        if "error" in obj:
            raise _stream_error(obj["error"])
        choices = obj.get("choices") or []
        for choice in choices:
            if choice.get("finish_reason"):
                self.finished = True
        usage = obj.get("usage")
        if usage:
            return {"choices": choices, "usage": usage}
        # Some servers send chunks with no choices (Azure's prompt_filter_results).
        return {"choices": choices} if choices else None


def _stream_error(error: Any) -> UpstreamError:
    message = error.get("message") if isinstance(error, dict) else None
    return UpstreamError(
        f"upstream error mid-stream: {message or 'unknown'}",
        error_class="provider_error",
        body={"error": error},
    )


class OpenAIAdapter(ProviderAdapter):
    """Streams from ``{base_url}/chat/completions``; chunks pass through nearly as is."""

    kind = "openai"

    async def stream(
        self, client: UpstreamPool, target: UpstreamTarget, request: ChatRequest
    ) -> AsyncGenerator[dict[str, Any], None]:
        url = f"{target.base_url.rstrip('/')}/chat/completions"
        decoder = OpenAIStreamDecoder()
        sse = SSEDecoder()
        body = build_body(target, request)
        async with post_event_stream(client, url, headers=build_headers(target), body=body) as rsp:
            async for raw in rsp.aiter_raw():
                for event in sse.feed(raw):
                    chunk = decoder.feed(event.data)
                    if chunk is not None:
                        yield chunk
                    if decoder.done:
                        return
            for event in sse.flush():
                chunk = decoder.feed(event.data)
                if chunk is not None:
                    yield chunk
        if not (decoder.done or decoder.finished):
            raise UpstreamError("upstream closed the stream early", error_class="protocol_error")

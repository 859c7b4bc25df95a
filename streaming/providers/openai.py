"""OpenAI Chat Completions and Embeddings, and every server that speaks the same wire format."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import orjson

from streaming.providers.base import (
    ChatRequest,
    EmbeddingRequest,
    Embeddings,
    ProviderAdapter,
    UpstreamTarget,
    post_event_stream,
    post_json,
)
from streaming.providers.errors import ProtocolError, ProviderError
from streaming.providers.pool import UpstreamPool
from streaming.providers.sse import SSEDecoder


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
            raise ProtocolError("upstream sent malformed JSON") from None
        if not isinstance(obj, dict):
            raise ProtocolError("upstream sent a non-object chunk")
        if "error" in obj:
            raise _stream_error(obj["error"])
        # What the gateway reads of a chunk (the transcript, the router, the
        # continuation) must have the shape OpenAI documents: anything else is
        # the upstream's protocol error, never a bug of ours. isinstance
        # checks only, on the fields present: this runs once per token.
        choices = obj.get("choices") or []
        if not isinstance(choices, list):
            raise _malformed("choices is not an array")
        for choice in choices:
            if not isinstance(choice, dict):
                raise _malformed("a choice is not an object")
            delta = choice.get("delta")
            if delta is not None:
                if not isinstance(delta, dict):
                    raise _malformed("delta is not an object")
                content = delta.get("content")
                if content is not None and not isinstance(content, str):
                    raise _malformed("delta.content is not a string")
                if "tool_calls" in delta:
                    _check_tool_calls(delta["tool_calls"])
            reason = choice.get("finish_reason")
            if reason:
                if not isinstance(reason, str):
                    raise _malformed("finish_reason is not a string")
                self.finished = True
        usage = obj.get("usage")
        if usage:
            _check_usage(usage)
            return {"choices": choices, "usage": usage}
        # Some servers send chunks with no choices (Azure's prompt_filter_results).
        return {"choices": choices} if choices else None


def _malformed(what: str) -> ProtocolError:
    return ProtocolError(f"upstream sent a malformed chunk: {what}")


def _check_tool_calls(calls: Any) -> None:
    if calls is None:
        return
    if not isinstance(calls, list):
        raise _malformed("delta.tool_calls is not an array")
    for call in calls:
        _check_tool_call(call)


def _check_tool_call(call: Any) -> None:
    if not isinstance(call, dict):
        raise _malformed("a tool call is not an object")
    index = call.get("index", 0)
    if not isinstance(index, int) or isinstance(index, bool):
        raise _malformed("a tool call's index is not an integer")
    if not isinstance(call.get("id") or "", str):
        raise _malformed("a tool call's id is not a string")
    function = call.get("function")
    if function is None:
        return
    if not isinstance(function, dict):
        raise _malformed("a tool call's function is not an object")
    for name in ("name", "arguments"):
        if not isinstance(function.get(name) or "", str):
            raise _malformed(f"a tool call's function.{name} is not a string")


USAGE_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")


def _check_usage(usage: Any) -> None:
    if not isinstance(usage, dict):
        raise _malformed("usage is not an object")
    for name in USAGE_COUNTS:
        value = usage.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise _malformed(f"usage.{name} is not an integer")
    # Details (prompt_tokens_details: {cached_tokens}, ...) nest one level;
    # what nests deeper could not be re-encoded for the client or the audit.
    for detail in usage.values():
        if isinstance(detail, dict) and any(isinstance(v, dict | list) for v in detail.values()):
            raise _malformed("usage nests too deep")
        if isinstance(detail, list):
            raise _malformed("usage holds an array")


def _stream_error(error: Any) -> ProviderError:
    message = error.get("message") if isinstance(error, dict) else None
    return ProviderError(
        f"upstream error mid-stream: {message or 'unknown'}", body={"error": error}
    )


def build_embeddings_body(target: UpstreamTarget, request: EmbeddingRequest) -> dict[str, Any]:
    return {**request.params, "model": target.model, "input": request.input}


def decode_embeddings(obj: Any, count: int) -> Embeddings:
    """An OpenAI ``list`` of ``count`` embeddings, checked and put in input order, sans I/O."""
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, list) or len(data) != count:
        raise _malformed_embeddings(f"expected {count} embeddings")
    vectors: list[list[float] | str | None] = [None] * count
    for item in data:
        index = item.get("index") if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < count or vectors[index] is not None:
            raise _malformed_embeddings("an embedding's index is missing or repeated")
        vector = item.get("embedding")
        # The first number stands for the rest: checking millions of them
        # would cost more than relaying them.
        if not isinstance(vector, str) and not (
            isinstance(vector, list) and vector and isinstance(vector[0], int | float)
        ):
            raise _malformed_embeddings("an embedding is neither numbers nor base64")
        vectors[index] = vector
    usage = obj.get("usage") or {}
    _check_usage(usage)
    model = obj.get("model")
    return Embeddings(
        vectors=[v for v in vectors if v is not None],
        model=model if isinstance(model, str) else "",
        usage={k: v for k, v in usage.items() if isinstance(v, int)},
    )


def _malformed_embeddings(what: str) -> ProtocolError:
    return ProtocolError(f"upstream sent malformed embeddings: {what}")


class OpenAIAdapter(ProviderAdapter):
    """Streams from ``{base_url}/chat/completions``; chunks pass through nearly as is.
    Embeddings come from ``{base_url}/embeddings``."""

    kind = "openai"
    path = "/chat/completions"
    embeds = True

    async def embed(
        self, client: UpstreamPool, target: UpstreamTarget, request: EmbeddingRequest
    ) -> Embeddings:
        url = f"{target.base_url.rstrip('/')}/embeddings"
        body = build_embeddings_body(target, request)
        headers = build_headers(target)
        obj = await post_json(client, url, headers=headers, body=body, api_key=target.api_key)
        result = decode_embeddings(obj, len(request.inputs))
        result.model = result.model or target.model
        return result

    async def stream(
        self, client: UpstreamPool, target: UpstreamTarget, request: ChatRequest
    ) -> AsyncGenerator[dict[str, Any], None]:
        url = self.url(target)
        decoder = OpenAIStreamDecoder()
        sse = SSEDecoder()
        body = build_body(target, request)
        async with post_event_stream(
            client, url, headers=build_headers(target), body=body, api_key=target.api_key
        ) as rsp:
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
            raise ProtocolError("upstream closed the stream early")

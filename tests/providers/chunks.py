"""Small tools for driving an adapter and reading its chunks like a client would."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from streaming.providers import ChatRequest, ProviderAdapter, UpstreamError, UpstreamTarget


def chat(content: str = "Say hello", **params: Any) -> ChatRequest:
    return ChatRequest(
        model="alias", messages=[{"role": "user", "content": content}], params=params
    )


async def collect(
    adapter: ProviderAdapter,
    client: httpx.AsyncClient,
    target: UpstreamTarget,
    request: ChatRequest,
) -> list[dict[str, Any]]:
    return [chunk async for chunk in adapter.stream(client, target, request)]


async def failure(
    adapter: ProviderAdapter,
    client: httpx.AsyncClient,
    target: UpstreamTarget,
    request: ChatRequest,
) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        await collect(adapter, client, target, request)
    return info.value


def content_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(
        choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["choices"]
    )


def tool_calls_of(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reassemble streamed tool-call fragments, as an OpenAI client does."""
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for fragment in choice["delta"].get("tool_calls") or []:
                call = calls.setdefault(fragment["index"], {"arguments": ""})
                for key in ("id", "type"):
                    if key in fragment:
                        call[key] = fragment[key]
                function = fragment.get("function", {})
                if "name" in function:
                    call["name"] = function["name"]
                call["arguments"] += function.get("arguments", "")
    return [calls[index] for index in sorted(calls)]


def finish_reasons(chunks: list[dict[str, Any]]) -> list[str]:
    return [c["finish_reason"] for chunk in chunks for c in chunk["choices"] if c["finish_reason"]]

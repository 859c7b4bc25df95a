"""Provider adapters, one module per upstream wire format."""

from __future__ import annotations

from streaming.providers.base import (
    ChatRequest,
    ProviderAdapter,
    UpstreamError,
    UpstreamTarget,
)


def adapter_for(kind: str) -> ProviderAdapter:
    """The adapter for a provider kind (``openai``, ``anthropic``, ``demo``)."""
    from streaming.providers.anthropic import AnthropicAdapter
    from streaming.providers.demo import DemoAdapter
    from streaming.providers.openai import OpenAIAdapter

    adapters: dict[str, ProviderAdapter] = {
        "openai": OpenAIAdapter(),
        "anthropic": AnthropicAdapter(),
        "demo": DemoAdapter(),
    }
    try:
        return adapters[kind]
    except KeyError:
        raise ValueError(f"unknown provider kind {kind!r}") from None


__all__ = ["ChatRequest", "ProviderAdapter", "UpstreamError", "UpstreamTarget", "adapter_for"]

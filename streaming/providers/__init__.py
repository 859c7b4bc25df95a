"""Provider adapters, one module per upstream wire format.

The failures they raise are the classes of ``streaming.providers.errors``.
"""

from __future__ import annotations

from functools import cache

from streaming.providers.base import (
    ChatRequest,
    EmbeddingRequest,
    Embeddings,
    Price,
    ProviderAdapter,
    UpstreamTarget,
)
from streaming.providers.errors import UpstreamError


@cache
def _adapters() -> dict[str, ProviderAdapter]:
    # Imported on first use: the adapter modules import the shared HTTP helpers.
    from streaming.providers.anthropic import AnthropicAdapter
    from streaming.providers.demo import DemoAdapter
    from streaming.providers.openai import OpenAIAdapter

    return {"openai": OpenAIAdapter(), "anthropic": AnthropicAdapter(), "demo": DemoAdapter()}


def adapter_for(kind: str) -> ProviderAdapter:
    """The adapter for a provider kind (``openai``, ``anthropic``, ``demo``)."""
    try:
        return _adapters()[kind]
    except KeyError:
        raise ValueError(f"unknown provider kind {kind!r}") from None


def can_embed(kind: str) -> bool:
    """Whether targets of a provider kind serve embeddings."""
    return adapter_for(kind).embeds


__all__ = [
    "ChatRequest",
    "EmbeddingRequest",
    "Embeddings",
    "Price",
    "ProviderAdapter",
    "UpstreamError",
    "UpstreamTarget",
    "adapter_for",
    "can_embed",
]

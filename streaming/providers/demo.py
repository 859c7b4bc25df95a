"""The built-in ``demo`` provider: a deterministic answer at a realistic pace.

It lets a fresh install stream something with no upstream account, and gives
tests and demos a provider whose output is known in advance. Its embeddings
are pseudo-random unit vectors drawn from a hash of each input: the same
input always gets the same vector, but nearness means nothing (they are not
semantic).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import re
import struct
from collections.abc import AsyncGenerator
from typing import Any

from django.conf import settings

from streaming.providers.base import (
    ChatRequest,
    EmbeddingRequest,
    Embeddings,
    ProviderAdapter,
    UpstreamTarget,
)
from streaming.providers.pool import UpstreamPool

ANSWER = (
    'You asked: "{prompt}". This is the Sluice demo provider, so no model was '
    "consulted. The words arrive one at a time, at about the pace a real model "
    "would send them, which makes it easy to see streaming, cancellation and "
    "resuming work end to end. Configure an OpenAI or Anthropic provider to get "
    "real answers."
)
PROMPT_QUOTE_CHARS = 80
# A word with the whitespace before it: joining the tokens gives back the text.
TOKEN_PATTERN = re.compile(r"\s*\S+")


def text_of(content: Any) -> str:
    """A message's text, whether its content is a string or a list of parts."""
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return " ".join(text_of(message.get("content")).split())
    return ""


def demo_tokens(messages: list[dict[str, Any]], count: int | None = None) -> list[str]:
    """The answer's tokens; ``count`` repeats or cuts them to exactly that many."""
    prompt = last_user_text(messages)
    if len(prompt) > PROMPT_QUOTE_CHARS:
        prompt = prompt[: PROMPT_QUOTE_CHARS - 3].rstrip() + "..."
    tokens = TOKEN_PATTERN.findall(ANSWER.format(prompt=prompt or "nothing"))
    if count is None:
        return tokens
    while len(tokens) < count:
        tokens += [" " + token.lstrip() for token in tokens]
    return tokens[:count]


DEMO_DIMENSIONS = 256


def demo_embedding(item: str | list[int], dimensions: int = DEMO_DIMENSIONS) -> list[float]:
    """A unit vector drawn from a hash of ``item``: deterministic, not semantic.

    Its values are float32s, so the base64 form decodes to the same numbers.
    """
    seed = hashlib.sha256(repr(item).encode()).digest()
    raw = hashlib.shake_256(seed).digest(4 * dimensions)
    values = [v / 2**31 for v in struct.unpack(f"<{dimensions}i", raw)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    packed = struct.pack(f"<{dimensions}f", *(v / norm for v in values))
    return list(struct.unpack(f"<{dimensions}f", packed))


def as_base64(vector: list[float]) -> str:
    """A vector as OpenAI's ``encoding_format: base64`` sends it: little-endian float32s."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _input_tokens(item: str | list[int]) -> int:
    return len(item) if isinstance(item, list) else max(1, len(item.split()))


def _chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


class DemoAdapter(ProviderAdapter):
    """Streams :func:`demo_tokens`; ``target.params`` may set ``delay`` and ``tokens``.
    Embeds with :func:`demo_embedding`."""

    kind = "demo"
    embeds = True

    async def embed(
        self, client: UpstreamPool, target: UpstreamTarget, request: EmbeddingRequest
    ) -> Embeddings:
        dimensions = int(request.params.get("dimensions") or DEMO_DIMENSIONS)
        inputs = request.inputs
        vectors = [demo_embedding(item, dimensions) for item in inputs]
        if request.params.get("encoding_format") == "base64":
            encoded: list[list[float] | str] = [as_base64(v) for v in vectors]
        else:
            encoded = list(vectors)
        tokens = sum(_input_tokens(item) for item in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return Embeddings(vectors=encoded, model=target.model, usage=usage)

    async def stream(
        self, client: UpstreamPool, target: UpstreamTarget, request: ChatRequest
    ) -> AsyncGenerator[dict[str, Any], None]:
        delay = float(target.params.get("delay", settings.SLUICE_DEMO_TOKEN_DELAY))
        count = target.params.get("tokens")
        tokens = demo_tokens(request.messages, int(count) if count is not None else None)
        yield _chunk({"role": "assistant", "content": ""})
        for token in tokens:
            # sleep(0) still yields to the loop, so a zero delay stays cancellable.
            await asyncio.sleep(delay)
            yield _chunk({"content": token})
        yield _chunk({}, finish_reason="stop")
        prompt_tokens = sum(len(text_of(m.get("content")).split()) for m in request.messages)
        yield {
            "choices": [],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(tokens),
                "total_tokens": prompt_tokens + len(tokens),
            },
        }

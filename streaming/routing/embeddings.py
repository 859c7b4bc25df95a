"""Routing an embeddings request: the chat's retries, fallback and breaker, one answer.

Only targets whose provider kind has embeddings are planned (an Anthropic
target is skipped). An embeddings call has no output before it is complete,
so every failure the route's policy lists in ``retry_on`` is retried or
fallen back over, and the route's first-token timeout bounds the whole call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import replace

from audit.records import AuditEntry
from streaming.providers import EmbeddingRequest, Embeddings, UpstreamTarget, adapter_for, can_embed
from streaming.providers.errors import Timeout
from streaming.providers.pool import upstream_pool
from streaming.routing.breaker import breakers
from streaming.routing.fallback import FallbackRun
from streaming.routing.routes import ResolvedRoute
from streaming.routing.usage import attempt_cost, estimate_embedding_tokens


def embedding_route(route: ResolvedRoute) -> ResolvedRoute:
    """``route`` with only the targets that can embed."""
    targets = tuple(t for t in route.targets if can_embed(t.upstream.kind))
    return replace(route, targets=targets)


class EmbeddingRun(FallbackRun):
    """An embeddings request's way through its plan."""

    def __init__(self, route: ResolvedRoute, request: EmbeddingRequest, audit: AuditEntry) -> None:
        super().__init__(embedding_route(route), audit)
        self.request = request

    async def _attempt(self, target: UpstreamTarget, key: str) -> AsyncGenerator[Embeddings, None]:
        async with self._recorded(target, key) as record:
            adapter = adapter_for(target.kind)
            limit = self.policy.first_token_timeout
            try:
                async with asyncio.timeout(limit):
                    result = await adapter.embed(upstream_pool(), target, self.request)
            except TimeoutError:
                raise Timeout(f"upstream did not answer within {limit:g} s") from None
            record.first_token_at = time.time()
            record.tokens = result.usage.get("prompt_tokens", 0)
            record.prompt_tokens = record.tokens or estimate_embedding_tokens(self.request)
            record.cost_usd = attempt_cost(record, target.price)
            await breakers().success(key)
        yield result


async def route_embeddings(
    route: ResolvedRoute, request: EmbeddingRequest, audit: AuditEntry
) -> Embeddings:
    """The embeddings from the first target that answers; every attempt goes in ``audit``.

    Raises the last UpstreamError when none does.
    """
    async with aclosing(EmbeddingRun(route, request, audit).stream()) as answers:
        async for result in answers:
            return result
    raise AssertionError("a run that does not fail yields its answer")

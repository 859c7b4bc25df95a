"""Route lookup for the hot path: cached in process, invalidated on change.

A cache hit costs a dict lookup. Saves in this process clear the cache at
once (signals); other instances pick changes up within
SLUICE["CONFIG_CACHE_SECONDS"].
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from channels.db import database_sync_to_async
from django.conf import settings

from streaming.models import ModelRoute
from streaming.providers.base import UpstreamTarget


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    attempts_per_target: int = 1
    backoff_seconds: float = 0.2
    first_token_timeout: float = 30.0
    stall_timeout: float = 60.0
    allow_midstream_fallback: bool = False


@dataclass(frozen=True, slots=True)
class ResolvedRoute:
    model: str
    targets: tuple[UpstreamTarget, ...]
    policy: RoutePolicy


_routes: dict[str, tuple[float, ResolvedRoute | None]] = {}
_names: list[tuple[float, tuple[str, ...]]] = []


def invalidate_routes() -> None:
    _routes.clear()
    _names.clear()


def _load_route(model: str) -> ResolvedRoute | None:
    route = (
        ModelRoute.objects.filter(model=model, enabled=True)
        .prefetch_related("targets__provider")
        .first()
    )
    if route is None:
        return None
    targets = tuple(
        UpstreamTarget(
            provider=t.provider.name,
            kind=t.provider.kind,
            base_url=t.provider.base_url.rstrip("/"),
            model=t.upstream_model,
            api_key=t.provider.resolve_api_key(),
            params=dict(t.params or {}),
        )
        for t in route.targets.all()
        if t.provider.enabled
    )
    policy = RoutePolicy(
        attempts_per_target=route.attempts_per_target,
        backoff_seconds=route.backoff_seconds,
        first_token_timeout=route.first_token_timeout,
        stall_timeout=route.stall_timeout,
        allow_midstream_fallback=route.allow_midstream_fallback,
    )
    return ResolvedRoute(model=route.model, targets=targets, policy=policy)


def _load_names() -> tuple[str, ...]:
    return tuple(ModelRoute.objects.filter(enabled=True).values_list("model", flat=True))


async def resolve_route(model: str) -> ResolvedRoute | None:
    """The enabled route for a public model name, or None."""
    now = time.monotonic()
    hit = _routes.get(model)
    if hit is not None and hit[0] > now:
        return hit[1]
    route = await database_sync_to_async(_load_route)(model)
    if len(_routes) > 10_000:
        _routes.clear()
    _routes[model] = (now + settings.SLUICE["CONFIG_CACHE_SECONDS"], route)
    return route


async def route_names() -> tuple[str, ...]:
    """Public names of all enabled routes."""
    now = time.monotonic()
    if _names and _names[0][0] > now:
        return _names[0][1]
    names = await database_sync_to_async(_load_names)()
    _names[:] = [(now + settings.SLUICE["CONFIG_CACHE_SECONDS"], names)]
    return names

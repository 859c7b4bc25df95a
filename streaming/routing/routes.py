"""Route lookup for the hot path: cached in process, invalidated on change.

A route is loaded with its targets' prices (``ModelPrice``, by provider and
upstream model). A cache hit costs a dict lookup. A save in this process (of a
provider, a route, a target or a price) clears the cache at once (signals call
``invalidate_routes``). With ``REDIS_URL`` set, the save also bumps a config
version in Redis, and every instance reads that version at most every
CONFIG_VERSION_CHECK_SECONDS (one GET, on the request path but never more
than twice a second per process), so a change applies everywhere within
about half a second. Without Redis, other processes pick changes up
within SLUICE_CONFIG_CACHE_SECONDS.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial

import redis
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import transaction

from gateway.cache import SingleFlightCache
from gateway.database import DATABASE_UNAVAILABLE
from gateway.redis import async_client, redis_enabled, sync_client
from streaming.models import (
    ModelPrice,
    ModelRoute,
    RouteTarget,
    default_retry_on,
    default_retry_same_target_on,
)
from streaming.observability.logging import warn_throttled
from streaming.providers.base import Price, UpstreamTarget

logger = logging.getLogger("sluice.routes")

CONFIG_VERSION_KEY = "sluice:config:version"
CONFIG_VERSION_CHECK_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """How the router treats one route's targets (ops set it in the admin)."""

    attempts_per_target: int = 1
    backoff_seconds: float = 0.2
    first_token_timeout: float = 30.0
    stall_timeout: float = 60.0
    allow_midstream_fallback: bool = False
    retry_on: frozenset[str] = field(default_factory=lambda: frozenset(default_retry_on()))
    # Of retry_on, what is tried again on the same target; the rest moves on at once.
    retry_same_target_on: frozenset[str] = field(
        default_factory=lambda: frozenset(default_retry_same_target_on())
    )
    load_balance: bool = False


@dataclass(frozen=True, slots=True)
class TargetChoice:
    """A route target as the router plans with it."""

    upstream: UpstreamTarget
    priority: int = 0
    weight: int = 1


@dataclass(frozen=True, slots=True)
class ResolvedRoute:
    model: str
    targets: tuple[TargetChoice, ...]
    policy: RoutePolicy


def _keep_seconds(_: object) -> float:
    return settings.SLUICE_CONFIG_CACHE_SECONDS


# A model with no enabled route is kept too (None): asking again costs a query.
# While the database is unreachable, the routes last loaded keep serving.
_routes: SingleFlightCache[str, ResolvedRoute | None] = SingleFlightCache(
    ttl=_keep_seconds, max_entries=10_000, stale_on=DATABASE_UNAVAILABLE
)
_names: SingleFlightCache[str, tuple[str, ...]] = SingleFlightCache(
    ttl=_keep_seconds, max_entries=1, stale_on=DATABASE_UNAVAILABLE
)


def _clear_local() -> None:
    _routes.invalidate()
    _names.invalidate()


def invalidate_routes() -> None:
    """The configuration changed: forget cached routes here, and tell other instances."""
    _clear_local()
    if redis_enabled():
        # After the commit, or another instance could reload the old rows.
        transaction.on_commit(_bump_config_version)


# -- cross-instance invalidation ------------------------------------------
def _bump_config_version() -> None:
    _clear_local()
    try:
        sync_client().incr(CONFIG_VERSION_KEY)
    except (redis.RedisError, OSError):
        warn_throttled(
            logger, "could not publish a config change; other instances see it after the TTL"
        )


class _VersionCheck:
    seen: bytes | str | None = None
    checked_at = 0.0


async def _check_config_version() -> None:
    """Clear the cache if another instance changed the configuration."""
    now = time.monotonic()
    if now - _VersionCheck.checked_at < CONFIG_VERSION_CHECK_SECONDS:
        return
    _VersionCheck.checked_at = now  # before the await: one check at a time
    try:
        version = await async_client().get(CONFIG_VERSION_KEY)
    except (redis.RedisError, OSError):
        warn_throttled(logger, "could not read the config version from Redis")
        return
    if version != _VersionCheck.seen:
        _VersionCheck.seen = version
        _clear_local()


# -- loading ----------------------------------------------------------------
def _policy(route: ModelRoute) -> RoutePolicy:
    return RoutePolicy(
        attempts_per_target=route.attempts_per_target,
        backoff_seconds=route.backoff_seconds,
        first_token_timeout=route.first_token_timeout,
        stall_timeout=route.stall_timeout,
        allow_midstream_fallback=route.allow_midstream_fallback,
        retry_on=frozenset(route.retry_on or ()),
        retry_same_target_on=frozenset(route.retry_same_target_on or ()),
        load_balance=route.load_balance,
    )


def _prices(targets: list[RouteTarget]) -> dict[tuple[int, str], Price]:
    """The prices of ``targets``, by (provider id, upstream model): one query."""
    rows = ModelPrice.objects.filter(
        provider_id__in={t.provider_id for t in targets},
        model__in={t.upstream_model for t in targets},
    )
    return {
        (p.provider_id, p.model): Price(
            input_per_mtok=p.input_per_mtok,
            output_per_mtok=p.output_per_mtok,
            cached_input_per_mtok=p.cached_input_per_mtok,
        )
        for p in rows
    }


def _load_route(model: str) -> ResolvedRoute | None:
    route = (
        ModelRoute.objects.filter(model=model, enabled=True)
        .prefetch_related("targets__provider")
        .first()
    )
    if route is None:
        return None
    enabled = [t for t in route.targets.all() if t.provider.enabled]
    prices = _prices(enabled) if enabled else {}
    targets = tuple(
        TargetChoice(
            upstream=UpstreamTarget(
                provider=t.provider.name,
                kind=t.provider.kind,
                base_url=t.provider.base_url.rstrip("/"),
                model=t.upstream_model,
                api_key=t.provider.resolve_api_key(),
                params=dict(t.params or {}),
                price=prices.get((t.provider_id, t.upstream_model)),
            ),
            priority=t.priority,
            weight=t.weight,
        )
        for t in enabled
    )
    return ResolvedRoute(model=route.model, targets=targets, policy=_policy(route))


def _load_names() -> tuple[str, ...]:
    return tuple(ModelRoute.objects.filter(enabled=True).values_list("model", flat=True))


_load_route_async = database_sync_to_async(_load_route)
_load_names_async = database_sync_to_async(_load_names)


async def resolve_route(model: str) -> ResolvedRoute | None:
    """The enabled route for a public model name, or None."""
    if redis_enabled():
        await _check_config_version()
    return await _routes.get(model, partial(_load_route_async, model))


async def route_names() -> tuple[str, ...]:
    """Public names of all enabled routes."""
    if redis_enabled():
        await _check_config_version()
    return await _names.get("enabled", _load_names_async)

"""Who is calling: async OAuth2 token resolution shared by every transport.

django-oauth-toolkit has no async API, so tokens are looked up here with one
query (by DOT's sha256 ``token_checksum``, joined to the application and its
policy) through ``database_sync_to_async``, and the result is cached in
process. A cache hit is a dict lookup and a clock read: no query.

Staleness: entries live at most ``SLUICE_TOKEN_CACHE_SECONDS`` and never past
the token's own expiry. Deleting/revoking a token or saving an Application or
AppPolicy clears the affected entries at once on this process, and again on
every gateway process once the change commits (accounts.signals publishes it
through accounts.revocation over the channel layer). The TTL only bounds
staleness when that message is lost (the channel layer was down).

Invalid tokens are not cached: a negative cache would let a flood of random
tokens evict the valid ones, and would reject a token used a moment before
its row committed. Each bad token costs one indexed query; rate limiting is
the defence against floods.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from oauth2_provider.models import get_access_token_model, get_application_model

from accounts.models import AppPolicy

CACHE_MAX_ENTRIES = 10_000

_clock = time.time


@dataclass(frozen=True, slots=True)
class AppIdentity:
    """An authenticated OAuth2 application, as seen by a transport."""

    app_id: int
    client_id: str
    name: str
    token_id: int | None  # None for playground tickets, which carry no access token
    scopes: frozenset[str]
    allowed_models: frozenset[str] | None  # None: every model
    expires_at: float  # epoch seconds: the token's expiry (inf for the playground's app)
    # The staff user acting through the admin playground; None for an app's own token.
    staff_user_id: int | None = None
    staff_username: str = ""

    def may_use(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models


class AuthError(Exception):
    """A request that may not proceed: ``status`` 401 (who are you?) or 403 (not allowed)."""

    def __init__(self, status: int, code: str, message: str, *, scope: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.scope = scope

    @property
    def www_authenticate(self) -> str:
        """The RFC 6750 ``WWW-Authenticate`` header value for this error."""
        if self.code == "missing_token":
            return 'Bearer realm="sluice"'
        if self.code == "insufficient_scope":
            return f'Bearer realm="sluice", error="insufficient_scope", scope="{self.scope}"'
        if self.status == 401:
            return 'Bearer realm="sluice", error="invalid_token"'
        return 'Bearer realm="sluice"'


def require_scope(identity: AppIdentity, scope: str) -> None:
    if scope not in identity.scopes:
        raise AuthError(403, "insufficient_scope", f"This needs the '{scope}' scope.", scope=scope)


def require_model(identity: AppIdentity, model: str) -> None:
    if not identity.may_use(model):
        raise AuthError(403, "model_not_allowed", f"This app may not use the model '{model}'.")


# --- the cache --------------------------------------------------------------
# Keys: the token's sha256 hex (bearer), "id:<token pk>" (tickets), "app:<pk>"
# (staff tickets). Values: (identity, deadline in epoch seconds).
# Reads take no lock (a dict get is atomic); writers and scans do, because
# signal handlers run on other threads. _generation stops a lookup that raced
# an invalidation from caching what it read before the invalidation.
_cache: dict[str, tuple[AppIdentity, float]] = {}
_lock = threading.Lock()
_generation = 0


def _cache_get(key: str) -> AppIdentity | None:
    entry = _cache.get(key)
    if entry is not None and entry[1] > _clock():
        return entry[0]
    return None


def _cache_put(key: str, identity: AppIdentity, generation: int) -> None:
    ttl = settings.SLUICE_TOKEN_CACHE_SECONDS
    deadline = min(_clock() + ttl, identity.expires_at)
    with _lock:
        if generation != _generation or deadline <= _clock():
            return
        _cache.pop(key, None)  # re-insert at the end: dict order is age order
        while len(_cache) >= CACHE_MAX_ENTRIES:
            _cache.pop(next(iter(_cache)), None)
        _cache[key] = (identity, deadline)


def _drop(match: Callable[[AppIdentity], bool]) -> None:
    global _generation
    with _lock:
        _generation += 1
        for key in [k for k, (identity, _) in _cache.items() if match(identity)]:
            del _cache[key]


def invalidate_app(app_id: int) -> None:
    """Forget every cached identity of one application (this process only)."""
    _drop(lambda identity: identity.app_id == app_id)


def invalidate_token(token_id: int) -> None:
    """Forget one access token (this process only)."""
    _drop(lambda identity: identity.token_id == token_id)


def clear_token_cache() -> None:
    global _generation
    with _lock:
        _generation += 1
        _cache.clear()


# --- lookups (sync, run in a worker thread) ---------------------------------


def _token_identity(lookup: dict[str, Any]) -> AppIdentity | AuthError:
    token = (
        get_access_token_model()
        .objects.select_related("application__policy")
        .filter(**lookup)
        .first()
    )
    if token is None or token.application is None:
        return AuthError(401, "invalid_token", "The access token is not valid.")
    expires_at = token.expires.timestamp()
    if expires_at <= _clock():
        return AuthError(401, "token_expired", "The access token has expired.")
    policy = AppPolicy.of(token.application)
    if not policy.enabled:
        return AuthError(403, "app_disabled", "This app is disabled.")
    # The policy is read at use, not only at issue, so narrowing it takes effect at once.
    scopes = frozenset(token.scope.split()) & frozenset(policy.scopes)
    return _identity(
        token.application, policy, token_id=token.pk, scopes=scopes, expires=expires_at
    )


def _app_identity(app_id: int) -> AppIdentity | AuthError:
    app = get_application_model().objects.select_related("policy").filter(pk=app_id).first()
    if app is None:
        return AuthError(401, "invalid_token", "The app no longer exists.")
    policy = AppPolicy.of(app)
    if not policy.enabled:
        return AuthError(403, "app_disabled", "This app is disabled.")
    return _identity(app, policy, token_id=None, scopes=frozenset(policy.scopes), expires=math.inf)


def _identity(
    app: Any, policy: AppPolicy, *, token_id: int | None, scopes: frozenset[str], expires: float
) -> AppIdentity:
    return AppIdentity(
        app_id=app.pk,
        client_id=app.client_id,
        name=app.name,
        token_id=token_id,
        scopes=scopes,
        allowed_models=frozenset(policy.allowed_models) or None,
        expires_at=expires,
    )


_load_token = database_sync_to_async(_token_identity)
_load_app = database_sync_to_async(_app_identity)


async def _resolve(key: str, load: Any, arg: Any) -> AppIdentity:
    identity = _cache_get(key)
    if identity is not None:
        return identity
    # One lookup per key at a time: a burst of requests with a token this
    # process has not seen yet waits for one query, not one each.
    loading = _loading.get(key)
    if loading is None:
        loading = _loading[key] = asyncio.ensure_future(_load_and_cache(key, load, arg))
        loading.add_done_callback(lambda _: _loading.pop(key, None))
    result = await asyncio.shield(loading)
    if isinstance(result, AuthError):
        raise result
    return result


_loading: dict[str, asyncio.Future[AppIdentity | AuthError]] = {}


async def _load_and_cache(key: str, load: Any, arg: Any) -> AppIdentity | AuthError:
    generation = _generation
    result: AppIdentity | AuthError = await load(arg)
    if not isinstance(result, AuthError):
        _cache_put(key, result, generation)
    return result


# --- public API ---------------------------------------------------------------


def token_checksum(token: str) -> str:
    """DOT 3's lookup key for an access token; also the cache key (never the raw token)."""
    return hashlib.sha256(token.encode()).hexdigest()


async def resolve_bearer(token: str) -> AppIdentity:
    """The identity behind a bearer token. Raises AuthError (401, or 403 app_disabled)."""
    checksum = token_checksum(token)
    return await _resolve(checksum, _load_token, {"token_checksum": checksum})


async def resolve_token_id(token_id: int) -> AppIdentity:
    """The identity behind an access token, by primary key (ticket redemption)."""
    return await _resolve(f"id:{token_id}", _load_token, {"pk": token_id})


async def resolve_app(app_id: int) -> AppIdentity:
    """An application's identity without any token (playground tickets); scopes from its policy."""
    return await _resolve(f"app:{app_id}", _load_app, app_id)

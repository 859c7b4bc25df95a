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

import hashlib
import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from oauth2_provider.models import get_access_token_model, get_application_model

from accounts.limits import NO_LIMITS, Limits
from accounts.models import NEVER_EXPIRES, AppPolicy
from accounts.tokens import app_token_touch
from gateway.cache import SingleFlightCache
from gateway.database import DATABASE_UNAVAILABLE

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
    limits: Limits = NO_LIMITS  # from the app's policy: admission needs no query
    # The app's audit redaction patterns (AppPolicy.redaction_specs), for its records.
    redact: tuple[str, ...] = ()

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
# (staff tickets). Signal handlers invalidate from other threads; the cache
# takes care of that, and of not keeping a lookup that raced an invalidation.


def _keep_seconds(identity: AppIdentity) -> float:
    return min(settings.SLUICE_TOKEN_CACHE_SECONDS, identity.expires_at - _clock())


_identities: SingleFlightCache[str, AppIdentity] = SingleFlightCache(
    ttl=_keep_seconds,
    max_entries=CACHE_MAX_ENTRIES,
    clock=lambda: _clock(),  # looked up at each call, so a test can move time
    # While the database is unreachable, a token seen before keeps working until it expires.
    stale_on=DATABASE_UNAVAILABLE,
    stale_ok=lambda identity: identity.expires_at > _clock(),
)


def invalidate_app(app_id: int) -> None:
    """Forget every cached identity of one application (this process only)."""
    _identities.invalidate(lambda identity: identity.app_id == app_id)


def invalidate_token(token_id: int) -> None:
    """Forget one access token (this process only)."""
    _identities.invalidate(lambda identity: identity.token_id == token_id)


def clear_token_cache() -> None:
    _identities.invalidate()


# --- lookups (sync, run in a worker thread) ---------------------------------


def _token_identity(lookup: dict[str, Any]) -> AppIdentity:
    token = (
        get_access_token_model()
        .objects.select_related("application__policy", "app_token")
        .filter(**lookup)
        .first()
    )
    if token is None or token.application is None:
        raise AuthError(401, "invalid_token", "The access token is not valid.")
    # A token that never expires has no expiry timer and is cached as long as any.
    expires_at = math.inf if token.expires >= NEVER_EXPIRES else token.expires.timestamp()
    if expires_at <= _clock():
        raise AuthError(401, "token_expired", "The access token has expired.")
    policy = AppPolicy.of(token.application)
    if not policy.enabled:
        raise AuthError(403, "app_disabled", "This app is disabled.")
    # The policy is read at use, not only at issue, so narrowing it takes effect at once.
    scopes = frozenset(token.scope.split()) & frozenset(policy.scopes)
    app_token = getattr(token, "app_token", None)  # a long-lived token's record
    if app_token is not None:
        app_token_touch(app_token)  # here, on a cache miss: never a write per request
    return _identity(
        token.application, policy, token_id=token.pk, scopes=scopes, expires=expires_at
    )


def _app_identity(app_id: int) -> AppIdentity:
    app = get_application_model().objects.select_related("policy").filter(pk=app_id).first()
    if app is None:
        raise AuthError(401, "invalid_token", "The app no longer exists.")
    policy = AppPolicy.of(app)
    if not policy.enabled:
        raise AuthError(403, "app_disabled", "This app is disabled.")
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
        limits=Limits.of_policy(policy),
        redact=policy.redaction_specs(),
    )


_load_token = database_sync_to_async(_token_identity)
_load_app = database_sync_to_async(_app_identity)


# --- public API ---------------------------------------------------------------


def token_checksum(token: str) -> str:
    """DOT 3's lookup key for an access token; also the cache key (never the raw token)."""
    return hashlib.sha256(token.encode()).hexdigest()


async def resolve_bearer(token: str) -> AppIdentity:
    """The identity behind a bearer token. Raises AuthError (401, or 403 app_disabled)."""
    checksum = token_checksum(token)
    return await _identities.get(checksum, partial(_load_token, {"token_checksum": checksum}))


def bearer_identity(token: str) -> AppIdentity:
    """The identity behind a bearer token, looked up now (sync, uncached: the
    management API, where a query per request is nothing). Raises AuthError."""
    return _token_identity({"token_checksum": token_checksum(token)})


async def resolve_token_id(token_id: int) -> AppIdentity:
    """The identity behind an access token, by primary key (ticket redemption)."""
    return await _identities.get(f"id:{token_id}", partial(_load_token, {"pk": token_id}))


async def resolve_app(app_id: int) -> AppIdentity:
    """An application's identity without any token (playground tickets); scopes from its policy."""
    return await _identities.get(f"app:{app_id}", partial(_load_app, app_id))

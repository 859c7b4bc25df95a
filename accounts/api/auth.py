"""Who calls the management API: a bearer token of one of the gateway's apps,
resolved as every transport resolves it (policy, expiry, a disabled app)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission

from accounts.identity import AppIdentity, AuthError, bearer_identity

ADMIN_SCOPE = "admin"


@dataclass(frozen=True, slots=True)
class AppPrincipal:
    """``request.user`` for an app's token (DRF wants a user); ``request.auth`` is its identity."""

    identity: AppIdentity
    is_authenticated: bool = True

    def __str__(self) -> str:
        return f"app:{self.identity.name}"


class BearerTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer <token>``, client-credentials or long-lived alike.

    DOT's ``OAuth2Authentication`` finds hashed tokens too, but knows nothing of
    an app's policy (a disabled app, scopes narrowed since issue).
    """

    def authenticate(self, request: Any) -> tuple[AppPrincipal, AppIdentity] | None:
        scheme, _, token = get_authorization_header(request).decode("latin-1").partition(" ")
        if scheme.lower() != "bearer":
            return None
        if not token.strip():
            raise exceptions.AuthenticationFailed("Expected 'Authorization: Bearer <token>'.")
        try:
            identity = bearer_identity(token.strip())
        except AuthError as error:
            if error.status == 403:
                raise exceptions.PermissionDenied(error.message) from error
            raise exceptions.AuthenticationFailed(error.message) from error
        return AppPrincipal(identity), identity

    def authenticate_header(self, request: Any) -> str:
        return 'Bearer realm="sluice"'


class HasAdminScope(BasePermission):
    """The token carries the ``admin`` scope (and its app's policy still grants it)."""

    message = f"This needs the '{ADMIN_SCOPE}' scope."

    def has_permission(self, request: Any, view: Any) -> bool:
        identity = request.auth
        return isinstance(identity, AppIdentity) and ADMIN_SCOPE in identity.scopes

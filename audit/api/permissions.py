"""Who may read the audit trail through the API: a token with ``audit:read``."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission

AUDIT_READ_SCOPE = "audit:read"


class HasAuditReadScope(BasePermission):
    """The bearer token carries ``audit:read`` (and its app's policy still grants it).

    ``request.auth`` is what the API's authentication (REST_FRAMEWORK's
    default, accounts.api.auth) resolved: an identity with ``scopes``. audit
    does not import accounts, so it is read by that attribute. Scopes do not
    imply each other: ``admin`` manages the gateway but does not read the
    trail (least privilege); an auditor's tool needs nothing more.
    """

    message = f"This needs the '{AUDIT_READ_SCOPE}' scope (insufficient_scope)."
    code = "insufficient_scope"

    def has_permission(self, request: Any, view: Any) -> bool:
        scopes = getattr(request.auth, "scopes", None)
        return scopes is not None and AUDIT_READ_SCOPE in scopes

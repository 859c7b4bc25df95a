"""The admin's change form of an app and its policy, as a browser posts it."""

from __future__ import annotations

from typing import Any

from accounts.models import AppPolicy


def app_change_form(app: Any, policy: AppPolicy, **policy_fields: Any) -> dict[str, Any]:
    """The app's fields as they stand, and ``policy_fields`` (``policy-0-<name>``)."""
    return {
        "client_id": app.client_id,
        "client_secret": "",
        "client_type": app.client_type,
        "authorization_grant_type": app.authorization_grant_type,
        "name": app.name,
        "algorithm": app.algorithm,
        "redirect_uris": "",
        "post_logout_redirect_uris": "",
        "allowed_origins": "",
        "policy-TOTAL_FORMS": "1",
        "policy-INITIAL_FORMS": "1",
        "policy-MIN_NUM_FORMS": "0",
        "policy-MAX_NUM_FORMS": "1",
        "policy-0-id": str(policy.pk),
        "policy-0-application": str(app.pk),
        "policy-0-enabled": "on",
        **{f"policy-0-{name}": value for name, value in policy_fields.items()},
    }

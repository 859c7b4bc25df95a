"""The token endpoint's validator: grant each app only what its AppPolicy allows.

Enable with ``OAUTH2_PROVIDER["OAUTH2_VALIDATOR_CLASS"] =
"accounts.oauth_validator.SluiceOAuth2Validator"``.
"""

from __future__ import annotations

import secrets
from functools import cache
from typing import Any

from django.contrib.auth.hashers import check_password, make_password
from oauth2_provider.oauth2_validators import OAuth2Validator
from oauth2_provider.settings import oauth2_settings

from accounts.models import AppPolicy


def _policy(client: Any) -> AppPolicy:
    policy = AppPolicy.objects.filter(application=client).first()
    return policy if policy is not None else AppPolicy.default_for(client)


@cache
def _dummy_secret_hash() -> str:
    return make_password(secrets.token_urlsafe(32), hasher=oauth2_settings.CLIENT_SECRET_HASHER)


class SluiceOAuth2Validator(OAuth2Validator):
    """DOT's validator, narrowed by the per-app policy."""

    def authenticate_client(self, request: Any, *args: Any, **kwargs: Any) -> bool:
        if not super().authenticate_client(request, *args, **kwargs):
            if request.client is None:
                # An unknown client id costs what a wrong secret costs: the
                # answer's timing must not tell which ids exist.
                check_password(secrets.token_urlsafe(16), _dummy_secret_hash())
            return False
        # A disabled app is refused as invalid_client, before any scope is looked at.
        return _policy(request.client).enabled

    def validate_scopes(
        self,
        client_id: str,
        scopes: list[str],
        client: Any,
        request: Any,
        *args: Any,
        **kwargs: Any,
    ) -> bool:
        if not super().validate_scopes(client_id, scopes, client, request, *args, **kwargs):
            return False
        return set(scopes) <= set(_policy(client).scopes)

    def get_default_scopes(
        self, client_id: str, request: Any, *args: Any, **kwargs: Any
    ) -> list[str]:
        # The global defaults the app may have; failing that, everything it may have.
        allowed = _policy(request.client).scopes
        defaults = super().get_default_scopes(client_id, request, *args, **kwargs)
        return [s for s in defaults if s in allowed] or list(allowed)

"""Actors: alice's app may chat with any model, bob's app only with "small",
charlie's app holds only the admin scope (no chat access)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from django.test import Client
from oauth2_provider.views import TokenView

from accounts import identity, services


@dataclass
class App:
    app: Any
    secret: str


@pytest.fixture(autouse=True)
def sluice_validator(settings: Any) -> Iterator[None]:
    # Until gateway/settings.py names the validator; the reload flag makes DOT's
    # token view pick the overridden validator up.
    settings.OAUTH2_PROVIDER = {
        **settings.OAUTH2_PROVIDER,
        "OAUTH2_VALIDATOR_CLASS": "accounts.oauth_validator.SluiceOAuth2Validator",
        "ALWAYS_RELOAD_OAUTHLIB_CORE": True,
    }
    yield
    if "_oauthlib_core" in TokenView.__dict__:
        del TokenView._oauthlib_core


@pytest.fixture(autouse=True)
def empty_token_cache() -> Iterator[None]:
    identity.clear_token_cache()
    yield
    identity.clear_token_cache()


@pytest.fixture
def alice(transactional_db: None) -> App:
    return App(*services.app_create(name="alice-app", scopes=["chat"], models=None))


@pytest.fixture
def bob(transactional_db: None) -> App:
    return App(*services.app_create(name="bob-app", scopes=["chat"], models=["small"]))


@pytest.fixture
def charlie(transactional_db: None) -> App:
    return App(*services.app_create(name="charlie-app", scopes=["admin"], models=None))


def request_token(app: Any, secret: str, scope: str | None = None) -> Any:
    """POST /o/token/ as the app (client credentials, HTTP basic auth)."""
    basic = base64.b64encode(f"{quote(app.client_id)}:{quote(secret)}".encode()).decode()
    data = {"grant_type": "client_credentials"}
    if scope is not None:
        data["scope"] = scope
    return Client().post("/o/token/", data, HTTP_AUTHORIZATION=f"Basic {basic}")


def token_for(actor: App, scope: str | None = None) -> str:
    response = request_token(actor.app, actor.secret, scope)
    assert response.status_code == 200, response.content
    return str(response.json()["access_token"])


@pytest.fixture
def alice_token(alice: App) -> str:
    return token_for(alice)


@pytest.fixture
def bob_token(bob: App) -> str:
    return token_for(bob)

from __future__ import annotations

import io
import json

import pytest
from asgiref.sync import async_to_sync
from django.core.management import CommandError, call_command
from oauth2_provider.models import Application

from accounts import services
from accounts.identity import AuthError, resolve_bearer
from accounts.models import AppPolicy
from tests.accounts.conftest import App, request_token, token_for

pytestmark = pytest.mark.django_db(transaction=True)


def sluice_app(*args: str) -> object:
    out = io.StringIO()
    call_command("sluice_app", *args, stdout=out)
    return json.loads(out.getvalue())


def test_app_create_stores_a_hashed_secret_and_a_policy(bob: App) -> None:
    app = Application.objects.get(pk=bob.app.pk)
    assert app.client_secret != bob.secret  # hashed at rest
    assert app.user is None
    assert app.authorization_grant_type == Application.GRANT_CLIENT_CREDENTIALS
    policy = AppPolicy.objects.get(application=app)
    assert (policy.scopes, policy.allowed_models, policy.enabled) == (["chat"], ["small"], True)


def test_app_names_are_unique(alice: App) -> None:
    with pytest.raises(services.AppExists):
        services.app_create(name="alice-app", scopes=["chat"])


def test_alice_cannot_get_the_admin_scope(alice: App) -> None:
    response = request_token(alice.app, alice.secret, scope="admin")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"
    assert request_token(alice.app, alice.secret, scope="chat").json()["scope"] == "chat"


def test_charlie_gets_only_what_his_policy_allows(charlie: App) -> None:
    assert request_token(charlie.app, charlie.secret, scope="chat").status_code == 400
    assert request_token(charlie.app, charlie.secret).json()["scope"] == "admin"


def test_app_ensure_is_idempotent_and_can_reset_the_secret() -> None:
    app, secret = services.app_ensure(name="demo", scopes=["chat"])
    assert secret is not None
    again, none = services.app_ensure(name="demo", scopes=["chat"])
    assert (again.pk, none) == (app.pk, None)

    reset_app, new_secret = services.app_ensure(name="demo", scopes=["chat"], reset_secret=True)
    assert reset_app.pk == app.pk and new_secret not in (None, secret)
    assert request_token(app, secret).status_code == 401
    assert request_token(app, new_secret).status_code == 200


def test_command_create_prints_working_credentials() -> None:
    created = sluice_app("create", "dave-app", "--scopes", "chat", "--models", "a, b")

    assert isinstance(created, dict)
    assert set(created) == {"name", "client_id", "client_secret", "scopes", "models"}
    assert (created["scopes"], created["models"]) == (["chat"], ["a", "b"])
    app = Application.objects.get(client_id=created["client_id"])
    token = token_for(App(app, created["client_secret"]))
    assert async_to_sync(resolve_bearer)(token).allowed_models == frozenset({"a", "b"})


def test_command_rejects_unknown_scope_and_duplicate_name(alice: App) -> None:
    with pytest.raises(CommandError, match="Unknown scope"):
        sluice_app("create", "eve-app", "--scopes", "root")
    with pytest.raises(CommandError, match="already exists"):
        sluice_app("create", "alice-app")


def test_command_list_shows_no_secrets(alice: App, bob_token: str) -> None:
    listed = sluice_app("list")

    assert isinstance(listed, list)
    assert [row["name"] for row in listed] == ["alice-app", "bob-app"]
    assert listed[1]["active_tokens"] == 1
    assert alice.secret not in json.dumps(listed)
    assert all("client_secret" not in row for row in listed)


def test_command_revoke_kills_tokens(bob: App, bob_token: str) -> None:
    async_to_sync(resolve_bearer)(bob_token)  # cached

    assert sluice_app("revoke", "bob-app") == {"name": "bob-app", "revoked_tokens": 1}
    with pytest.raises(AuthError):
        async_to_sync(resolve_bearer)(bob_token)
    with pytest.raises(CommandError, match="No app"):
        sluice_app("revoke", "charlie-app")


def test_ops_edit_the_policy_inline_in_the_admin(admin_client, bob: App) -> None:  # type: ignore[no-untyped-def]
    response = admin_client.get(f"/admin/oauth2_provider/application/{bob.app.pk}/change/")

    assert response.status_code == 200
    assert b"policy-0-allowed_models" in response.content

"""The app pages of the admin: a policy edited with real widgets, no OAuth2 clutter."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from accounts.models import AppPolicy
from accounts.services import app_create
from streaming.models import ModelRoute
from tests.accounts.forms import app_change_form

pytestmark = pytest.mark.django_db


@pytest.fixture
def ops() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("ops", "ops@example.com", "x"))
    return client


def checked(page: str, name: str) -> set[str]:
    boxes = re.findall(
        rf'<input type="checkbox" name="{re.escape(name)}" value="([^"]+)"[^>]*>', page
    )
    on = re.findall(
        rf'<input type="checkbox" name="{re.escape(name)}" value="([^"]+)"[^>]*checked', page
    )
    return set(boxes), set(on)


def test_the_policy_has_checkboxes_for_scopes_and_for_the_configured_routes(ops):
    for model in ("chat-small", "chat-large"):
        ModelRoute.objects.create(model=model)
    app, _ = app_create(name="acme", scopes=["chat"], models=["chat-small", "retired-model"])

    page = ops.get(reverse("admin:oauth2_provider_application_change", args=[app.pk])).content
    page = page.decode()

    scopes, scopes_on = checked(page, "policy-0-scopes")
    assert scopes == {"chat", "admin", "audit:read"} and scopes_on == {"chat"}
    models, models_on = checked(page, "policy-0-allowed_models")
    # Every route to choose from, and a name no route has any more is kept, not dropped.
    assert models == {"chat-small", "chat-large", "retired-model"}
    assert models_on == {"chat-small", "retired-model"}
    # No JSON to type: the only text area is the redaction patterns', one per line.
    policy = page.split('id="policy-group"')[1].split("</fieldset>")[0]
    assert re.findall(r'<textarea name="([^"]+)"', policy) in ([], ["policy-0-redact_patterns"])


def test_saving_the_checkboxes_saves_the_policy(ops):
    ModelRoute.objects.create(model="chat-small")
    app, _ = app_create(name="acme", scopes=["chat"])
    url = reverse("admin:oauth2_provider_application_change", args=[app.pk])
    policy = AppPolicy.objects.get(application=app)
    form = app_change_form(
        app,
        policy,
        scopes=["chat", "admin"],
        allowed_models=["chat-small"],
        max_tokens_mode="clamp",
    )

    response = ops.post(url, form)

    assert response.status_code == 302, response.content.decode()[:2000]
    policy.refresh_from_db()
    assert policy.scopes == ["chat", "admin"] and policy.allowed_models == ["chat-small"]
    assert policy.requests_per_minute is None  # no limit

    limits = {"policy-0-requests_per_minute": "60", "policy-0-monthly_cost_usd": "200.50"}
    limits |= {"policy-0-max_tokens": "4096", "policy-0-max_tokens_mode": "refuse"}
    assert ops.post(url, form | limits).status_code == 302
    policy.refresh_from_db()
    assert (policy.requests_per_minute, policy.max_tokens, policy.max_tokens_mode) == (
        60,
        4096,
        "refuse",
    )
    assert str(policy.monthly_cost_usd) == "200.50"

    for field, bad in [("tokens_per_minute", "0"), ("monthly_cost_usd", "-1")]:
        page = ops.post(url, form | {f"policy-0-{field}": bad})
        assert page.status_code == 200  # the form again, with the error
        assert "Ensure this value is greater than or equal to" in page.content.decode()


def test_oauth2_models_that_mean_nothing_for_client_credentials_are_out_of_sight(ops):
    index = ops.get(reverse("admin:index")).content.decode()
    assert "Access tokens" in index  # ops can still see and revoke tokens
    for hidden in ("Grants", "Id tokens", "Refresh tokens"):
        assert hidden not in index

"""Long-lived tokens in the admin: issued and shown once, listed on the app's
page and in their own list, revoked by an action. Secrets are never shown back."""

from __future__ import annotations

import hashlib

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from oauth2_provider.models import AccessToken

from accounts.models import AppToken
from accounts.services import app_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def ops() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("ops", "ops@example.com", "x"))
    return client


def issue(ops: Client, app: object, **fields: object) -> str:
    form = {"application": app.pk, "name": "ci-bot", "expires": "90d", **fields}  # type: ignore[attr-defined]
    page = ops.post(reverse("admin:accounts_apptoken_add"), form)
    assert page.status_code == 200
    assert "no-store" in page["Cache-Control"]
    return page.content.decode()


def test_issuing_shows_the_token_once(ops):
    app, _ = app_create(name="acme", scopes=["chat"])
    form = ops.get(reverse("admin:accounts_apptoken_add") + f"?application={app.pk}")
    assert form.status_code == 200 and b'name="expires"' in form.content

    page = issue(ops, app, scopes=["chat"])

    record = AppToken.objects.get()
    token = page.split('id="issued-token" readonly size="60" value="')[1].split('"')[0]
    assert token.startswith(record.prefix) and "will not be shown again" in page
    access = AccessToken.objects.get(pk=record.access_token_id)
    assert (
        access.token == "" and access.token_checksum == hashlib.sha256(token.encode()).hexdigest()
    )
    assert record.created_by == "ops"
    app_page = ops.get(reverse("admin:oauth2_provider_application_change", args=[app.pk]))
    listing = ops.get(reverse("admin:accounts_apptoken_changelist"))
    access_page = ops.get(reverse("admin:oauth2_provider_accesstoken_change", args=[access.pk]))
    for shown in (app_page, listing, access_page):
        assert shown.status_code == 200 and token not in shown.content.decode()
        assert record.prefix in shown.content.decode() or shown is access_page


def test_the_app_page_lists_name_prefix_and_last_use(ops):
    app, _ = app_create(name="acme", scopes=["chat"])
    issue(ops, app, name="nightly")
    AppToken.objects.update(last_used=timezone.now())

    page = ops.get(reverse("admin:oauth2_provider_application_change", args=[app.pk]))

    text = page.content.decode()
    record = AppToken.objects.get()
    assert "nightly" in text and record.prefix in text and "Issue a token" in text
    assert record.last_used.strftime("%Y-%m-%d %H:%M") in text and ">active<" in text


def test_a_bad_request_is_shown_on_the_form(ops):
    app, _ = app_create(name="acme", scopes=["chat"])

    beyond_policy = issue(ops, app, scopes=["admin"])
    bad_expiry = issue(ops, app, expires="forever")

    assert "not in the app&#x27;s policy" in beyond_policy and 'id="issue-token"' in beyond_policy
    assert "Expiry" in bad_expiry
    assert not AppToken.objects.exists()


def test_the_revoke_action(ops):
    app, _ = app_create(name="acme", scopes=["chat"])
    issue(ops, app)
    record = AppToken.objects.get()
    action = {"action": "revoke_tokens", "_selected_action": [str(record.pk)]}

    done = ops.post(reverse("admin:accounts_apptoken_changelist"), action)

    assert done.status_code == 302
    record.refresh_from_db()
    assert record.revoked is not None and record.access_token_id is None
    assert not AccessToken.objects.exists()
    listing = ops.get(reverse("admin:accounts_apptoken_changelist")).content.decode()
    assert "revoked" in listing

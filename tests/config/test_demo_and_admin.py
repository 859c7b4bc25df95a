"""The demo seed and the provider admin: idempotent, keys write-only and encrypted."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from oauth2_provider.models import Application

from streaming.models import ModelRoute, Provider


def seed():
    out = StringIO()
    call_command("sluice_demo", stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_demo_seed_runs_twice_without_duplicates_and_prints_working_credentials(client):
    first, second = seed(), seed()

    assert Provider.objects.filter(name="demo").count() == 1
    assert ModelRoute.objects.get(model="demo").targets.count() == 1
    assert Application.objects.filter(name="demo-app").count() == 1
    assert "password '" in first and "password '" not in second
    # An operator who lost the first run's output is told how to set a new one.
    assert "manage.py changepassword admin" in second
    client_id = second.split("client_id:")[1].split()[0]
    secret = second.split("client_secret:")[1].split()[0]
    response = client.post(
        "/o/token/",
        {"grant_type": "client_credentials"},
        HTTP_AUTHORIZATION=basic(client_id, secret),
    )
    assert response.status_code == 200 and response.json()["scope"] == "chat"
    assert "curl -N" in second and "OpenAI(base_url=" in second


def basic(user, password):
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.django_db
def test_provider_key_is_write_only_in_the_admin_and_encrypted_at_rest(admin_client):
    response = admin_client.post(
        "/admin/streaming/provider/add/",
        {
            "name": "openai-main",
            "kind": "openai",
            "base_url": "https://api.openai.com/v1",
            "api_key": "sk-live-supersecret",
            "api_key_env": "",
            "enabled": "on",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    provider = Provider.objects.get(name="openai-main")
    assert provider.resolve_api_key() == "sk-live-supersecret"

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT api_key_encrypted FROM streaming_provider WHERE name = %s", ["openai-main"]
        )
        stored = cursor.fetchone()[0]
    assert "supersecret" not in stored

    page = admin_client.get(f"/admin/streaming/provider/{provider.pk}/change/").content.decode()
    listing = admin_client.get("/admin/streaming/provider/").content.decode()
    assert "supersecret" not in page and stored not in page and "supersecret" not in listing
    assert "stored (encrypted)" in listing

    # Saving without typing a key keeps it; rotating replaces it.
    form = {
        "name": "openai-main",
        "kind": "openai",
        "base_url": "https://api.openai.com/v1",
        "api_key": "",
        "api_key_env": "",
        "enabled": "on",
    }
    admin_client.post(f"/admin/streaming/provider/{provider.pk}/change/", form)
    assert Provider.objects.get(pk=provider.pk).resolve_api_key() == "sk-live-supersecret"
    admin_client.post(
        f"/admin/streaming/provider/{provider.pk}/change/", {**form, "api_key": "sk-rotated"}
    )
    assert Provider.objects.get(pk=provider.pk).resolve_api_key() == "sk-rotated"


@pytest.mark.django_db
def test_openai_provider_needs_a_base_url(admin_client):
    response = admin_client.post(
        "/admin/streaming/provider/add/",
        {"name": "no-url", "kind": "openai", "base_url": "", "api_key": "", "enabled": "on"},
    )
    assert response.status_code == 200
    assert not Provider.objects.filter(name="no-url").exists()


def test_a_command_run_after_make_run_without_dev_mode_is_told_what_works(tmp_path):
    """`make run` keeps its secrets under var/ in dev mode; a bare `manage.py`
    outside it fails closed, and says the command line that works."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "SLUICE_DEV")}
    env.update(SLUICE_VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="gateway.settings")
    env.pop("DATABASE_URL", None)
    bare = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=root, env=env, capture_output=True, text=True
    )
    assert bare.returncode != 0
    assert "SLUICE_DEV=1 .venv/bin/python manage.py <command>" in bare.stderr

    dev = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=root,
        env={**env, "SLUICE_DEV": "1"},
        capture_output=True,
        text=True,
    )
    assert dev.returncode == 0, dev.stderr


@pytest.mark.django_db
def test_a_key_typed_into_a_form_with_an_error_is_kept_for_the_corrected_save(admin_client):
    import re

    form = {"name": "openai-main", "kind": "openai", "api_key": "sk-live-typed-once"}
    first = admin_client.post("/admin/streaming/provider/add/", {**form, "base_url": ""})
    page = first.content.decode()
    assert first.status_code == 200 and "needs a base URL" in page
    assert "sk-live-typed-once" not in page  # never shown back, not even to its typist
    assert "A key was entered" in page

    kept = re.search(r'name="api_key_kept" value="([^"]+)"', page)
    assert kept is not None
    fixed = {**form, "api_key": "", "api_key_kept": kept.group(1)}
    second = admin_client.post(
        "/admin/streaming/provider/add/", {**fixed, "base_url": "https://api.openai.com/v1"}
    )

    assert second.status_code == 302, second.content.decode()[:2000]
    provider = Provider.objects.get(name="openai-main")
    assert provider.resolve_api_key() == "sk-live-typed-once"


@pytest.mark.django_db
def test_a_forged_kept_key_is_ignored(admin_client):
    response = admin_client.post(
        "/admin/streaming/provider/add/",
        {
            "name": "openai-main",
            "kind": "openai",
            "base_url": "https://api.openai.com/v1",
            "api_key_kept": "not-a-token",
        },
    )
    assert response.status_code == 302
    assert Provider.objects.get(name="openai-main").resolve_api_key() == ""

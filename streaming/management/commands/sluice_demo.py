"""Seed the embedded demo: a demo provider and route, an app, an admin.

Safe to run again: nothing is duplicated. The demo app's secret is reset on
each run so the printed credentials always work; the admin password is
printed only when the admin is created.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from accounts.services import app_ensure
from streaming.models import ModelRoute, Provider, RouteTarget


def _seed_route() -> None:
    provider, _ = Provider.objects.get_or_create(name="demo", defaults={"kind": Provider.Kind.DEMO})
    route, _ = ModelRoute.objects.get_or_create(
        model="demo", defaults={"description": "The built-in demo model"}
    )
    RouteTarget.objects.get_or_create(
        route=route, provider=provider, defaults={"upstream_model": "demo"}
    )


def _seed_admin() -> str | None:
    users = get_user_model()
    if users.objects.filter(username="admin").exists():
        return None
    password = secrets.token_urlsafe(12)
    users.objects.create_superuser("admin", "admin@localhost", password)
    return password


QUICKSTART = """
Sluice demo is ready.
  admin:          {base}/admin/  {login}
  client_id:      {client_id}
  client_secret:  {secret}

Get a token and stream:
  TOKEN=$(curl -s -u '{client_id}:{secret}' \\
    -d grant_type=client_credentials {base}/o/token/ \\
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  curl -N {base}/v1/chat/completions -H "Authorization: Bearer $TOKEN" \\
    -H 'Content-Type: application/json' \\
    -d '{{"model": "demo", "stream": true, "messages": [{{"role": "user", "content": "Hello"}}]}}'

With the OpenAI Python SDK (pip install openai):
  from openai import OpenAI
  client = OpenAI(base_url="{base}/v1", api_key=TOKEN)
  stream = client.chat.completions.create(
      model="demo", stream=True, messages=[{{"role": "user", "content": "Hello"}}])
  for chunk in stream:
      print(chunk.choices[0].delta.content or "", end="", flush=True)
"""


class Command(BaseCommand):
    help = "Create the demo provider, route, OAuth2 app and admin user (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            _seed_route()
            password = _seed_admin()
            app, secret = app_ensure(
                name="demo-app", scopes=["chat"], models=None, reset_secret=True
            )
        base = f"http://{options['host']}:{options['port']}"
        if password:
            login = f"user 'admin', password '{password}' (shown once)"
        else:
            login = (
                "user 'admin' (its password was shown on the first run; to set a new one:\n"
                "                  SLUICE_DEV=1 .venv/bin/python manage.py changepassword admin)"
            )
        self.stdout.write(
            QUICKSTART.format(base=base, login=login, client_id=app.client_id, secret=secret)
        )

"""``manage.py sluice_app create|list|revoke``: OAuth2 apps for ops, as JSON."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts import services


def _names(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


class Command(BaseCommand):
    help = "Create, list or revoke OAuth2 client-credentials apps."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="Create an app and print its secret once.")
        create.add_argument("name")
        create.add_argument("--scopes", type=_names, default=["chat"], help="e.g. chat,admin")
        create.add_argument(
            "--models", type=_names, default=[], help="allowed models, e.g. a,b (default: all)"
        )
        sub.add_parser("list", help="List apps (no secrets).")
        revoke = sub.add_parser("revoke", help="Revoke every token of an app.")
        revoke.add_argument("name")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result = getattr(self, f"_{options['action']}")(options)
        except (services.AppExists, services.AppNotFound) as exc:
            raise CommandError(str(exc)) from exc
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(json.dumps(result, indent=2))

    def _create(self, options: dict[str, Any]) -> dict[str, Any]:
        app, secret = services.app_create(
            name=options["name"], scopes=options["scopes"], models=options["models"]
        )
        return {
            "name": app.name,
            "client_id": app.client_id,
            "client_secret": secret,
            "scopes": options["scopes"],
            "models": options["models"],
        }

    def _list(self, options: dict[str, Any]) -> list[dict[str, Any]]:
        return [dataclasses.asdict(summary) for summary in services.app_list()]

    def _revoke(self, options: dict[str, Any]) -> dict[str, Any]:
        revoked = services.app_revoke_tokens(name=options["name"])
        return {"name": options["name"], "revoked_tokens": revoked}

"""``manage.py sluice_app create|list|revoke|token``: OAuth2 apps and their
long-lived tokens, for ops, as JSON."""

from __future__ import annotations

import dataclasses
import getpass
import json
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts import services, tokens
from accounts.api.serializers import AppTokenSerializer


def _names(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


class Command(BaseCommand):
    help = "Create, list or revoke OAuth2 client-credentials apps and their long-lived tokens."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="Create an app and print its secret once.")
        create.add_argument("name")
        create.add_argument(
            "--scopes", type=_names, default=["chat"], help="e.g. chat,admin or audit:read"
        )
        create.add_argument(
            "--models", type=_names, default=[], help="allowed models, e.g. a,b (default: all)"
        )
        sub.add_parser("list", help="List apps (no secrets).")
        revoke = sub.add_parser("revoke", help="Revoke every token of an app.")
        revoke.add_argument("name")
        self._add_token_arguments(sub.add_parser("token", help="An app's long-lived tokens."))

    def _add_token_arguments(self, parser: Any) -> None:
        sub = parser.add_subparsers(dest="token_action", required=True)
        create = sub.add_parser("create", help="Issue a token and print it once.")
        create.add_argument("app")
        create.add_argument("--name", required=True, help="what it is for, e.g. ci-bot")
        create.add_argument("--expires", default="90d", help="e.g. 90d, 12h, never (default 90d)")
        create.add_argument(
            "--scopes", type=_names, default=None, help="a subset of the app's scopes, e.g. chat"
        )
        listing = sub.add_parser("list", help="List an app's tokens (never the tokens).")
        listing.add_argument("app")
        revoke = sub.add_parser("revoke", help="Revoke one token: its streams end at once.")
        revoke.add_argument("app")
        revoke.add_argument("token", metavar="ID_OR_PREFIX")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "token":
            action = f"token_{options['token_action']}"
        try:
            result = getattr(self, f"_{action}")(options)
        except (services.AppExists, services.AppNotFound, tokens.TokenNotFound) as exc:
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

    def _token_create(self, options: dict[str, Any]) -> dict[str, Any]:
        issued = tokens.app_token_create(
            application=services.app_get(name=options["app"]),
            name=options["name"],
            expires=options["expires"],
            scopes=options["scopes"],
            created_by=f"shell:{_os_user()}",
        )
        return {**AppTokenSerializer(issued.record).data, "token": issued.token}

    def _token_list(self, options: dict[str, Any]) -> list[dict[str, Any]]:
        app = services.app_get(name=options["app"])
        return [AppTokenSerializer(t).data for t in tokens.app_token_list(application=app)]

    def _token_revoke(self, options: dict[str, Any]) -> dict[str, Any]:
        app = services.app_get(name=options["app"])
        record = tokens.app_token_get(application=app, key=options["token"])
        return dict(AppTokenSerializer(tokens.app_token_revoke(record=record)).data)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"

"""Writes (and the one read ops need) for OAuth2 apps and their policies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import DEFAULT_DB_ALIAS, transaction
from django.utils import timezone
from oauth2_provider.generators import generate_client_secret
from oauth2_provider.models import (
    get_access_token_model,
    get_application_model,
    get_refresh_token_model,
)

from accounts.models import AppPolicy, validate_name_list, validate_scope_list

PLAYGROUND_APP = "sluice-playground"
OPERATORS_GROUP = "operators"
USE_PLAYGROUND = "accounts.use_playground"


class AppNotFound(LookupError):
    pass


class AppExists(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class AppSummary:
    """An app as listed to ops: never its secret."""

    name: str
    client_id: str
    scopes: list[str]
    models: list[str]
    enabled: bool
    active_tokens: int


def app_create(
    *,
    name: str,
    scopes: list[str],
    models: list[str] | None = None,
    policy: dict[str, Any] | None = None,
) -> tuple[Any, str]:
    """A confidential client-credentials app plus its policy; returns (app, plaintext secret).

    DOT hashes the secret on save, so this is the only moment it can be shown.
    Names are unique among apps (ops address apps by name). ``policy`` holds
    any other AppPolicy fields (checked by the model's validators).
    """
    Application = get_application_model()
    validate_scope_list(scopes)
    validate_name_list(models or [])
    with transaction.atomic():
        if Application.objects.filter(name=name).exists():
            raise AppExists(f"An app named {name!r} already exists.")
        secret = generate_client_secret()
        app = Application.objects.create(
            name=name,
            client_type=Application.CLIENT_CONFIDENTIAL,
            authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
            client_secret=secret,
            hash_client_secret=True,
        )
        row = AppPolicy(
            application=app, scopes=list(scopes), allowed_models=models or [], **(policy or {})
        )
        row.full_clean(exclude=["application"])
        row.save()
    return app, secret


def app_update(*, name: str, new_name: str | None = None, policy: dict[str, Any]) -> AppPolicy:
    """Change an app's policy fields (and its name); the model's validators check them.

    Saving the policy drops cached identities everywhere, and disabling the
    app ends its open streams (accounts.signals).
    """
    app = app_get(name=name)
    with transaction.atomic():
        if new_name and new_name != app.name:
            if get_application_model().objects.filter(name=new_name).exists():
                raise AppExists(f"An app named {new_name!r} already exists.")
            app.name = new_name
            app.save(update_fields=["name", "updated"])
        row, _ = AppPolicy.objects.get_or_create(application=app)
        for field, value in policy.items():
            setattr(row, field, value)
        row.full_clean(exclude=["application"])
        row.save()
    return row


def app_delete(*, name: str) -> None:
    """Delete an app with its tokens; what it holds open ends (reason app_deleted)."""
    app_get(name=name).delete()


def app_ensure(
    *, name: str, scopes: list[str], models: list[str] | None = None, reset_secret: bool = False
) -> tuple[Any, str | None]:
    """The app named ``name``, created if missing; returns (app, secret or None).

    The secret is returned when the app is created, or when ``reset_secret``
    gives an existing app a new one (its tokens stay valid until they expire).
    An existing policy is left as ops edited it; a missing one is created.
    """
    Application = get_application_model()
    app = Application.objects.filter(name=name).order_by("pk").first()
    if app is None:
        return app_create(name=name, scopes=scopes, models=models)
    AppPolicy.objects.get_or_create(
        application=app, defaults={"scopes": list(scopes), "allowed_models": models or []}
    )
    if not reset_secret:
        return app, None
    secret = generate_client_secret()
    app.client_secret = secret
    app.save(update_fields=["client_secret", "updated"])
    return app, secret


def app_revoke_tokens(*, name: str) -> int:
    """Revoke every token of the app named ``name`` (long-lived ones too); returns how many
    access tokens died."""
    app = app_get(name=name)
    with transaction.atomic():
        get_refresh_token_model().objects.filter(application=app, revoked__isnull=True).update(
            revoked=timezone.now()
        )
        # delete() sends post_delete per token, which clears the token cache.
        token_model = get_access_token_model()
        _, per_model = token_model.objects.filter(application=app).delete()
    return per_model.get(token_model._meta.label, 0)


def app_list() -> list[AppSummary]:
    """Every app with its policy and count of unexpired tokens (an ops listing: N+1 is fine)."""
    apps = get_application_model().objects.select_related("policy").order_by("name", "pk")
    return [_summary(app) for app in apps]


def _summary(app: Any) -> AppSummary:
    policy = AppPolicy.of(app)
    tokens = get_access_token_model().objects.filter(application=app, expires__gt=timezone.now())
    return AppSummary(
        name=app.name,
        client_id=app.client_id,
        scopes=list(policy.scopes),
        models=list(policy.allowed_models),
        enabled=policy.enabled,
        active_tokens=tokens.count(),
    )


def app_get(*, name: str) -> Any:
    """The app named ``name``. Raises AppNotFound."""
    app = get_application_model().objects.filter(name=name).order_by("pk").first()
    if app is None:
        raise AppNotFound(f"No app named {name!r}.")
    return app


def app_redaction(*, app_id: int) -> tuple[str, ...]:
    """The redaction patterns of app ``app_id`` (audit.redaction's specs); none if it is gone."""
    app = get_application_model().objects.filter(pk=app_id).select_related("policy").first()
    return AppPolicy.of(app).redaction_specs() if app is not None else ()


def playground_app_ensure() -> int:
    """The pk of the admin playground's own app, created (chat scope) on first use.

    Staff never act as any other app: the playground's streams are billed to,
    and audited under, this one (with the staff user named on each record).
    """
    app = get_application_model().objects.filter(name=PLAYGROUND_APP).order_by("pk").first()
    if app is None:
        try:
            app, _secret = app_create(name=PLAYGROUND_APP, scopes=["chat"])
        except AppExists:  # created by a concurrent request
            app = app_get(name=PLAYGROUND_APP)
    return int(app.pk)


def operators_group_ensure(*, using: str = DEFAULT_DB_ALIAS) -> Group:
    """The ``operators`` group, holding the permission to use the playground.

    Idempotent: run by a data migration and after every migrate (a flushed
    test database loses its groups).
    """
    content_type = ContentType.objects.db_manager(using).get_for_model(AppPolicy)
    permission, _ = Permission.objects.using(using).get_or_create(
        content_type=content_type,
        codename="use_playground",
        defaults={"name": "Can stream in the admin playground"},
    )
    group, _ = Group.objects.using(using).get_or_create(name=OPERATORS_GROUP)
    group.permissions.add(permission)
    return group

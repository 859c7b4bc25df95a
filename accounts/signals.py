"""Keep tokens, apps and policies honest everywhere when they change.

Each change drops this process's cached identities at once, and once the
change commits it is published (accounts.revocation): every gateway process
drops its cached identities, and a revoked token, a deleted app or a disabled
policy ends the connections and generations it holds open. Publishing on
commit means no process can re-read the old row after hearing of the change.

QuerySet.update() sends no signals: code that bulk-updates these tables must
publish a Revocation itself.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.db.models.signals import post_delete, post_save, pre_delete
from django.utils import timezone
from oauth2_provider.models import get_access_token_model, get_application_model

from accounts.identity import invalidate_app, invalidate_token
from accounts.models import AppPolicy
from accounts.revocation import (
    APP_DELETED,
    APP_DISABLED,
    TOKEN_EXPIRED,
    TOKEN_REVOKED,
    Revocation,
    publish,
)
from accounts.tokens import mark_revoked


def _on_commit(revocation: Revocation, using: str | None) -> None:
    transaction.on_commit(partial(publish, revocation), using=using)


def _token_saved(sender: Any, instance: Any, created: bool = False, **kwargs: Any) -> None:
    if not created:  # a new token cannot be cached yet
        invalidate_token(instance.pk)
        # Expired by hand (the admin): its connections end now, not at the old expiry.
        reason = TOKEN_EXPIRED if instance.expires <= timezone.now() else None
        _on_commit(Revocation(token_id=instance.pk, reason=reason), kwargs.get("using"))


def _token_deleting(sender: Any, instance: Any, **kwargs: Any) -> None:
    # Before the delete nulls the link: a long-lived token's record says it was revoked.
    mark_revoked(access_token_id=instance.pk)


def _token_deleted(sender: Any, instance: Any, origin: Any = None, **kwargs: Any) -> None:
    invalidate_token(instance.pk)
    if _is_app(origin):
        return  # deleted with its app: the app's revocation ends them, saying why
    _on_commit(Revocation(token_id=instance.pk, reason=TOKEN_REVOKED), kwargs.get("using"))


def _is_app(origin: Any) -> bool:
    app_model = get_application_model()
    model = origin.model if isinstance(origin, QuerySet) else type(origin)
    return model is app_model


def _app_saved(sender: Any, instance: Any, **kwargs: Any) -> None:
    invalidate_app(instance.pk)
    _on_commit(Revocation(app_id=instance.pk), kwargs.get("using"))


def _app_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    invalidate_app(instance.pk)
    _on_commit(Revocation(app_id=instance.pk, reason=APP_DELETED), kwargs.get("using"))


def _policy_saved(sender: Any, instance: AppPolicy, **kwargs: Any) -> None:
    invalidate_app(instance.application_id)
    reason = None if instance.enabled else APP_DISABLED
    _on_commit(Revocation(app_id=instance.application_id, reason=reason), kwargs.get("using"))


def _policy_deleted(sender: Any, instance: AppPolicy, **kwargs: Any) -> None:
    # An app without a policy row is enabled: nothing to end.
    invalidate_app(instance.application_id)
    _on_commit(Revocation(app_id=instance.application_id), kwargs.get("using"))


def connect() -> None:
    token_model = get_access_token_model()
    app_model = get_application_model()
    post_save.connect(_token_saved, sender=token_model, dispatch_uid="sluice.token_saved")
    pre_delete.connect(_token_deleting, sender=token_model, dispatch_uid="sluice.token_deleting")
    post_delete.connect(_token_deleted, sender=token_model, dispatch_uid="sluice.token_deleted")
    post_save.connect(_app_saved, sender=app_model, dispatch_uid="sluice.app_saved")
    post_delete.connect(_app_deleted, sender=app_model, dispatch_uid="sluice.app_deleted")
    post_save.connect(_policy_saved, sender=AppPolicy, dispatch_uid="sluice.policy_saved")
    post_delete.connect(_policy_deleted, sender=AppPolicy, dispatch_uid="sluice.policy_deleted")

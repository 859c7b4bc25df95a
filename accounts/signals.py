"""Keep the in-process token cache honest when tokens, apps or policies change.

Only cache invalidation lives here. QuerySet.update() sends no signals: code
that bulk-updates these tables must call accounts.identity.invalidate_app().
"""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete, post_save
from oauth2_provider.models import get_access_token_model, get_application_model

from accounts.identity import invalidate_app, invalidate_token
from accounts.models import AppPolicy


def _token_changed(sender: Any, instance: Any, created: bool = False, **kwargs: Any) -> None:
    if not created:  # a new token cannot be cached yet
        invalidate_token(instance.pk)


def _app_changed(sender: Any, instance: Any, **kwargs: Any) -> None:
    invalidate_app(instance.pk)


def _policy_changed(sender: Any, instance: AppPolicy, **kwargs: Any) -> None:
    invalidate_app(instance.application_id)


def connect() -> None:
    token_model = get_access_token_model()
    app_model = get_application_model()
    post_save.connect(_token_changed, sender=token_model, dispatch_uid="sluice.token_saved")
    post_delete.connect(_token_changed, sender=token_model, dispatch_uid="sluice.token_deleted")
    post_save.connect(_app_changed, sender=app_model, dispatch_uid="sluice.app_saved")
    post_delete.connect(_app_changed, sender=app_model, dispatch_uid="sluice.app_deleted")
    post_save.connect(_policy_changed, sender=AppPolicy, dispatch_uid="sluice.policy_saved")
    post_delete.connect(_policy_changed, sender=AppPolicy, dispatch_uid="sluice.policy_deleted")

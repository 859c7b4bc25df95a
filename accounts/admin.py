"""Ops edit an app's policy (scopes, allowed models, on/off) on DOT's Application page."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from oauth2_provider.models import get_application_admin_class, get_application_model

from accounts.models import AppPolicy

Application = get_application_model()


class AppPolicyInline(admin.StackedInline):
    model = AppPolicy
    can_delete = False
    fields = ("enabled", "scopes", "allowed_models")
    verbose_name_plural = "policy"


class SluiceApplicationAdmin(get_application_admin_class()):  # type: ignore[misc]
    """DOT's ApplicationAdmin with the app's policy inline."""

    inlines = (AppPolicyInline,)

    def save_related(self, request: Any, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        # An untouched inline is not saved; give every app an explicit policy row anyway.
        AppPolicy.objects.get_or_create(application=form.instance)


if admin.site.is_registered(Application):
    admin.site.unregister(Application)
admin.site.register(Application, SluiceApplicationAdmin)

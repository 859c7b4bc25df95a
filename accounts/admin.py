"""Ops edit an app's policy (scopes, allowed models, on/off, limits) on DOT's Application
page, and see its long-lived tokens there (issued and revoked in accounts.admin_tokens).

What means nothing for client-credentials apps (grants, ID tokens, refresh
tokens) is kept out of the admin; access tokens stay, so ops can see and
revoke them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin
from oauth2_provider.models import (
    get_application_admin_class,
    get_application_model,
    get_grant_model,
    get_id_token_model,
    get_refresh_token_model,
)
from oauth2_provider.scopes import get_scopes_backend

from accounts.admin_tokens import tokens_of
from accounts.models import AUDIT_FIELDS, LIMIT_FIELDS, AppPolicy

Application = get_application_model()

# The public model names an app may be allowed, supplied by whoever knows the
# routes (streaming registers it at start-up: accounts never imports streaming).
model_names: list[Callable[[], list[str]]] = []


def _model_choices(current: list[str]) -> list[tuple[str, str]]:
    names = {name for source in model_names for name in source()}
    # A name no route has (any more) stays visible, so saving does not drop it unseen.
    return [(name, name) for name in sorted(names | set(current))]


class PatternLines(forms.Field):
    """A list of regular expressions, edited one per line."""

    widget = forms.Textarea(attrs={"rows": 3, "cols": 60})

    def prepare_value(self, value: Any) -> Any:
        return "\n".join(value) if isinstance(value, list) else value

    def to_python(self, value: Any) -> list[str]:
        return [line.strip() for line in str(value or "").splitlines() if line.strip()]


class AppPolicyForm(forms.ModelForm):
    """Scopes and models as checkboxes, not JSON; redaction patterns one per line."""

    scopes = forms.MultipleChoiceField(
        widget=forms.CheckboxSelectMultiple,
        help_text="What tokens of this app may do.",
    )
    allowed_models = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="The model routes this app may call. None checked: every model.",
    )
    redact_patterns = PatternLines(
        required=False,
        help_text="Regular expressions (Python syntax), one per line, whose matches the audit "
        "replaces with [REDACTED:custom] before storing.",
    )

    class Meta:
        model = AppPolicy
        fields = ("enabled", "scopes", "allowed_models", *LIMIT_FIELDS, *AUDIT_FIELDS)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        scopes = get_scopes_backend().get_all_scopes()
        current = list(self.instance.allowed_models or []) if self.instance.pk else []
        choices = {
            "scopes": [(k, f"{k}: {v}") for k, v in scopes.items()],
            "allowed_models": _model_choices(current),
        }
        for name, options in choices.items():
            field = self.fields[name]
            assert isinstance(field, forms.MultipleChoiceField)
            field.choices = options


class AppPolicyInline(admin.StackedInline):
    model = AppPolicy
    form = AppPolicyForm
    can_delete = False
    verbose_name_plural = "policy"


CLIENT_CREDENTIALS_FIELDS = (
    "name",
    "client_id",
    "client_secret",
    "hash_client_secret",
    "client_type",
    "authorization_grant_type",
)


class SluiceApplicationAdmin(get_application_admin_class()):  # type: ignore[misc]
    """DOT's ApplicationAdmin with the app's policy inline."""

    inlines = (AppPolicyInline,)

    @admin.display(description="Long-lived tokens")
    def long_lived_tokens(self, obj: Any) -> str:
        return tokens_of(obj)

    def get_readonly_fields(self, request: Any, obj: Any = None) -> Any:
        return (*super().get_readonly_fields(request, obj), "long_lived_tokens")

    def get_fieldsets(self, request: Any, obj: Any = None) -> Any:
        """What a client-credentials app is made of first; the rest of OAuth2 folded away."""
        fields = [
            f for _, options in super().get_fieldsets(request, obj) for f in options["fields"]
        ]
        first = [f for f in CLIENT_CREDENTIALS_FIELDS if f in fields]
        if obj is not None:
            first.append("long_lived_tokens")
        rest = [f for f in fields if f not in first and f != "long_lived_tokens"]
        return [
            (None, {"fields": first}),
            (
                "Other OAuth2 settings (not used by client-credentials apps)",
                {"fields": rest, "classes": ["collapse"]},
            ),
        ]

    def save_related(self, request: Any, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        # An untouched inline is not saved; give every app an explicit policy row anyway.
        AppPolicy.objects.get_or_create(application=form.instance)


if admin.site.is_registered(Application):
    admin.site.unregister(Application)
admin.site.register(Application, SluiceApplicationAdmin)

for unused in (get_grant_model(), get_id_token_model(), get_refresh_token_model()):
    if admin.site.is_registered(unused):
        admin.site.unregister(unused)

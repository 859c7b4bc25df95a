"""Ops staff configure providers and routes here. Keys are write-only."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from streaming.models import ModelRoute, Provider, RouteTarget


class ProviderForm(forms.ModelForm):
    base_url = forms.URLField(
        required=False, assume_scheme="https", help_text="e.g. https://api.openai.com/v1"
    )
    api_key = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only: leave blank to keep the stored key. Stored encrypted.",
    )
    clear_api_key = forms.BooleanField(required=False, help_text="Remove the stored key.")

    class Meta:
        model = Provider
        fields = ["name", "kind", "base_url", "api_key_env", "enabled"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        kind = data.get("kind")
        if kind in (Provider.Kind.OPENAI, Provider.Kind.ANTHROPIC) and not data.get("base_url"):
            self.add_error("base_url", "This kind of provider needs a base URL.")
        return data

    def save(self, commit: bool = True) -> Provider:
        provider: Provider = super().save(commit=False)
        if self.cleaned_data.get("clear_api_key"):
            provider.set_api_key("")
        elif self.cleaned_data.get("api_key"):
            provider.set_api_key(self.cleaned_data["api_key"])
        if commit:
            provider.save()
        return provider


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    form = ProviderForm
    list_display = ["name", "kind", "base_url", "key_status", "enabled", "updated_at"]
    list_filter = ["kind", "enabled"]
    search_fields = ["name", "base_url"]

    @admin.display(description="API key")
    def key_status(self, obj: Provider) -> str:
        if obj.has_stored_key:
            return "stored (encrypted)"
        return f"from ${obj.api_key_env}" if obj.api_key_env else "none"


class RouteTargetInline(admin.TabularInline):
    model = RouteTarget
    extra = 1
    fields = ["priority", "provider", "upstream_model", "weight", "params"]


@admin.register(ModelRoute)
class ModelRouteAdmin(admin.ModelAdmin):
    inlines = [RouteTargetInline]
    list_display = ["model", "enabled", "target_list", "allow_midstream_fallback", "updated_at"]
    list_filter = ["enabled"]
    search_fields = ["model", "description"]
    fieldsets = [
        (None, {"fields": ["model", "description", "enabled"]}),
        (
            "Fallback policy",
            {
                "fields": [
                    "attempts_per_target",
                    "backoff_seconds",
                    "first_token_timeout",
                    "stall_timeout",
                    "allow_midstream_fallback",
                ]
            },
        ),
    ]

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).prefetch_related("targets__provider")

    @admin.display(description="Targets")
    def target_list(self, obj: ModelRoute) -> str:
        return " → ".join(str(t) for t in obj.targets.all())

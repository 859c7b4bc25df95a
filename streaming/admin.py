"""Ops staff configure providers, routes and prices here. Keys are write-only.

Every save clears the route cache (streaming.signals), so a change applies to
the next request, on every instance when Redis is configured. Circuit
breaker state is read from streaming.routing.breaker for display.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from asgiref.sync import async_to_sync
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, QueryDict
from django.shortcuts import redirect
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html_join

from streaming import crypto
from streaming.models import (
    ModelPrice,
    ModelRoute,
    Provider,
    RetryOn,
    RouteTarget,
    default_retry_on,
    default_retry_same_target_on,
)
from streaming.providers import UpstreamError, UpstreamTarget, adapter_for
from streaming.routing.breaker import CLOSED, CircuitView, circuit_views, reset_circuits
from streaming.routing.fallback import probe_target

admin.site.site_header = "Sluice administration"
admin.site.site_title = "Sluice"
admin.site.index_title = "Providers, routes, apps and the audit trail"


KEPT_KEY_SECONDS = 3600  # how long a kept key survives an unfinished form


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
    # A key typed into a form that then failed validation, encrypted: the password
    # field is never filled back in, and a corrected save must not lose the key.
    api_key_kept = forms.CharField(required=False, widget=forms.HiddenInput)

    class Meta:
        model = Provider
        fields = ["name", "kind", "base_url", "internal_endpoint", "api_key_env", "enabled"]
        # The rules on base_url are Provider.clean's, shared with the config import.

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        kept = crypto.decrypt_recent(data.get("api_key_kept") or "", max_age=KEPT_KEY_SECONDS)
        key = data.get("api_key") or kept
        if key:
            data["api_key"] = key
            data_copy = QueryDict(mutable=True)
            data_copy.update(self.data)
            data_copy[self.add_prefix("api_key_kept")] = crypto.encrypt(key)
            self.data = data_copy
            # The bound field copied its help text when validation read it.
            self["api_key"].help_text = (
                "A key was entered: it is kept (encrypted) and saved with this form. "
                "Type another one to replace it."
            )
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


# -- circuit display ----------------------------------------------------------
def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else ""


def describe_circuit(view: CircuitView) -> str:
    if view.status == CLOSED:
        text = f"closed ({view.failures} recent failures)" if view.failures else "closed"
    else:
        label = "open" if view.status == "open" else "half-open (probing)"
        text = f"{label} since {_when(view.since)} after {view.failures} failures"
    if view.last_error:
        text += f"; last error {_when(view.last_failure_at)}: {view.last_error}"
    return text


def _circuits(targets: list[tuple[str, str]]) -> list[CircuitView] | None:
    try:
        return circuit_views(targets)
    except (redis.RedisError, OSError):
        return None


def _provider_targets(provider: Provider) -> list[RouteTarget]:
    seen: dict[str, RouteTarget] = {}
    for target in provider.targets.select_related("provider").order_by("id"):
        seen.setdefault(target.upstream_model, target)
    return list(seen.values())


# -- providers ------------------------------------------------------------------
@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    form = ProviderForm
    list_display = ["name", "kind", "base_url", "key_status", "circuit", "enabled", "updated_at"]
    list_filter = ["kind", "enabled"]
    search_fields = ["name", "base_url"]
    readonly_fields = ["circuits"]
    actions = ["test_connection", "reset_circuit_breakers"]

    @admin.display(description="API key")
    def key_status(self, obj: Provider) -> str:
        if obj.has_stored_key:
            return "stored (encrypted)"
        return f"from ${obj.api_key_env}" if obj.api_key_env else "none"

    @admin.display(description="Circuit")
    def circuit(self, obj: Provider) -> str:
        models = [t.upstream_model for t in _provider_targets(obj)]
        views = _circuits([(obj.name, m) for m in models])
        if views is None:
            return "unknown (Redis unavailable)"
        opened = sum(v.status != CLOSED for v in views)
        return f"{opened} of {len(views)} open" if opened else "closed"

    @admin.display(description="Circuit breakers (per upstream model)")
    def circuits(self, obj: Provider) -> str:
        models = [t.upstream_model for t in _provider_targets(obj)] if obj.pk else []
        views = _circuits([(obj.name, m) for m in models])
        if views is None:
            return "unknown (Redis unavailable)"
        if not views:
            return "no route uses this provider yet"
        rows = ((m, describe_circuit(v)) for m, v in zip(models, views, strict=True))
        return format_html_join("", "<div><strong>{}</strong>: {}</div>", rows)

    change_form_template = "admin/streaming/provider/change_form.html"

    def get_urls(self) -> list[URLPattern]:
        test = self.admin_site.admin_view(self.test_connection_view)
        name = f"{self.opts.app_label}_{self.opts.model_name}_test_connection"
        return [path("<int:pk>/test-connection/", test, name=name), *super().get_urls()]

    def test_connection_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """The provider page's "Test connection" button: probe, then back to the page."""
        provider = self.get_object(request, str(pk))
        if request.method != "POST" or provider is None:
            return HttpResponseNotAllowed(["POST"])
        if not self.has_view_or_change_permission(request, provider):
            raise PermissionDenied
        self._test(request, provider)
        return redirect(reverse("admin:streaming_provider_change", args=[pk]))

    @admin.action(description="Test connection (a 1-token request per upstream model)")
    def test_connection(self, request: HttpRequest, queryset: QuerySet[Provider]) -> None:
        for provider in queryset:
            self._test(request, provider)

    def _test(self, request: HttpRequest, provider: Provider) -> None:
        targets = _provider_targets(provider)[:3]
        if not targets:
            self.message_user(
                request,
                f"Cannot test {provider.name}: no route uses it yet (the test needs a model).",
                messages.WARNING,
            )
        for target in targets:
            self._probe(request, provider, target)

    def _probe(self, request: HttpRequest, provider: Provider, target: RouteTarget) -> None:
        upstream = UpstreamTarget(
            provider=provider.name,
            kind=provider.kind,
            base_url=provider.base_url.rstrip("/"),
            model=target.upstream_model,
            api_key=provider.resolve_api_key(),
            params=dict(target.params or {}),
        )
        url = adapter_for(provider.kind).url(upstream) or "built in"
        where = f"Test connection to {provider.name} / {target.upstream_model} ({url})"
        try:
            latency = async_to_sync(probe_target)(upstream)
        except UpstreamError as error:
            self.message_user(
                request, f"{where}: {error.error_class}: {error.message}", messages.ERROR
            )
        else:
            self.message_user(request, f"{where}: OK, first token in {latency:.0f} ms")

    @admin.action(description="Reset circuit breakers (close them now)")
    def reset_circuit_breakers(self, request: HttpRequest, queryset: QuerySet[Provider]) -> None:
        targets = [(p.name, t.upstream_model) for p in queryset for t in _provider_targets(p)]
        reset_circuits(targets)
        self.message_user(request, f"Closed {len(targets)} circuit(s).")


# -- routes ---------------------------------------------------------------------
class RouteTargetInline(admin.TabularInline):
    model = RouteTarget
    extra = 1
    fields = ["priority", "provider", "upstream_model", "weight", "params", "circuit"]
    readonly_fields = ["circuit"]

    @admin.display(description="Circuit")
    def circuit(self, obj: RouteTarget) -> str:
        if not obj.pk:
            return "-"
        views = _circuits([(obj.provider.name, obj.upstream_model)])
        return describe_circuit(views[0]) if views else "unknown (Redis unavailable)"


def failure_kinds(initial: Callable[[], list[str]], **options: Any) -> forms.Field:
    """Checkboxes of failure kinds, starting checked as the model's default does."""
    return forms.MultipleChoiceField(
        choices=RetryOn.choices,
        initial=initial,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        **options,
    )


class ModelRouteForm(forms.ModelForm):
    # The model's defaults, not none: a route added without touching the policy
    # falls back as one imported without ``retry_on`` does.
    retry_on = failure_kinds(
        default_retry_on,
        help_text="Failures that are retried, then fallen back on. Others go to the client.",
    )
    retry_same_target_on = failure_kinds(
        default_retry_same_target_on,
        label="Retry the same target on",
        help_text=(
            "Of the failures above, those tried again on the same target (up to attempts "
            "per target). The others go to the next target at once: a timeout or a silent "
            "upstream would cost its full timeout again."
        ),
    )

    class Meta:
        model = ModelRoute
        fields = "__all__"


@admin.register(ModelRoute)
class ModelRouteAdmin(admin.ModelAdmin):
    form = ModelRouteForm
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
                    "retry_on",
                    "retry_same_target_on",
                    "attempts_per_target",
                    "backoff_seconds",
                    "first_token_timeout",
                    "stall_timeout",
                    "allow_midstream_fallback",
                    "load_balance",
                ]
            },
        ),
    ]

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).prefetch_related("targets__provider")

    @admin.display(description="Targets")
    def target_list(self, obj: ModelRoute) -> str:
        return " → ".join(str(t) for t in obj.targets.all())


# -- prices ---------------------------------------------------------------------
@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """USD per million tokens for a provider's model; the audit prices each attempt with it."""

    list_display = [
        "provider",
        "model",
        "input_per_mtok",
        "cached_input_per_mtok",
        "output_per_mtok",
        "updated_at",
    ]
    list_filter = ["provider"]
    search_fields = ["model", "provider__name"]
    list_select_related = ["provider"]
    fields = ["provider", "model", "input_per_mtok", "cached_input_per_mtok", "output_per_mtok"]

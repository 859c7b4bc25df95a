"""Long-lived tokens in the admin: issued (shown once), listed, revoked.

The app's page lists its tokens and links here; issuing answers a page with
the token (never stored, never cached) and revoking is a changelist action.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html, format_html_join
from oauth2_provider.models import get_application_model
from oauth2_provider.scopes import get_scopes_backend

from accounts.models import AppToken
from accounts.tokens import app_token_create, app_token_revoke


class IssueTokenForm(forms.Form):
    application = forms.ModelChoiceField(queryset=get_application_model().objects.order_by("name"))
    name = forms.CharField(max_length=100, help_text="What it is for, e.g. ci-bot.")
    expires = forms.CharField(
        initial="90d", max_length=20, help_text="From now: 90d, 12h, 30m, or never."
    )
    scopes = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="A subset of the app's scopes. None checked: as the token endpoint grants.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["scopes"]
        assert isinstance(field, forms.MultipleChoiceField)
        field.choices = [(k, f"{k}: {v}") for k, v in get_scopes_backend().get_all_scopes().items()]


@admin.register(AppToken)
class AppTokenAdmin(admin.ModelAdmin):
    """Tokens are issued through the form above and revoked by the action; never edited."""

    list_display = (
        "name",
        "application",
        "prefix",
        "scopes",
        "created",
        "expires_display",
        "last_used",
        "status",
        "created_by",
    )
    list_filter = ("application", ("revoked", admin.EmptyFieldListFilter))
    search_fields = ("name", "prefix", "application__name")
    actions = ("revoke_tokens",)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # view only: a token's facts are as issued

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoke instead: the row is the record of what was issued

    @admin.display(description="expires", ordering="expires")
    def expires_display(self, record: AppToken) -> Any:
        return record.expires or "never"

    @admin.action(description="Revoke selected tokens", permissions=["add"])
    def revoke_tokens(self, request: HttpRequest, queryset: Any) -> None:
        for record in queryset:
            app_token_revoke(record=record)
        self.message_user(request, f"Revoked {len(queryset)} token(s).", messages.SUCCESS)

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        initial = {"application": request.GET.get("application")}
        form = IssueTokenForm(request.POST or None, initial=initial)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                issued = app_token_create(
                    application=data["application"],
                    name=data["name"],
                    expires=data["expires"],
                    scopes=data["scopes"] or None,
                    created_by=request.user.get_username(),
                )
            except ValidationError as error:
                form.add_error(None, error)
            else:
                self.log_addition(request, issued.record, [{"added": {}}])
                context = {"record": issued.record, "token": issued.token}
                return self._page(request, "issued", "Token issued", context)
        return self._page(request, "issue", "Issue a long-lived token", {"form": form})

    def _page(
        self, request: HttpRequest, template: str, title: str, context: dict[str, Any]
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": title,
            "changelist": reverse("admin:accounts_apptoken_changelist"),
            **context,
        }
        response = TemplateResponse(request, f"admin/accounts/apptoken/{template}.html", context)
        add_never_cache_headers(response)  # the issued token must not sit in a cache
        return response


def tokens_of(app: Any) -> str:
    """The app page's summary of its long-lived tokens (never the tokens)."""
    if app is None or app.pk is None:
        return "Save the app first."
    issue = reverse("admin:accounts_apptoken_add") + f"?application={app.pk}"
    listing = reverse("admin:accounts_apptoken_changelist") + f"?application__id__exact={app.pk}"
    rows = format_html_join(
        "",
        "<tr><td>{}</td><td><code>{}…</code></td><td>{}</td><td>{}</td><td>{}</td>"
        "<td>{}</td><td>{}</td></tr>",
        (
            (
                t.name,
                t.prefix,
                " ".join(t.scopes),
                t.created.strftime("%Y-%m-%d %H:%M"),
                t.expires.strftime("%Y-%m-%d %H:%M") if t.expires else "never",
                t.last_used.strftime("%Y-%m-%d %H:%M") if t.last_used else "never",
                t.status,
            )
            for t in AppToken.objects.filter(application=app)[:50]
        ),
    )
    return format_html(
        '<table class="sluice-tokens"><thead><tr><th>name</th><th>prefix</th><th>scopes</th>'
        "<th>created</th><th>expires</th><th>last used</th><th>status</th></tr></thead>"
        '<tbody>{}</tbody></table><p><a href="{}" class="addlink">Issue a token</a> · '
        '<a href="{}">All tokens (revoke)</a></p>',
        rows,
        issue,
        listing,
    )

"""The audit changelist's side of AuditRecordAdmin: a prompt column, full-text
search through ``audit.selectors``, and ``export/?format=jsonl|csv&<the
changelist's query>`` streamed as the API's export is."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.urls import URLPattern, path

from audit.export import FORMATS, export_response
from audit.models import AuditRecord
from audit.search import content_texts
from audit.selectors import audit_record_search, record_filters_parse

PROMPT_EXCERPT = 90


class AuditChangelistMixin:
    """For the AuditRecordAdmin: the prompt column, search, the export URL and
    the links' query strings."""

    admin_site: Any
    model: type[AuditRecord]

    @admin.display(description="prompt")
    def prompt(self, record: AuditRecord) -> str:
        """The request's last user message (its text parts), cut short."""
        for message in reversed(record.request_messages or []):
            if isinstance(message, dict) and message.get("role") == "user":
                text = " ".join(content_texts(message.get("content")))
                return text if len(text) <= PROMPT_EXCERPT else text[: PROMPT_EXCERPT - 1] + "…"
        return ""

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        """Full-text search (the API's ``q``); never duplicates rows."""
        if not search_term.strip():
            return queryset, False
        try:
            record_filters_parse({"q": search_term})
        except ValidationError as error:
            raise IncorrectLookupParameters(error) from error
        return audit_record_search(records=queryset, q=search_term.strip()), False

    def get_urls(self) -> list[URLPattern]:
        export = path(
            "export/",
            self.admin_site.admin_view(self.export_view),
            name="audit_auditrecord_export",
        )
        return [export, *super().get_urls()]  # type: ignore[misc]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        context = dict(extra_context or {})
        for fmt in FORMATS:
            query = request.GET.copy()
            query.pop("p", None)  # the page shown: an export takes every page
            query["format"] = fmt
            context[f"export_query_{fmt}"] = query.urlencode()
        response: TemplateResponse = super().changelist_view(  # type: ignore[misc]
            request, extra_context=context
        )
        return response

    def export_view(self, request: HttpRequest) -> HttpResponseBase:
        """What the changelist shows under the same query string, every page of
        it, oldest first; needs view permission on audit records."""
        if not self.has_view_permission(request):  # type: ignore[attr-defined]
            raise PermissionDenied
        fmt = request.GET.get("format") or "jsonl"
        if fmt not in FORMATS:
            return HttpResponseBadRequest(f"Unknown export format '{fmt}': jsonl or csv.")
        try:
            filters = record_filters_parse(request.GET)
        except ValidationError as error:
            lines = [f"{name}: {'; '.join(msgs)}" for name, msgs in error.message_dict.items()]
            return HttpResponseBadRequest("\n".join(lines), content_type="text/plain")
        return export_response(filters=filters, fmt=fmt)

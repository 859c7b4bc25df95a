"""``/api/v1/audit/``: the audit trail for auditors' tools, read-only.

Every view needs a bearer token with the ``audit:read`` scope (``admin`` alone
is not enough: least privilege). Filters are ``audit.selectors``' (the admin's
and the export's too); a bad one is a 400 naming it.

The list uses cursor pagination, newest first: the trail is large and
append-mostly, and a cursor page is one index range scan however deep it is,
needs no COUNT(*), and neither repeats nor skips a record when new ones
arrive while a client pages (page numbers would do all three).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import StreamingHttpResponse
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.generics import GenericAPIView
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response

from audit.api.permissions import HasAuditReadScope
from audit.documents import record_document, record_summary
from audit.export import FORMATS, export_response
from audit.models import AuditRecord
from audit.selectors import RecordFilters, audit_record_filter, record_filters_parse


def _filters(request: Request) -> RecordFilters:
    try:
        return record_filters_parse(request.query_params)
    except DjangoValidationError as error:
        raise ValidationError(error.message_dict) from error


# What a summary does not show: the large fields stay in the database.
SUMMARY_DEFERS = (
    "search_text",
    "request_messages",
    "request_params",
    "response_text",
    "tool_calls",
    "usage",
    "error_message",
)


class AuditReadView(GenericAPIView):
    permission_classes = [HasAuditReadScope]
    queryset = AuditRecord.objects.all()


class RecordCursorPagination(CursorPagination):
    """Newest first; ``?limit=`` up to 500 a page (50 by default)."""

    ordering = ("-started_at", "-pk")
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 500


class RecordListView(AuditReadView):
    """``GET /api/v1/audit/records/`` with the filters ``app``, ``model``,
    ``provider``, ``protocol``, ``outcome``, ``status``, ``error_class``,
    ``since``, ``until`` and ``q``, and ``limit`` and ``cursor``.

    Each item is a summary; ``next`` is the following page's URL (null at the end).
    """

    pagination_class = RecordCursorPagination

    def get(self, request: Request) -> Response:
        records = audit_record_filter(filters=_filters(request)).defer(*SUMMARY_DEFERS)
        page = self.paginate_queryset(records)
        return self.get_paginated_response([record_summary(r) for r in page or []])


class RecordDetailView(AuditReadView):
    """``GET /api/v1/audit/records/{request_id}/``: the record, its transcript and attempts."""

    def get(self, request: Request, request_id: str) -> Response:
        record = AuditRecord.objects.defer("search_text").filter(request_id=request_id).first()
        if record is None:
            raise NotFound(f"No audit record with request id '{request_id}'.")
        return Response(record_document(record))


class _FormatIsOurs(BaseContentNegotiation):
    """``?format=`` names the export's format here, not a DRF renderer
    (errors are rendered as JSON)."""

    def select_parser(self, request: Any, parsers: Any) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(self, request: Any, renderers: Any, format_suffix: Any = None) -> Any:
        return renderers[0], renderers[0].media_type


class ExportView(AuditReadView):
    """``GET /api/v1/audit/export/?format=jsonl|csv&<the list's filters>``, streamed.

    JSONL (the default): one record document per line, as the detail view
    shows it. CSV: one flat row per record, attempts summarised.
    Both oldest first.
    """

    content_negotiation_class = _FormatIsOurs
    # A HEAD would run the whole export for nothing.
    http_method_names = ["get", "options"]

    def get(self, request: Request) -> StreamingHttpResponse:
        fmt = request.query_params.get("format") or "jsonl"
        if fmt not in FORMATS:
            raise ValidationError({"format": [f"'{fmt}' is not one of {', '.join(FORMATS)}"]})
        return export_response(filters=_filters(request), fmt=fmt)

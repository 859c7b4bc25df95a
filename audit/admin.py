"""The auditor's view: every request's transcript and fallback chain, read-only for all.

This module holds the list of records; the record page is audit.admin_record.
"""

from __future__ import annotations

from django.contrib import admin

from audit.admin_changelist import AuditChangelistMixin
from audit.admin_filters import CHOICE_FILTERS, StartedBetweenFilter
from audit.admin_record import AuditRecordChangeView, ReadOnlyAdminMixin
from audit.admin_record import ms as _ms
from audit.admin_record import utc_second as _second
from audit.models import AuditRecord


@admin.register(AuditRecord)
class AuditRecordAdmin(AuditChangelistMixin, ReadOnlyAdminMixin, AuditRecordChangeView):
    list_display = (
        "started",
        "app_name",
        "prompt",
        "public_model",
        "provider",
        "protocol",
        "outcome",
        "status_code",
        "ttft",
        "duration",
        "tokens",
        "cost",
    )
    # Named as the API's filters (audit.admin_filters), so the export links
    # carry the changelist's query string as it is.
    list_filter = (StartedBetweenFilter, *CHOICE_FILTERS)
    # Searched by get_search_results (full text); a field here shows the box.
    search_fields = ("request_id",)
    search_help_text = (
        'Words of the prompts and answers ("a phrase", or, -word on PostgreSQL), or a request id.'
    )
    ordering = ("-started_at",)
    show_full_result_count = False  # a COUNT(*) per page is slow on a large trail

    @admin.display(description="started (UTC)", ordering="started_at")
    def started(self, record: AuditRecord) -> str:
        return _second(record.started_at)

    @admin.display(description="TTFT (ms)", ordering="ttft_ms")
    def ttft(self, record: AuditRecord) -> str:
        return _ms(record.ttft_ms)

    @admin.display(description="duration (ms)", ordering="duration_ms")
    def duration(self, record: AuditRecord) -> str:
        return _ms(record.duration_ms)

    @admin.display(description="tokens")
    def tokens(self, record: AuditRecord) -> int:
        """Charged tokens (prompt + completion, summed over the attempts)."""
        return record.prompt_tokens + record.completion_tokens

    @admin.display(description="cost (USD)", ordering="cost_usd")
    def cost(self, record: AuditRecord) -> str:
        return f"{record.cost_usd:.6f}"

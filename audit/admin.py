"""The auditor's view: every request's transcript and fallback chain, read-only for all."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from django.contrib import admin
from django.db.models import Model
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from audit.models import AuditRecord, Protocol, UpstreamAttempt


class ReadOnlyAdminMixin:
    """Nobody adds, edits or deletes audit data, superusers included; viewing needs view."""

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


class UpstreamAttemptInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = UpstreamAttempt
    ordering = ("index",)
    extra = 0
    fields = (
        "index",
        "provider",
        "upstream_model",
        "outcome",
        "status_code",
        "tokens",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "continuation",
        "started",
        "first_token_ms",
        "duration_ms",
        "error_class",
        "error_message",
    )
    readonly_fields = fields

    @admin.display(description="started (UTC)")
    def started(self, attempt: UpstreamAttempt) -> str:
        return _second(attempt.started_at)

    @admin.display(description="first token (ms)")
    def first_token_ms(self, attempt: UpstreamAttempt) -> str:
        return _ms_between(attempt.started_at, attempt.first_token_at)

    @admin.display(description="duration (ms)")
    def duration_ms(self, attempt: UpstreamAttempt) -> str:
        return _ms_between(attempt.started_at, attempt.ended_at)


def _second(when: datetime | None) -> str:
    """A time as auditors read it: UTC, to the second."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if when else "-"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _ms_between(start: datetime | None, end: datetime | None) -> str:
    return _ms((end - start).total_seconds() * 1000 if start and end else None)


def _text(content: Any) -> str:
    # OpenAI content is a string or a list of parts; show the text parts as text.
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        texts = [p.get("text") for p in content]
        if all(isinstance(t, str) for t in texts):
            return "\n".join(t for t in texts if t is not None)
    return json.dumps(content, indent=2, ensure_ascii=False)


def _turn(role: str, text: str) -> SafeString:
    return format_html(
        '<div class="audit-turn"><strong>{}</strong>'
        '<pre style="white-space: pre-wrap; margin: 0 0 1em">{}</pre></div>',
        role,
        text,
    )


def _message(message: Any) -> SafeString:
    if not isinstance(message, dict):
        return _turn("?", _text(message))
    text = _text(message.get("content") or "")
    if message.get("tool_calls"):
        text = (text + "\n" if text else "") + _text(message["tool_calls"])
    return _turn(str(message.get("role", "?")), text)


@admin.register(AuditRecord)
class AuditRecordAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "started",
        "app_name",
        "public_model",
        "provider",
        "protocol",
        "outcome",
        "ttft",
        "duration",
        "tokens",
        "cost",
    )
    list_filter = ("outcome", "protocol", "public_model", "provider", "app_name")
    date_hierarchy = "started_at"
    search_fields = ("request_id", "app_name", "staff_username", "response_text")
    ordering = ("-started_at",)
    show_full_result_count = False  # a COUNT(*) per page is slow on a large trail
    inlines = (UpstreamAttemptInline,)
    readonly_fields = ("transcript",)
    fieldsets = (
        (None, {"fields": ("request_id", "outcome", "status_code", "finish_reason")}),
        (
            "Client",
            {
                "fields": (
                    "app",
                    "app_name",
                    "token_id",
                    "staff_username",
                    "staff_user_id",
                    "client_ip",
                    "protocol",
                )
            },
        ),
        (
            "Model",
            {"fields": ("public_model", "provider", "upstream_model", "request_params")},
        ),
        ("Transcript", {"fields": ("transcript",)}),
        (
            "Timing and usage",
            {"fields": ("started_at", "ended_at", "ttft_ms", "duration_ms", "usage")},
        ),
        (
            "Charged",
            {
                "fields": (
                    "prompt_tokens",
                    "completion_tokens",
                    "cached_tokens",
                    "reasoning_tokens",
                    "cost_usd",
                )
            },
        ),
        (
            "Errors and recovery",
            {"fields": ("error_class", "error_message", "resumes", "continued")},
        ),
    )

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

    @admin.display(description="transcript")
    def transcript(self, record: AuditRecord) -> SafeString:
        """The request's messages (an embeddings request's inputs), then the
        response, then any tool calls."""
        if record.protocol == Protocol.EMBEDDINGS:
            turns = [_turn("input", _text(m)) for m in record.request_messages or []]
        else:
            turns = [_message(m) for m in record.request_messages or []]
        turns.append(_turn("response", record.response_text))
        if record.tool_calls:
            turns.append(_turn("tool calls", _text(record.tool_calls)))
        return format_html_join("", "{}", ((t,) for t in turns))

"""The auditor's record page: the conversation, the attempt chain, the deliveries.

The change view of ``AuditRecordAdmin`` (audit.admin holds its changelist).
Everything a request or an upstream sent is shown as text: every value goes
through ``format_html``, so a prompt full of HTML reads as the HTML it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib import admin
from django.db.models import Model
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from audit.models import AuditNote, AuditRecord, NoteKind, Protocol, UpstreamAttempt
from audit.transcript import conversation, response_turns

WATCH_STREAM = "audit.watch_stream"
IN_PROGRESS = "in_progress"  # the outcome of a record written ahead, its request still running

# Whether a request's stream runs now, on any instance: the streaming app adds
# its check when it is ready (audit never imports streaming).
stream_running: list[Callable[[str], bool]] = []

_ENDED = {
    "completed": "read to the end",
    "cancelled": "read to the end (stream cancelled)",
    "error": "read to the end (stream failed)",
    "client_gone": "client went away",
    "slow_client": "cut off as too slow",
    "broken": "broken (the rest could not be read)",
    "revoked": "ended: access revoked",
}


def utc_second(when: datetime | None) -> str:
    """A time as auditors read it: UTC, to the second."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if when else "-"


def ms(value: float | None) -> str:
    """Milliseconds as auditors read them: whole ones, one decimal under 10
    (``2,500``, ``123``, ``9.5``); for a column whose heading says "(ms)"."""
    return "-" if value is None else f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def ms_text(value: float | None) -> str:
    """``ms`` with its unit: ``123 ms``."""
    return "-" if value is None else f"{ms(value)} ms"


def ms_between(start: datetime | None, end: datetime | None) -> str:
    return ms_text((end - start).total_seconds() * 1000 if start and end else None)


class ReadOnlyAdminMixin:
    """Nobody adds, edits or deletes audit data, superusers included; viewing needs view."""

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


class UpstreamAttemptInline(ReadOnlyAdminMixin, admin.TabularInline):
    """The fallback chain, in order, with its timings in ms from the request's start."""

    model = UpstreamAttempt
    ordering = ("index",)
    extra = 0
    fields = (
        "index",
        "provider",
        "upstream_model",
        "outcome",
        "status_code",
        "continuation",
        "started",
        "offset_ms",
        "first_token_ms",
        "duration_ms",
        "tokens",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "error_class",
        "error_message",
    )
    readonly_fields = fields

    @admin.display(description="started (UTC)")
    def started(self, attempt: UpstreamAttempt) -> str:
        return utc_second(attempt.started_at)

    @admin.display(description="start (after request)")
    def offset_ms(self, attempt: UpstreamAttempt) -> str:
        return ms_between(attempt.record.started_at, attempt.started_at)

    @admin.display(description="first token (after its start)")
    def first_token_ms(self, attempt: UpstreamAttempt) -> str:
        return ms_between(attempt.started_at, attempt.first_token_at)

    @admin.display(description="duration")
    def duration_ms(self, attempt: UpstreamAttempt) -> str:
        return ms_between(attempt.started_at, attempt.ended_at)


def _turns(turns: Iterable[tuple[str, str, str]]) -> SafeString:
    """(role, heading, text) triples as the conversation's turns."""
    return format_html_join(
        "",
        '<div class="audit-turn audit-role-{}"><strong>{}</strong>'
        '<pre style="white-space: pre-wrap; margin: 0 0 1em">{}</pre></div>',
        turns,
    )


def _delivery_row(delivery: dict[str, Any], started: datetime | None, source: str) -> tuple:
    connected = delivery.get("connected_at")
    offset = None
    if isinstance(connected, int | float) and started is not None:
        offset = (datetime.fromtimestamp(connected, tz=UTC) - started).total_seconds() * 1000
    generated = delivery.get("generated")
    of = "?" if generated is None else str(generated)
    resumed = delivery.get("from") if delivery.get("resumed") else None
    ended = str(delivery.get("ended", ""))
    return (
        str(delivery.get("transport") or "?"),
        ms_text(offset),
        "-" if resumed is None else f"event {resumed}",
        f"{delivery.get('events', 0)} of {of}",
        str(delivery.get("last_seq", "")),
        _ENDED.get(ended, ended or "-"),
        source,
    )


def _table(head: Iterable[str], rows: Iterable[tuple]) -> SafeString:
    return format_html(
        '<table class="audit-table"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>',
        format_html_join("", "<th>{}</th>", ((h,) for h in head)),
        format_html_join(
            "",
            "<tr>{}</tr>",
            ((format_html_join("", "<td>{}</td>", ((cell,) for cell in row)),) for row in rows),
        ),
    )


class AuditRecordChangeView(admin.ModelAdmin):
    """The change view's layout and read-only renderings (AuditRecordAdmin's base)."""

    inlines = (UpstreamAttemptInline,)
    readonly_fields = (
        "transcript",
        "response",
        "started_text",
        "ended_text",
        "ttft_text",
        "duration_text",
        "delivered",
        "watches",
        "live",
    )
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
        ("Model", {"fields": ("public_model", "provider", "upstream_model", "request_params")}),
        ("Conversation", {"fields": ("transcript", "response")}),
        (
            "Timing and usage",
            {"fields": ("started_text", "ended_text", "ttft_text", "duration_text", "usage")},
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
            {"fields": ("error_class", "error_message", "resumes", "continued", "redactions")},
        ),
        ("Deliveries", {"fields": ("delivered", "watches")}),
    )

    def get_fieldsets(self, request: HttpRequest, obj: AuditRecord | None = None) -> Any:
        """The record's fields, with "Watch live" first while its stream runs
        (for staff who may watch)."""
        if obj is not None and request.user.has_perm(WATCH_STREAM) and _running(obj):
            return (("Live", {"fields": ("live",)}), *self.fieldsets)
        return self.fieldsets

    @admin.display(description="watch")
    def live(self, record: AuditRecord) -> SafeString:
        url = reverse("sluice:tail", args=[record.request_id])
        return format_html('<a class="button" href="{}">Watch live</a>', url)

    @admin.display(description="request")
    def transcript(self, record: AuditRecord) -> SafeString:
        """The request as a conversation: system, user, assistant (with its tool
        calls), tool results; an embeddings request's inputs."""
        if record.protocol == Protocol.EMBEDDINGS:
            inputs = record.request_messages or []
            return _turns(("input", "input", _plain(m)) for m in inputs)
        return _turns(conversation(record.request_messages or []))

    @admin.display(description="response")
    def response(self, record: AuditRecord) -> SafeString:
        """What the model answered: text, tool calls, and why it stopped."""
        return _turns(response_turns(record.response_text, record.tool_calls, record.finish_reason))

    # In UTC to the second, as the changelist and the attempts show them (Django's
    # own rendering was "March 1, 2026, 9:30 a.m." beside them).
    @admin.display(description="started (UTC)")
    def started_text(self, record: AuditRecord) -> str:
        return utc_second(record.started_at)

    @admin.display(description="ended (UTC)")
    def ended_text(self, record: AuditRecord) -> str:
        return utc_second(record.ended_at)

    @admin.display(description="TTFT")
    def ttft_text(self, record: AuditRecord) -> str:
        return ms_text(record.ttft_ms)

    @admin.display(description="duration")
    def duration_text(self, record: AuditRecord) -> str:
        return ms_text(record.duration_ms)

    @admin.display(description="connections")
    def delivered(self, record: AuditRecord) -> SafeString:
        """Each client connection: what it was delivered of what was generated."""
        rows = [_delivery_row(d, record.started_at, "record") for d in record.deliveries or []]
        notes = AuditNote.objects.filter(request_id=record.request_id, kind=NoteKind.DELIVERY)
        rows += [_delivery_row(n.detail, record.started_at, "note") for n in notes]
        if not rows:
            return format_html("{}", "no streamed connection")
        head = (
            "transport",
            "connected (after request)",
            "resumed from",
            "delivered (events)",
            "last event",
            "ended",
            "kept in",
        )
        return _table(head, rows)

    @admin.display(description="watched by")
    def watches(self, record: AuditRecord) -> SafeString:
        notes = AuditNote.objects.filter(request_id=record.request_id, kind=NoteKind.WATCH)
        rows = [(n.actor, utc_second(n.at), _while(n, record)) for n in notes]
        if not rows:
            return format_html("{}", "nobody watched it live")
        return _table(("staff user", "at (UTC)", "while"), rows)


def _while(note: AuditNote, record: AuditRecord) -> str:
    if isinstance(note.detail, dict) and note.detail.get("running") is False:
        return "after it ended"
    if record.started_at is None:
        return "running"
    return f"running, {ms_text((note.at - record.started_at) / timedelta(milliseconds=1))} in"


def _running(record: AuditRecord) -> bool:
    if record.outcome == IN_PROGRESS:
        return True
    return any(check(record.request_id) for check in stream_running)


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)

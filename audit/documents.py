"""An audit record as the API and the exports show it: plain JSON-ready dicts
and flat CSV rows, built without DRF serializers (the export renders a
million of them).

Times are ISO 8601 in UTC; durations in milliseconds; costs as decimal strings
(exact). The JSONL export writes ``record_document`` per line, the same shape
as ``GET /api/v1/audit/records/{request_id}/``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from audit.models import AuditRecord, UpstreamAttempt


def _iso(when: datetime | None) -> str | None:
    return when.isoformat().replace("+00:00", "Z") if when else None


def _ms_between(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds() * 1000, 1) if start and end else None


def record_summary(record: AuditRecord) -> dict[str, Any]:
    """What a list shows of a record: who, what, how it ended, how long, what it cost."""
    return {
        "request_id": record.request_id,
        "app": record.app_name,
        "app_id": record.app_id,
        "model": record.public_model,
        "provider": record.provider,
        "upstream_model": record.upstream_model,
        "protocol": record.protocol,
        "outcome": record.outcome,
        "status": record.status_code,
        "error_class": record.error_class,
        "started_at": _iso(record.started_at),
        "ended_at": _iso(record.ended_at),
        "ttft_ms": record.ttft_ms,
        "duration_ms": record.duration_ms,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "cost_usd": str(record.cost_usd),
        "resumes": record.resumes,
    }


def attempt_document(attempt: UpstreamAttempt) -> dict[str, Any]:
    return {
        "index": attempt.index,
        "provider": attempt.provider,
        "upstream_model": attempt.upstream_model,
        "outcome": attempt.outcome,
        "status": attempt.status_code,
        "error_class": attempt.error_class,
        "error_message": attempt.error_message,
        "continuation": attempt.continuation,
        "started_at": _iso(attempt.started_at),
        "first_token_ms": _ms_between(attempt.started_at, attempt.first_token_at),
        "duration_ms": _ms_between(attempt.started_at, attempt.ended_at),
        "tokens": attempt.tokens,
        "prompt_tokens": attempt.prompt_tokens,
        "completion_tokens": attempt.completion_tokens,
        "cost_usd": str(attempt.cost_usd),
    }


def _attempts(record: AuditRecord, attempts: list[UpstreamAttempt] | None) -> list[UpstreamAttempt]:
    return list(record.attempts.all()) if attempts is None else attempts


def record_document(
    record: AuditRecord, attempts: list[UpstreamAttempt] | None = None
) -> dict[str, Any]:
    """The whole record: its summary, the transcript, usage, errors and attempts
    (``attempts`` in order, or read from the database when None)."""
    return {
        **record_summary(record),
        "client_ip": record.client_ip,
        "staff_user": record.staff_username or None,
        "request_messages": record.request_messages,
        "request_params": record.request_params,
        "response_text": record.response_text,
        "tool_calls": record.tool_calls,
        "finish_reason": record.finish_reason,
        "usage": record.usage,
        "cached_tokens": record.cached_tokens,
        "reasoning_tokens": record.reasoning_tokens,
        "error_message": record.error_message,
        "continued": record.continued,
        "redactions": record.redactions,  # how many were replaced, never what
        "instance": record.instance,
        "taken_over_by": record.taken_over_by or None,
        # Each client connection: what it was delivered against what was generated.
        "deliveries": record.deliveries,
        "attempts": [attempt_document(a) for a in _attempts(record, attempts)],
    }


CSV_COLUMNS = (
    "request_id",
    "started_at",
    "ended_at",
    "app",
    "model",
    "provider",
    "upstream_model",
    "protocol",
    "outcome",
    "status",
    "error_class",
    "error_message",
    "finish_reason",
    "ttft_ms",
    "duration_ms",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "resumes",
    "continued",
    "attempts",
    "attempt_chain",
    "prompt",
    "response_text",
)
# Cells a spreadsheet would run as a formula (OWASP "CSV injection"): prompts
# and answers are whatever a client or a model wrote.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_FREE_TEXT = {"app", "error_class", "error_message", "prompt", "response_text"}


def _prompt(messages: Any) -> str:
    """The request's messages as ``role: text`` lines (non-text parts left out)."""
    if not isinstance(messages, list):
        return ""
    lines = []
    for message in messages:
        if isinstance(message, str):
            lines.append(message)
        elif isinstance(message, dict):
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(
                    p["text"]
                    for p in content
                    if isinstance(p, dict) and isinstance(p.get("text"), str)
                )
            if isinstance(content, str) and content:
                lines.append(f"{message.get('role', '?')}: {content}")
    return "\n".join(lines)


def _chain(attempts: list[UpstreamAttempt]) -> str:
    """e.g. ``anthropic/claude-x failed 529 > openai/gpt-y ok 200``."""
    return " > ".join(
        f"{a.provider}/{a.upstream_model} {a.outcome}"
        + ("" if a.status_code is None else f" {a.status_code}")
        for a in attempts
    )


def record_csv_row(record: AuditRecord, attempts: list[UpstreamAttempt] | None = None) -> list[Any]:
    """One flat row in ``CSV_COLUMNS`` order; the attempts summarised as a count and a chain."""
    summary = record_summary(record)
    attempts = _attempts(record, attempts)
    values: dict[str, Any] = {
        **summary,
        "error_message": record.error_message,
        "finish_reason": record.finish_reason,
        "continued": record.continued,
        "attempts": len(attempts),
        "attempt_chain": _chain(attempts),
        "prompt": _prompt(record.request_messages),
        "response_text": record.response_text,
    }
    row = []
    for column in CSV_COLUMNS:
        value = values[column]
        if column in _FREE_TEXT and isinstance(value, str) and value.startswith(_FORMULA_START):
            value = "'" + value
        row.append("" if value is None else value)
    return row

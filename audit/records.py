"""What the streaming core hands to the audit writer: plain data, no Django.

The core fills an ``AuditEntry`` while a request runs and submits it once the
request ends, whatever the outcome. Times are epoch seconds (``time.time()``),
so the core never builds datetimes on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class AttemptEntry:
    """One call to one upstream target, in the order the router tried them."""

    provider: str
    upstream_model: str
    started_at: float
    first_token_at: float | None = None
    ended_at: float | None = None
    status_code: int | None = None
    outcome: str = "ok"
    error_class: str = ""
    error_message: str = ""
    tokens: int = 0
    continuation: bool = False
    # What this attempt is charged for (see streaming.routing.usage).
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(slots=True)
class AuditEntry:
    """Everything the audit keeps about one gateway request.

    Submitting a second entry with the same ``request_id`` (a resumed stream
    that ends again) replaces the stored record: an entry is a full snapshot.
    """

    request_id: str
    protocol: str
    public_model: str
    started_at: float
    app_id: int | None = None
    app_name: str = ""
    token_id: int | None = None
    # The staff user who sent it from the admin playground (None for an app's own calls).
    staff_user_id: int | None = None
    staff_username: str = ""
    client_ip: str | None = None
    provider: str = ""
    upstream_model: str = ""
    request_messages: list[Any] = field(default_factory=list)
    request_params: dict[str, Any] = field(default_factory=dict)
    response_text: str = ""
    tool_calls: list[Any] = field(default_factory=list)
    finish_reason: str = ""
    usage: dict[str, Any] = field(default_factory=dict)
    # What the request is charged for, summed over its attempts (usage as the
    # upstreams reported it, or counted from the output where they did not).
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    ttft_ms: float | None = None
    duration_ms: float | None = None
    outcome: str = "completed"
    status_code: int | None = None
    error_class: str = ""
    error_message: str = ""
    resumes: int = 0
    continued: bool = False
    ended_at: float | None = None
    # The gateway instance that runs it (audit.instance.INSTANCE_ID).
    instance: str = ""
    # The instance that carried it on after ``instance`` was lost (streaming.core.takeover).
    taken_over_by: str = ""
    attempts: list[AttemptEntry] = field(default_factory=list)
    # The app's redaction patterns (accounts' AppPolicy.redaction_specs), applied
    # by audit.redaction.redact_entry before anything is stored, which then
    # clears them and counts the matches in ``redactions``.
    redact: tuple[str, ...] = ()
    redactions: int = 0
    # One dict per client connection that read the stream while it ran:
    # transport, connected_at, resumed, from (cursor), events, last_seq,
    # ended_at, ended (why), generated (the log's events at the stream's end).
    deliveries: list[dict[str, Any]] = field(default_factory=list)

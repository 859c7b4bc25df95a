"""The audit trail: one record per gateway request, with its upstream attempts."""

from __future__ import annotations

from django.db import models
from oauth2_provider.settings import oauth2_settings


class Protocol(models.TextChoices):
    SSE = "sse", "Server-Sent Events"
    WS = "ws", "WebSocket"
    NDJSON = "ndjson", "NDJSON"
    TEXT = "text", "Plain text"
    JSON = "json", "JSON (not streamed)"
    RESPONSES = "responses", "OpenAI Responses"
    MESSAGES = "messages", "Anthropic Messages"
    EMBEDDINGS = "embeddings", "Embeddings"


class Outcome(models.TextChoices):
    COMPLETED = "completed"
    CLIENT_DISCONNECTED = "client_disconnected"
    CANCELLED = "cancelled"
    ABANDONED = "abandoned"
    UPSTREAM_ERROR = "upstream_error"
    REJECTED = "rejected"


class AttemptOutcome(models.TextChoices):
    OK = "ok"
    FAILED = "failed"
    CANCELLED = "cancelled"


class AuditRecord(models.Model):
    """What one request asked, what it got back, from where, and how it ended.

    Written only by ``audit.services`` (through the background writer), never
    edited afterwards: the admin shows it read-only to everybody.
    """

    request_id = models.CharField(max_length=128, unique=True)
    app = models.ForeignKey(
        oauth2_settings.APPLICATION_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="audit_records",
        db_index=False,  # covered by the (app, started_at) index
    )
    # Kept after the application is deleted, when ``app`` goes null.
    app_name = models.CharField(max_length=255, blank=True)
    # The AccessToken pk, never the token itself.
    token_id = models.BigIntegerField(null=True, blank=True)
    # The staff user behind a playground request: the user's pk and username,
    # kept as plain values (like token_id) so the record outlives the user.
    staff_user_id = models.BigIntegerField("staff user id", null=True, blank=True)
    staff_username = models.CharField("staff user", max_length=150, blank=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    protocol = models.CharField(max_length=16, choices=Protocol.choices)
    public_model = models.CharField(max_length=200)
    provider = models.CharField(max_length=100, blank=True)
    upstream_model = models.CharField(max_length=200, blank=True)
    request_messages = models.JSONField(default=list, blank=True)
    request_params = models.JSONField(default=dict, blank=True)
    response_text = models.TextField(blank=True)
    tool_calls = models.JSONField(default=list, blank=True)
    finish_reason = models.CharField(max_length=64, blank=True)
    usage = models.JSONField(default=dict, blank=True)
    # What the request is charged for, over all its attempts (streaming.routing.usage).
    prompt_tokens = models.IntegerField(default=0)
    completion_tokens = models.IntegerField(default=0)
    cached_tokens = models.IntegerField(default=0)
    reasoning_tokens = models.IntegerField(default=0)
    cost_usd = models.DecimalField("cost (USD)", max_digits=18, decimal_places=10, default=0)
    ttft_ms = models.FloatField("TTFT (ms)", null=True, blank=True)
    duration_ms = models.FloatField("duration (ms)", null=True, blank=True)
    outcome = models.CharField(max_length=32, choices=Outcome.choices)
    status_code = models.IntegerField(null=True, blank=True)
    error_class = models.CharField(max_length=200, blank=True)
    error_message = models.TextField(blank=True)
    resumes = models.IntegerField(default=0)
    # The client saw a mid-stream continuation on another target.
    continued = models.BooleanField(default=False)
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["started_at"], name="audit_started_idx"),
            models.Index(fields=["outcome", "started_at"], name="audit_outcome_idx"),
            models.Index(fields=["public_model", "started_at"], name="audit_model_idx"),
            models.Index(fields=["app", "started_at"], name="audit_app_idx"),
        ]

    def __str__(self) -> str:
        return self.request_id


class UpstreamAttempt(models.Model):
    """One upstream call made for a record; ``index`` orders the fallback chain."""

    record = models.ForeignKey(
        AuditRecord,
        on_delete=models.CASCADE,
        related_name="attempts",
        db_index=False,  # covered by the (record, index) constraint
    )
    index = models.PositiveSmallIntegerField()
    provider = models.CharField(max_length=100)
    upstream_model = models.CharField(max_length=200)
    started_at = models.DateTimeField()
    first_token_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    status_code = models.IntegerField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=AttemptOutcome.choices)
    error_class = models.CharField(max_length=200, blank=True)
    error_message = models.TextField(blank=True)
    # Completion tokens (or chunks) this attempt contributed.
    tokens = models.IntegerField(default=0)
    # This attempt continued a stream mid-way after another target failed.
    continuation = models.BooleanField(default=False)
    # What this attempt is charged for.
    prompt_tokens = models.IntegerField(default=0)
    completion_tokens = models.IntegerField(default=0)
    cached_tokens = models.IntegerField(default=0)
    reasoning_tokens = models.IntegerField(default=0)
    cost_usd = models.DecimalField("cost (USD)", max_digits=18, decimal_places=10, default=0)

    class Meta:
        ordering = ["record", "index"]
        constraints = [
            models.UniqueConstraint(fields=["record", "index"], name="audit_attempt_order_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.index}: {self.provider}/{self.upstream_model}"

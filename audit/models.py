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
    # Written ahead when a request is accepted; replaced by its final outcome.
    IN_PROGRESS = "in_progress"
    # Its gateway instance died before it ended (completed by another, or the next start).
    INTERRUPTED = "interrupted"


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
    # How many matches of the app's redaction patterns were replaced before
    # storing (audit.redaction): a count, never what they were.
    redactions = models.IntegerField(default=0)
    # The client saw a mid-stream continuation on another target.
    continued = models.BooleanField(default=False)
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    # What each client connection that read the stream while it ran was
    # delivered (see audit.records.AuditEntry.deliveries); later ones are AuditNotes.
    deliveries = models.JSONField(default=list, blank=True)
    # What full-text search reads (audit.search): derived from the stored
    # prompts and answer at write time, so it is not part of the hash chain.
    # On PostgreSQL a GIN index covers it (migration 0007_search).
    search_text = models.TextField(blank=True, default="", editable=False)
    # The gateway instance that ran it (audit.instance.INSTANCE_ID).
    instance = models.CharField(max_length=200, blank=True)
    # The instance that carried the stream on after ``instance`` was lost (issue 24's takeover).
    taken_over_by = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        permissions = [("watch_stream", "Can watch a stream in flight")]
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


# --- tamper evidence (audit.chain, audit.checkpoints) --------------------------


class LinkKind(models.TextChoices):
    RECORD = "record"  # a final record as stored (or as replaced)
    ERASURE = "erasure"  # the record was deleted by retention or on request


class ChainLink(models.Model):
    """One link of the append-only hash chain over the audit trail.

    ``digest`` = sha256 of the previous link's digest, this link's seq, kind,
    request_id and ``content_hash`` (audit.chain.link_digest). Never updated;
    deleted only as an expired prefix below a signed anchor.
    """

    seq = models.BigIntegerField(unique=True)
    kind = models.CharField(max_length=16, choices=LinkKind.choices)
    request_id = models.CharField(max_length=128)
    content_hash = models.CharField(max_length=64)
    digest = models.CharField(max_length=64)
    created_at = models.DateTimeField()
    # Erasures and replacements of a sealed record are signed (audit.signing):
    # without the key, nobody can erase or replace a record and pass verify.
    signature = models.CharField(max_length=128, blank=True)

    class Meta:
        indexes = [models.Index(fields=["request_id", "seq"], name="audit_link_request_idx")]

    def __str__(self) -> str:
        return f"{self.seq} {self.kind} {self.request_id}"


class ChainHead(models.Model):
    """The chain's last seq and digest: one row, locked by every append.

    ``sealed_from_pk``: records with a smaller pk were stored before the chain
    existed and are not expected in it (``sluice_audit seal`` seals them).
    """

    seq = models.BigIntegerField(default=0)
    digest = models.CharField(max_length=64)
    sealed_from_pk = models.BigIntegerField(default=0)


class CheckpointKind(models.TextChoices):
    CHECKPOINT = "checkpoint"  # the chain passes through this digest
    ANCHOR = "anchor"  # links up to seq were pruned: the chain starts after it


class ChainCheckpoint(models.Model):
    """A signed statement of the chain's digest at ``seq`` (CloudTrail's digest file)."""

    seq = models.BigIntegerField()
    digest = models.CharField(max_length=64)
    kind = models.CharField(max_length=16, choices=CheckpointKind.choices)
    created_at = models.DateTimeField()
    key_id = models.CharField(max_length=32)
    signature = models.CharField(max_length=128)

    class Meta:
        indexes = [models.Index(fields=["created_at"], name="audit_checkpoint_created_idx")]

    def __str__(self) -> str:
        return f"{self.kind} at {self.seq}"


class NoteKind(models.TextChoices):
    DELIVERY = "delivery"
    WATCH = "watch"


class AuditNote(models.Model):
    """Something that happened to a request after its record could take it in:
    a connection that read the stream after it ended or on another instance
    (``delivery``), or a staff member who watched it live (``watch``).

    Keyed by request_id, not a foreign key: a note can be written before the
    record exists (a stream watched while it runs).
    """

    request_id = models.CharField(max_length=128, db_index=True)
    kind = models.CharField(max_length=16, choices=NoteKind.choices)
    at = models.DateTimeField()
    # The app (its name) or the staff user (username) behind it.
    actor = models.CharField(max_length=150, blank=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["request_id", "at", "pk"]

    def __str__(self) -> str:
        return f"{self.request_id}: {self.kind} by {self.actor}"


class GatewayInstance(models.Model):
    """A running (or dead) gateway instance, with a heartbeat.

    Each served gateway updates its row every few seconds; another instance
    (or the next start) that finds it dead completes its ``in_progress``
    records as ``interrupted``.
    """

    name = models.CharField(max_length=200, unique=True)
    host = models.CharField(max_length=255)
    pid = models.IntegerField()
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField()

    def __str__(self) -> str:
        return self.name

"""Providers, model routes and their targets: what ops staff configure."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models

from streaming import crypto
from streaming.providers.hosts import metadata_host


class Provider(models.Model):
    """An upstream that speaks one wire format, with its credentials."""

    class Kind(models.TextChoices):
        OPENAI = "openai", "OpenAI-compatible (OpenAI, vLLM, Ollama, Groq, ...)"
        ANTHROPIC = "anthropic", "Anthropic Messages"
        DEMO = "demo", "Built-in demo"

    name = models.SlugField(max_length=100, unique=True)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    base_url = models.URLField(blank=True, help_text="e.g. https://api.openai.com/v1")
    api_key_encrypted = models.TextField(blank=True, editable=False)
    api_key_env = models.CharField(
        max_length=200,
        blank=True,
        help_text="Name of an environment variable holding the key (used when no key is stored).",
    )
    internal_endpoint = models.BooleanField(
        default=False,
        help_text="Allow a link-local or cloud-metadata address (169.254.0.0/16, fe80::/10, "
        "metadata.google.internal, ...): only for an upstream you run there on purpose.",
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def names(cls) -> list[str]:
        """Every provider's name (what an audit record's ``provider`` holds)."""
        return list(cls.objects.order_by("name").values_list("name", flat=True))

    def clean(self) -> None:
        """The rules every way in (admin form, config import) checks alike."""
        needs_url = self.kind in (self.Kind.OPENAI, self.Kind.ANTHROPIC)
        if needs_url and not self.base_url:
            raise ValidationError({"base_url": "This kind of provider needs a base URL."})
        host = urlsplit(self.base_url).hostname if self.base_url else None
        if host and metadata_host(host) and not self.internal_endpoint:
            raise ValidationError(
                {
                    "base_url": f"{host} is a link-local or cloud-metadata address; mark the "
                    "provider as an internal endpoint if it really runs there."
                }
            )

    def set_api_key(self, plaintext: str) -> None:
        self.api_key_encrypted = crypto.encrypt(plaintext)

    @property
    def has_stored_key(self) -> bool:
        return bool(self.api_key_encrypted)

    def resolve_api_key(self) -> str:
        if self.api_key_encrypted:
            return crypto.decrypt(self.api_key_encrypted)
        return os.environ.get(self.api_key_env, "") if self.api_key_env else ""


class RetryOn(models.TextChoices):
    """Kinds of upstream failure a route may retry or fall back on."""

    CONNECT_ERROR = "connect_error", "Connection errors"
    TIMEOUT = "timeout", "Timeouts (connect, first token, stall)"
    RATE_LIMITED = "rate_limited", "Rate limited (HTTP 429)"
    SERVER_ERROR = "server_error", "Server errors (5xx, error events, broken or malformed streams)"
    CONTENT_FILTER = "content_filter", "Content-filter refusals (before any output)"
    AUTH_ERROR = "auth_error", "Upstream refused the gateway's key (HTTP 401/403)"
    CONTEXT_LENGTH = (
        "context_length",
        "Context length exceeded (HTTP 400): on to the next target (a bigger context)",
    )


def validate_retry_on(value: object) -> None:
    if not isinstance(value, list) or not set(value) <= set(RetryOn.values):
        raise ValidationError(f"Give a list of: {', '.join(RetryOn.values)}.")


def default_retry_on() -> list[str]:
    return [
        RetryOn.CONNECT_ERROR.value,
        RetryOn.TIMEOUT.value,
        RetryOn.RATE_LIMITED.value,
        RetryOn.SERVER_ERROR.value,
    ]


def default_retry_same_target_on() -> list[str]:
    """Worth another try on the same target: a 429, a 5xx or a reset may pass. A
    timeout or a silent upstream is not: waiting on it again costs the full
    timeout each time, so the next target gets the request at once."""
    return [
        RetryOn.CONNECT_ERROR.value,
        RetryOn.RATE_LIMITED.value,
        RetryOn.SERVER_ERROR.value,
    ]


class ModelRoute(models.Model):
    """A public model name and the policy for reaching its targets."""

    model = models.CharField(max_length=200, unique=True, help_text="The name apps send.")
    description = models.CharField(max_length=300, blank=True)
    enabled = models.BooleanField(default=True)
    attempts_per_target = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1)],
        help_text="Tries on one target for the failures retried on the same target.",
    )
    backoff_seconds = models.FloatField(default=0.2, validators=[MinValueValidator(0)])
    first_token_timeout = models.FloatField(
        default=30.0, validators=[MinValueValidator(0.01)], help_text="Seconds."
    )
    stall_timeout = models.FloatField(
        default=60.0, validators=[MinValueValidator(0.01)], help_text="Seconds of silence."
    )
    allow_midstream_fallback = models.BooleanField(
        default=False, help_text="Continue on the next target if a text stream dies halfway."
    )
    retry_on = models.JSONField(
        default=default_retry_on,
        blank=True,
        validators=[validate_retry_on],
        help_text="Failures that are retried or fallen back on; others go to the client.",
    )
    retry_same_target_on = models.JSONField(
        default=default_retry_same_target_on,
        blank=True,
        validators=[validate_retry_on],
        help_text=(
            "Of those, the failures tried again on the same target (up to attempts per "
            "target); the others go to the next target at once."
        ),
    )
    load_balance = models.BooleanField(
        default=False,
        help_text="Spread requests over targets of equal priority in proportion to their weight.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model"]

    def __str__(self) -> str:
        return self.model

    @classmethod
    def names(cls) -> list[str]:
        """Every route's public name (what an app's policy may allow)."""
        return list(cls.objects.order_by("model").values_list("model", flat=True))


class RouteTarget(models.Model):
    """One provider + upstream model a route may use, in priority order."""

    route = models.ForeignKey(ModelRoute, on_delete=models.CASCADE, related_name="targets")
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="targets")
    upstream_model = models.CharField(max_length=200)
    priority = models.PositiveSmallIntegerField(default=0, help_text="Lower goes first.")
    weight = models.PositiveSmallIntegerField(
        default=1, help_text="Share among targets of equal priority (route load balancing)."
    )
    params = models.JSONField(default=dict, blank=True, help_text="Parameter overrides.")

    class Meta:
        ordering = ["route", "priority", "id"]

    def __str__(self) -> str:
        return f"{self.provider.name}:{self.upstream_model}"


class ModelPrice(models.Model):
    """What one provider charges for one upstream model, in USD per million tokens.

    A target without a price costs nothing in the audit and the spend views.
    """

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="prices")
    model = models.CharField(
        max_length=200, help_text="The upstream model name, as targets give it."
    )
    input_per_mtok = models.FloatField(
        "input (USD per 1M tokens)", validators=[MinValueValidator(0)]
    )
    cached_input_per_mtok = models.FloatField(
        "cached input (USD per 1M tokens)",
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Prompt tokens served from the provider's cache; empty: the input price.",
    )
    output_per_mtok = models.FloatField(
        "output (USD per 1M tokens)", validators=[MinValueValidator(0)]
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["provider__name", "model"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "model"], name="model_price_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.provider.name}:{self.model}"

"""Per-app policy on top of django-oauth-toolkit's Application."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone
from oauth2_provider.scopes import get_scopes_backend
from oauth2_provider.settings import oauth2_settings

DEFAULT_SCOPES = ("chat",)


def default_scopes() -> list[str]:
    return list(DEFAULT_SCOPES)


def validate_name_list(value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValidationError('Enter a JSON list of names, e.g. ["gpt-4o-mini"].')


def validate_scope_list(value: Any) -> None:
    validate_name_list(value)
    unknown = set(value) - set(get_scopes_backend().get_all_scopes())
    if unknown:
        raise ValidationError(f"Unknown scope(s): {', '.join(sorted(unknown))}.")


def _limit(field: type[models.Field], help_text: str, **kwargs: Any) -> Any:
    """A limit: empty means none, a value must be positive."""
    return field(null=True, blank=True, help_text=help_text, **kwargs)


AT_LEAST_ONE = [MinValueValidator(1)]


class MaxTokensMode(models.TextChoices):
    CLAMP = "clamp", "clamp: lower the request's max tokens to the ceiling"
    REFUSE = "refuse", "refuse: answer 400 when a request asks for more"


# The policy's limits, as the admin, config as code and the REST API edit them.
LIMIT_FIELDS = (
    "requests_per_minute",
    "tokens_per_minute",
    "concurrent_streams",
    "max_tokens",
    "max_tokens_mode",
    "monthly_tokens",
    "monthly_cost_usd",
)


# The policy's audit settings (retention and redaction), edited like the limits.
AUDIT_FIELDS = ("audit_retention_days", "redact_emails", "redact_cards", "redact_patterns")
MAX_REDACT_PATTERNS = 20
MAX_REDACT_PATTERN_LENGTH = 300
# A group that repeats and is itself repeated, e.g. (a+)+ or (\w*)*: the shape
# that makes a backtracking engine take exponential time on a near miss.
_NESTED_QUANTIFIER = re.compile(r"\((?:[^()\\]|\\.)*[+*}]\)[+*{]")


def validate_redact_patterns(value: Any) -> None:
    """A list of regular expressions, each compilable, bounded and not catastrophic."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationError('Enter a list of regular expressions, e.g. ["ACME-\\d{6}"].')
    if len(value) > MAX_REDACT_PATTERNS:
        raise ValidationError(f"At most {MAX_REDACT_PATTERNS} patterns.")
    for number, pattern in enumerate(value, 1):
        where = f"Pattern {number} ({pattern[:40]!r})"
        if not pattern.strip() or len(pattern) > MAX_REDACT_PATTERN_LENGTH:
            raise ValidationError(f"{where}: 1 to {MAX_REDACT_PATTERN_LENGTH} characters.")
        try:
            compiled = re.compile(pattern)
        except re.error as error:
            raise ValidationError(f"{where} is not a valid regular expression: {error}.") from None
        if compiled.search("") is not None:
            raise ValidationError(f"{where} matches empty text.")
        if _NESTED_QUANTIFIER.search(pattern):
            raise ValidationError(
                f"{where} repeats a repeated group, which can take exponential time."
            )


class AppPolicy(models.Model):
    """What one OAuth2 application may do: its scopes, the models it may call
    and its limits (each empty: no limit; see accounts.limits).

    An application without a policy row behaves as ``AppPolicy.default_for(app)``:
    enabled, ``chat`` scope only, every model, no limits of its own.
    """

    application = models.OneToOneField(
        oauth2_settings.APPLICATION_MODEL, on_delete=models.CASCADE, related_name="policy"
    )
    allowed_models = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_name_list],
        help_text="Public model names this app may call. An empty list allows every model.",
    )
    scopes = models.JSONField(
        default=default_scopes,
        validators=[validate_scope_list],
        help_text="Scopes the token endpoint may grant this app.",
    )
    enabled = models.BooleanField(
        default=True, help_text="A disabled app gets no tokens and its tokens stop working."
    )
    requests_per_minute = _limit(
        models.PositiveIntegerField,
        "Requests admitted per minute (a fixed window). Empty: no limit.",
        validators=AT_LEAST_ONE,
    )
    tokens_per_minute = _limit(
        models.PositiveBigIntegerField,
        "Prompt plus completion tokens per minute (reserved at admission as an "
        "estimate, settled with the real usage). Empty: no limit.",
        validators=AT_LEAST_ONE,
    )
    concurrent_streams = _limit(
        models.PositiveIntegerField,
        "Requests running at once. Empty: the gateway's default share "
        "(SLUICE_APP_MAX_CONCURRENT_STREAMS).",
        validators=AT_LEAST_ONE,
    )
    max_tokens = _limit(
        models.PositiveIntegerField,
        "The most output tokens one request may ask for. Empty: no ceiling.",
        validators=AT_LEAST_ONE,
    )
    max_tokens_mode = models.CharField(
        max_length=8,
        choices=MaxTokensMode.choices,
        default=MaxTokensMode.CLAMP,
        help_text="What a request over the max tokens ceiling gets.",
    )
    monthly_tokens = _limit(
        models.PositiveBigIntegerField,
        "Tokens per calendar month (UTC). Empty: no budget.",
        validators=AT_LEAST_ONE,
    )
    monthly_cost_usd = _limit(
        models.DecimalField,
        "USD per calendar month (UTC), at the route targets' prices. Empty: no budget.",
        max_digits=12,
        decimal_places=2,
        validators=[MinValueValidator(Decimal("0.01"))],
    )
    audit_retention_days = _limit(
        models.PositiveIntegerField,
        "Days the audit keeps this app's records. Empty: the gateway's default "
        "(SLUICE_AUDIT_RETENTION_DAYS).",
        validators=AT_LEAST_ONE,
    )
    redact_emails = models.BooleanField(
        default=False, help_text="Replace email addresses before the audit stores anything."
    )
    redact_cards = models.BooleanField(
        default=False,
        help_text="Replace payment card numbers (those that pass the Luhn check) before "
        "the audit stores anything.",
    )
    redact_patterns = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_redact_patterns],
        help_text="Regular expressions (Python syntax) whose matches the audit replaces.",
    )
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "app policy"
        verbose_name_plural = "app policies"
        # Model-less permissions hang off this model: Django keys a permission by content type.
        permissions = [("use_playground", "Can stream in the admin playground")]

    def __str__(self) -> str:
        return f"Policy of {self.application}"

    @classmethod
    def default_for(cls, application: Any) -> AppPolicy:
        """The unsaved policy an application without a row gets."""
        return cls(application=application)

    def redaction_specs(self) -> tuple[str, ...]:
        """What audit.redaction applies: built-in names, then ``re:<pattern>``."""
        builtin = (["email"] if self.redact_emails else []) + (
            ["card"] if self.redact_cards else []
        )
        return (*builtin, *(f"re:{p}" for p in self.redact_patterns or ()))

    @classmethod
    def of(cls, application: Any) -> AppPolicy:
        """The application's policy, or the default one; no query if already loaded."""
        policy = getattr(application, "policy", None)
        return policy if policy is not None else cls.default_for(application)


# An expiry no token reaches: DOT's AccessToken needs one ("never" is this date).
NEVER_EXPIRES = datetime(9999, 1, 1, tzinfo=UTC)


class AppToken(models.Model):
    """What ops know of a long-lived access token: a name, a visible prefix, use.

    The token itself is a DOT AccessToken of the app (so every transport takes
    it as it takes a client-credentials token), stored hashed. Revoking
    deletes the AccessToken, as DOT does; this row stays, with ``revoked``
    set, so the listing still tells what was issued and when it died.
    ``scopes`` and ``expires`` are as issued (``expires`` None: never).
    """

    application = models.ForeignKey(
        oauth2_settings.APPLICATION_MODEL, on_delete=models.CASCADE, related_name="app_tokens"
    )
    access_token = models.OneToOneField(
        oauth2_settings.ACCESS_TOKEN_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="app_token",
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=32, db_index=True, help_text="Enough to recognise it.")
    scopes = models.JSONField(default=list)
    expires = models.DateTimeField(null=True, blank=True, help_text="Empty: never.")
    created = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=200, blank=True)
    last_used = models.DateTimeField(
        null=True, blank=True, help_text="To within a minute or two (not written per request)."
    )
    revoked = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "long-lived token"
        ordering = ("-created", "-pk")

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def status(self) -> str:
        if self.revoked is not None:
            return "revoked"
        if self.access_token_id is None or (
            self.expires is not None and self.expires <= timezone.now()
        ):
            return "expired"
        return "active"

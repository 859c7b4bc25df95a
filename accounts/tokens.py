"""Long-lived access tokens of an app: issue, list, revoke, and note their use.

A long-lived token is a DOT AccessToken of the app, so every transport and
DOT's own endpoints (``/o/revoke_token/``, ``/o/introspect/``) take it as they
take a client-credentials token. It is stored as DOT stores every token here
(``COMPLIANT_BCP_RFC9700_TOKEN_STORAGE``: the ``token`` column blank, found by
its sha256 ``token_checksum``); its ``AppToken`` row holds what ops see.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from oauth2_provider.models import get_access_token_model, revoke_access_token, set_token_value

from accounts.models import DEFAULT_SCOPES, NEVER_EXPIRES, AppPolicy, AppToken, validate_scope_list

TOKEN_PREFIX = "sk-sluice-"
VISIBLE_CHARS = 8  # of the random part, kept as the prefix ops recognise a token by
LAST_USED_EVERY = timedelta(seconds=60)
_EXPIRY = re.compile(r"^(\d{1,6})([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


class TokenNotFound(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token just issued: the only time its value exists outside the client."""

    record: AppToken
    token: str


def parse_expiry(value: str | None, *, now: datetime | None = None) -> datetime | None:
    """``90d``, ``12h``, ``30m`` from now, or ``never`` (None). Raises ValidationError."""
    text = (value or "").strip().lower()
    if text == "never":
        return None
    match = _EXPIRY.match(text)
    if match is None or int(match.group(1)) == 0:
        raise ValidationError(f"Expiry {value!r}: use e.g. 90d, 12h, 30m or never.")
    delta = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    return (now or timezone.now()) + delta


def default_token_scopes(policy: AppPolicy) -> list[str]:
    """What a token gets when no scopes are asked for: as the token endpoint grants."""
    return [s for s in DEFAULT_SCOPES if s in policy.scopes] or list(policy.scopes)


def validate_token_scopes(scopes: list[str], policy: AppPolicy) -> None:
    validate_scope_list(scopes)
    if not scopes:
        raise ValidationError("A token needs at least one scope.")
    beyond = set(scopes) - set(policy.scopes)
    if beyond:
        raise ValidationError(
            f"Scope(s) {', '.join(sorted(beyond))} not in the app's policy"
            f" ({', '.join(policy.scopes) or 'none'})."
        )


def app_token_create(
    *,
    application: Any,
    name: str,
    expires: str | None = "90d",
    scopes: list[str] | None = None,
    created_by: str = "",
) -> IssuedToken:
    """Issue a long-lived token for ``application``; the value is returned once, never stored."""
    name = name.strip()
    if not name or len(name) > 100:
        raise ValidationError("A token needs a name of 1 to 100 characters.")
    policy = AppPolicy.of(application)
    scopes = list(scopes) if scopes else default_token_scopes(policy)
    validate_token_scopes(scopes, policy)
    expiry = parse_expiry(expires)
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    access = get_access_token_model()(
        application=application, scope=" ".join(scopes), expires=expiry or NEVER_EXPIRES
    )
    set_token_value(access, raw)
    with transaction.atomic():
        access.save()
        record = AppToken.objects.create(
            application=application,
            access_token=access,
            name=name,
            prefix=raw[: len(TOKEN_PREFIX) + VISIBLE_CHARS],
            scopes=scopes,
            expires=expiry,
            created_by=created_by,
        )
    return IssuedToken(record=record, token=raw)


def app_token_list(*, application: Any) -> list[AppToken]:
    return list(AppToken.objects.filter(application=application))


def app_token_get(*, application: Any, key: str) -> AppToken:
    """One token of the app, by id or by (a unique start of) its prefix."""
    tokens = AppToken.objects.filter(application=application)
    found = list(
        tokens.filter(pk=int(key)) if key.isdigit() else tokens.filter(prefix__startswith=key)[:2]
    )
    if len(found) != 1 or (not key.isdigit() and len(key) < len(TOKEN_PREFIX) + 4):
        raise TokenNotFound(f"No single token {key!r} of {application.name!r}.")
    return found[0]


def app_token_revoke(*, record: AppToken) -> AppToken:
    """Revoke one long-lived token (idempotent): its next request and open streams end.

    DOT's shared revoke path deletes the AccessToken: accounts.signals marks
    this row revoked and publishes the revocation once it commits.
    """
    with transaction.atomic():
        access = (
            get_access_token_model().objects.filter(pk=record.access_token_id).first()
            if record.access_token_id is not None
            else None
        )
        if access is not None:
            revoke_access_token(access)
        elif record.revoked is None:
            AppToken.objects.filter(pk=record.pk).update(revoked=timezone.now())
    record.refresh_from_db()
    return record


def mark_revoked(*, access_token_id: int) -> None:
    """The AccessToken is going: its AppToken (if any, and unexpired) is revoked now."""
    now = timezone.now()
    AppToken.objects.filter(access_token_id=access_token_id, revoked__isnull=True).exclude(
        expires__lte=now
    ).update(revoked=now)


def app_token_touch(record: AppToken) -> None:
    """Note that the token was used: at most one write per token per LAST_USED_EVERY.

    Called when a token's identity is looked up (a cache miss), never per request.
    """
    now = timezone.now()
    cutoff = now - LAST_USED_EVERY
    if record.last_used is not None and record.last_used > cutoff:
        return
    stale = Q(last_used__isnull=True) | Q(last_used__lte=cutoff)
    AppToken.objects.filter(stale, pk=record.pk).update(last_used=now)

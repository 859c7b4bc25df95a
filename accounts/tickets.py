"""Short-lived, single-purpose tickets for URLs a browser opens.

EventSource and browser WebSockets cannot send an Authorization header, and a
bearer token in a URL ends up in logs and history. A ticket is what goes in
the URL instead: signed (not encrypted) with the SECRET_KEY, bound to one
purpose ("chat", "stream:<id>"), valid for ``SLUICE_TICKET_SECONDS`` and
never past its token's expiry.

A ticket may be redeemed more than once within its lifetime, on purpose:
EventSource reconnects to the same URL on its own, and resume depends on it.
Redeeming re-checks the underlying access token through the cached resolver,
so revoking the token kills its tickets (everywhere at once: see
accounts.revocation).

A ticket only authorises opening a connection: the identity it yields keeps
its token's expiry, which is what governs how long that connection lives.

The admin playground's tickets carry no token: they act as the playground's
own app (never any other) and name the staff user, who the audit records.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from django.conf import settings
from django.core import signing

from accounts.identity import AppIdentity, AuthError, resolve_app, resolve_token_id
from accounts.services import playground_app_ensure

SALT = "sluice.ticket"

_clock = time.time


def issue_ticket(identity: AppIdentity, *, purpose: str, ttl: int | None = None) -> str:
    """A ticket standing in for ``identity`` (its token, or its playground user), for one purpose.

    It expires after ``ttl`` seconds (default ``SLUICE_TICKET_SECONDS``) or
    with the identity, whichever comes first.
    """
    expires = min(_expiry(ttl), identity.expires_at)
    staff = _staff_claim(identity.staff_user_id, identity.staff_username)
    return _sign(
        app_id=identity.app_id,
        token_id=identity.token_id,
        staff=staff,
        purpose=purpose,
        exp=expires,
    )


def issue_playground_ticket(
    *, user_id: int, username: str, purpose: str, ttl: int | None = None
) -> str:
    """A ticket for the admin playground's own app, naming the staff user behind it.

    Only the playground view may call this, once it has checked the user's
    ``accounts.use_playground`` permission. There is no way to name another
    app: the app is the playground's, created on first use.
    """
    app_id = playground_app_ensure()
    staff = _staff_claim(user_id, username)
    return _sign(app_id=app_id, token_id=None, staff=staff, purpose=purpose, exp=_expiry(ttl))


async def redeem_ticket(ticket: str, *, purpose: str) -> AppIdentity:
    """The identity a ticket stands for. Raises AuthError(401) if it is bad, expired
    or for another purpose, or AuthError from re-checking its token or app."""
    claims = _unsign(ticket)
    if claims["exp"] <= _clock():
        raise AuthError(401, "ticket_expired", "The ticket has expired.")
    if claims["p"] != purpose:
        raise AuthError(401, "invalid_ticket", "The ticket was issued for something else.")
    staff = claims.get("u")
    if claims["t"] is not None:
        identity = await resolve_token_id(claims["t"])
    elif isinstance(staff, list) and len(staff) == 2:
        identity = await resolve_app(claims["a"])
        identity = dataclasses.replace(identity, staff_user_id=staff[0], staff_username=staff[1])
    else:  # neither a token nor a playground user behind it
        raise AuthError(401, "invalid_ticket", "The ticket is not valid.")
    if identity.app_id != claims["a"]:
        raise AuthError(401, "invalid_ticket", "The ticket is not valid.")
    return identity


def _expiry(ttl: int | None) -> float:
    seconds = settings.SLUICE_TICKET_SECONDS if ttl is None else ttl
    return _clock() + seconds


def _staff_claim(user_id: int | None, username: str) -> list[Any] | None:
    return None if user_id is None else [user_id, username]


def _sign(
    *, app_id: int, token_id: int | None, staff: list[Any] | None, purpose: str, exp: float
) -> str:
    claims = {"a": app_id, "t": token_id, "u": staff, "p": purpose, "exp": round(exp, 3)}
    return _signer().sign_object(claims)


def _signer() -> signing.Signer:
    # "." rather than ":" keeps a ticket a valid HTTP token, so it can ride in a
    # Sec-WebSocket-Protocol header as well as in a URL.
    return signing.Signer(salt=SALT, sep=".")


def _unsign(ticket: str) -> dict[str, Any]:
    try:
        claims = _signer().unsign_object(ticket)
    except signing.BadSignature:
        raise AuthError(401, "invalid_ticket", "The ticket is not valid.") from None
    if not isinstance(claims, dict) or not {"a", "t", "p", "exp"} <= claims.keys():
        raise AuthError(401, "invalid_ticket", "The ticket is not valid.")
    return claims

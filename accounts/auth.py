"""Authenticating a request: a bearer token in its header, else a ticket in its URL."""

from __future__ import annotations

from accounts.identity import AppIdentity, AuthError, require_scope, resolve_bearer
from accounts.tickets import redeem_ticket


async def authenticate(
    authorization: str | None,
    *,
    api_key: str | None = None,
    ticket: str | None = None,
    purpose: str | None = None,
    scope: str = "chat",
) -> AppIdentity:
    """Authenticate a request from its Authorization header, else from a ticket.

    ``api_key`` is an ``x-api-key`` header (Anthropic's SDKs send the key
    there): the same token as a bearer. The header wins when both are present.
    A ticket must have been issued for ``purpose``; when no purpose is given
    it must be for ``scope`` itself (e.g. "chat"), so a ticket for one stream
    never opens anything else.
    Raises AuthError.
    """
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(401, "invalid_token", "Expected 'Authorization: Bearer <token>'.")
        identity = await resolve_bearer(token.strip())
    elif api_key and api_key.strip():
        identity = await resolve_bearer(api_key.strip())
    elif ticket:
        identity = await redeem_ticket(ticket, purpose=purpose or scope)
    else:
        raise AuthError(
            401, "missing_token", "Send 'Authorization: Bearer <token>' (or 'x-api-key: <token>')."
        )
    require_scope(identity, scope)
    return identity

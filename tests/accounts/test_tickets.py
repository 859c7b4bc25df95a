from __future__ import annotations

import re

import pytest
from oauth2_provider.models import AccessToken

from accounts import tickets
from accounts.identity import AuthError, authenticate, resolve_bearer
from accounts.models import AppPolicy
from accounts.tickets import issue_staff_ticket, issue_ticket, redeem_ticket
from tests.accounts.conftest import App

pytestmark = pytest.mark.django_db(transaction=True)


async def test_ticket_roundtrip(alice_token: str) -> None:
    alice = await resolve_bearer(alice_token)
    ticket = issue_ticket(alice, purpose="stream:s1", ttl=30)

    who = await redeem_ticket(ticket, purpose="stream:s1")

    assert (who.app_id, who.token_id, who.scopes) == (alice.app_id, alice.token_id, alice.scopes)
    assert who.expires_at <= tickets._clock() + 30
    assert alice_token not in ticket
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", ticket)  # safe in a URL and a WebSocket subprotocol


async def test_ticket_for_one_stream_does_not_open_another(alice_token: str) -> None:
    ticket = issue_ticket(await resolve_bearer(alice_token), purpose="stream:s1")

    with pytest.raises(AuthError) as err:
        await redeem_ticket(ticket, purpose="stream:s2")
    assert (err.value.status, err.value.code) == (401, "invalid_ticket")


async def test_ticket_expires(alice_token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ticket = issue_ticket(await resolve_bearer(alice_token), purpose="chat", ttl=5)
    now = tickets._clock()
    monkeypatch.setattr(tickets, "_clock", lambda: now + 6)

    with pytest.raises(AuthError) as err:
        await redeem_ticket(ticket, purpose="chat")
    assert (err.value.status, err.value.code) == (401, "ticket_expired")


async def test_tampered_ticket_is_refused(alice_token: str) -> None:
    ticket = issue_ticket(await resolve_bearer(alice_token), purpose="chat")
    tampered = ticket[:-1] + ("A" if ticket[-1] != "A" else "B")

    with pytest.raises(AuthError) as err:
        await redeem_ticket(tampered, purpose="chat")
    assert err.value.code == "invalid_ticket"
    with pytest.raises(AuthError):
        await redeem_ticket("not-a-ticket", purpose="chat")


async def test_revoking_the_token_kills_its_tickets(alice_token: str) -> None:
    ticket = issue_ticket(await resolve_bearer(alice_token), purpose="chat")
    await redeem_ticket(ticket, purpose="chat")  # cached by token id now

    token = await AccessToken.objects.aget()
    await token.adelete()

    with pytest.raises(AuthError) as err:
        await redeem_ticket(ticket, purpose="chat")
    assert err.value.status == 401


async def test_ticket_never_outlives_its_token(alice_token: str) -> None:
    alice = await resolve_bearer(alice_token)
    ticket = issue_ticket(alice, purpose="chat", ttl=10**6)

    assert (await redeem_ticket(ticket, purpose="chat")).expires_at == pytest.approx(
        alice.expires_at, abs=0.01
    )


async def test_authenticate_takes_a_ticket_only_without_a_header(
    alice_token: str, bob_token: str
) -> None:
    ticket = issue_ticket(await resolve_bearer(alice_token), purpose="chat")

    assert (await authenticate(None, ticket=ticket)).name == "alice-app"
    assert (await authenticate(f"Bearer {bob_token}", ticket=ticket)).name == "bob-app"

    stream_ticket = issue_ticket(await resolve_bearer(alice_token), purpose="stream:s1")
    with pytest.raises(AuthError):  # no purpose given: the ticket must be for the scope
        await authenticate(None, ticket=stream_ticket)
    who = await authenticate(None, ticket=stream_ticket, purpose="stream:s1")
    assert who.name == "alice-app"


async def test_staff_ticket_acts_as_the_app(bob: App) -> None:
    ticket = issue_staff_ticket(bob.app.pk, purpose="chat", ttl=30)

    who = await authenticate(None, ticket=ticket)

    assert (who.app_id, who.token_id) == (bob.app.pk, None)
    assert who.allowed_models == frozenset({"small"})
    assert who.expires_at <= tickets._clock() + 30


async def test_staff_ticket_for_disabled_or_deleted_app_is_refused(bob: App) -> None:
    ticket = issue_staff_ticket(bob.app.pk, purpose="chat")
    await authenticate(None, ticket=ticket)

    await (await AppPolicy.objects.aget(application=bob.app)).adelete()
    await AppPolicy.objects.acreate(application=bob.app, enabled=False)
    with pytest.raises(AuthError) as err:
        await authenticate(None, ticket=ticket)
    assert err.value.code == "app_disabled"

    await bob.app.adelete()
    with pytest.raises(AuthError) as err:
        await authenticate(None, ticket=ticket)
    assert err.value.status == 401

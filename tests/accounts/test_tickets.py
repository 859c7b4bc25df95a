from __future__ import annotations

import re

import pytest
from asgiref.sync import sync_to_async
from oauth2_provider.models import AccessToken, Application

from accounts import tickets
from accounts.auth import authenticate
from accounts.identity import AuthError, resolve_bearer
from accounts.models import AppPolicy
from accounts.tickets import issue_playground_ticket, issue_ticket, redeem_ticket
from tests.accounts.conftest import App

pytestmark = pytest.mark.django_db(transaction=True)


async def test_ticket_roundtrip(alice_token: str) -> None:
    alice = await resolve_bearer(alice_token)
    ticket = issue_ticket(alice, purpose="stream:s1", ttl=30)

    who = await redeem_ticket(ticket, purpose="stream:s1")

    assert (who.app_id, who.token_id, who.scopes) == (alice.app_id, alice.token_id, alice.scopes)
    # The ticket only opens: what it opens lives as long as the token does.
    assert who.expires_at == alice.expires_at
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


async def test_playground_ticket_acts_as_the_playground_app_and_names_the_user(
    bob: App,
) -> None:
    ticket = await sync_to_async(issue_playground_ticket)(
        user_id=7, username="olivia", purpose="chat", ttl=30
    )

    who = await authenticate(None, ticket=ticket)

    assert (who.name, who.token_id) == ("sluice-playground", None)
    assert (who.staff_user_id, who.staff_username) == (7, "olivia")
    # Tickets it hands out (a stream's) name the user too.
    again = await redeem_ticket(issue_ticket(who, purpose="stream:s1"), purpose="stream:s1")
    assert (again.app_id, again.staff_username) == (who.app_id, "olivia")


async def test_a_ticket_with_neither_token_nor_user_is_refused(bob: App) -> None:
    forged = tickets._sign(app_id=bob.app.pk, token_id=None, staff=None, purpose="chat", exp=1e12)

    with pytest.raises(AuthError) as err:
        await authenticate(None, ticket=forged)
    assert err.value.code == "invalid_ticket"


async def test_playground_ticket_for_a_disabled_or_deleted_app_is_refused() -> None:
    ticket = await sync_to_async(issue_playground_ticket)(
        user_id=7, username="olivia", purpose="chat"
    )
    who = await authenticate(None, ticket=ticket)

    await AppPolicy.objects.filter(application_id=who.app_id).adelete()
    await AppPolicy.objects.acreate(application_id=who.app_id, enabled=False)
    with pytest.raises(AuthError) as err:
        await authenticate(None, ticket=ticket)
    assert err.value.code == "app_disabled"

    await AppPolicy.objects.filter(application_id=who.app_id).adelete()
    await Application.objects.filter(pk=who.app_id).adelete()
    with pytest.raises(AuthError) as err:
        await authenticate(None, ticket=ticket)
    assert err.value.status == 401

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.db import database_sync_to_async
from django.utils import timezone
from oauth2_provider.models import AccessToken

from accounts import identity
from accounts.auth import authenticate
from accounts.identity import AuthError, resolve_bearer
from accounts.models import AppPolicy
from tests.accounts.conftest import App, request_token, token_for

pytestmark = pytest.mark.django_db(transaction=True)


async def test_alice_token_resolves_to_her_app(alice: App, alice_token: str) -> None:
    who = await resolve_bearer(alice_token)

    assert who.app_id == alice.app.pk
    assert who.client_id == alice.app.client_id
    assert who.name == "alice-app"
    assert who.scopes == frozenset({"chat"})
    assert who.allowed_models is None
    assert who.may_use("anything")
    assert who.token_id == await AccessToken.objects.values_list("pk", flat=True).aget()


async def test_made_up_token_is_401(alice: App) -> None:
    with pytest.raises(AuthError) as err:
        await resolve_bearer("charlie-made-this-up")
    assert (err.value.status, err.value.code) == (401, "invalid_token")


async def test_expired_token_is_401_token_expired(alice_token: str) -> None:
    past = timezone.now() - dt.timedelta(seconds=1)
    await AccessToken.objects.all().aupdate(expires=past)

    with pytest.raises(AuthError) as err:
        await resolve_bearer(alice_token)
    assert (err.value.status, err.value.code) == (401, "token_expired")


async def test_cached_identity_never_outlives_its_token(
    alice_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    who = await resolve_bearer(alice_token)
    monkeypatch.setattr(identity, "_clock", lambda: who.expires_at + 1)  # the cache's clock too

    with pytest.raises(AuthError) as err:
        await resolve_bearer(alice_token)
    assert err.value.code == "token_expired"


async def test_charlie_without_chat_scope_is_403(charlie: App) -> None:
    token = await sync_to_async(token_for)(charlie)

    with pytest.raises(AuthError) as err:
        await authenticate(f"Bearer {token}", scope="chat")
    assert (err.value.status, err.value.code) == (403, "insufficient_scope")
    assert "chat" in err.value.message
    assert 'scope="chat"' in err.value.www_authenticate
    assert (await authenticate(f"Bearer {token}", scope="admin")).app_id == charlie.app.pk


async def test_authenticate_needs_a_bearer_header(alice_token: str) -> None:
    with pytest.raises(AuthError) as err:
        await authenticate(None)
    assert (err.value.status, err.value.code) == (401, "missing_token")
    with pytest.raises(AuthError) as err:
        await authenticate(f"Basic {alice_token}")
    assert err.value.code == "invalid_token"
    assert (await authenticate(f"bearer  {alice_token} ")).name == "alice-app"


async def test_revoked_token_stops_working_at_once(alice: App, alice_token: str) -> None:
    await resolve_bearer(alice_token)  # now cached

    response = await sync_to_async(_revoke)(alice, alice_token)
    assert response.status_code == 200

    with pytest.raises(AuthError) as err:
        await resolve_bearer(alice_token)
    assert err.value.code == "invalid_token"


def _revoke(actor: App, token: str):  # type: ignore[no-untyped-def]
    from django.test import Client

    data = {"token": token, "client_id": actor.app.client_id, "client_secret": actor.secret}
    return Client().post("/o/revoke_token/", data)


def test_cache_hit_does_no_query(alice_token: str, django_assert_num_queries) -> None:  # type: ignore[no-untyped-def]
    with django_assert_num_queries(1):
        first = async_to_sync(resolve_bearer)(alice_token)
    with django_assert_num_queries(0):
        second = async_to_sync(resolve_bearer)(alice_token)
    assert first is second


async def test_bob_may_use_only_his_models(bob_token: str, alice_token: str) -> None:
    bob = await resolve_bearer(bob_token)
    assert bob.allowed_models == frozenset({"small"})
    assert bob.may_use("small")
    assert not bob.may_use("large")
    with pytest.raises(AuthError) as err:
        identity.require_model(bob, "large")
    assert (err.value.status, err.value.code) == (403, "model_not_allowed")
    identity.require_model(await resolve_bearer(alice_token), "large")


async def test_policy_edit_applies_at_once(alice: App, alice_token: str) -> None:
    assert (await resolve_bearer(alice_token)).may_use("large")

    policy = await AppPolicy.objects.aget(application=alice.app)
    policy.allowed_models = ["small"]
    await policy.asave()
    assert not (await resolve_bearer(alice_token)).may_use("large")

    policy.enabled = False
    await policy.asave()
    with pytest.raises(AuthError) as err:
        await resolve_bearer(alice_token)
    assert (err.value.status, err.value.code) == (403, "app_disabled")


async def test_disabled_app_gets_no_token(alice: App) -> None:
    await AppPolicy.objects.filter(application=alice.app).aupdate(enabled=False)

    response = await sync_to_async(request_token)(alice.app, alice.secret)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


async def test_invalidating_bob_leaves_alice_cached(
    alice_token: str, bob_token: str, bob: App
) -> None:
    alice_who = await resolve_bearer(alice_token)
    await resolve_bearer(bob_token)

    identity.invalidate_app(bob.app.pk)

    assert identity._identities.peek(identity.token_checksum(alice_token)) is alice_who
    assert identity._identities.peek(identity.token_checksum(bob_token)) is None


async def test_cache_is_bounded_and_keyed_by_checksum(alice_token: str) -> None:
    who = await resolve_bearer(alice_token)

    assert identity._identities.max_entries == identity.CACHE_MAX_ENTRIES
    assert len(identity._identities) == 1
    assert identity._identities.peek(identity.token_checksum(alice_token)) is who
    assert identity._identities.peek(alice_token) is None


async def test_concurrent_lookups_of_a_new_token_make_one_query(
    alice_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    queries: list[object] = []
    monkeypatch.setattr(identity, "_load_token", _counting(identity._token_identity, queries))

    found = await asyncio.gather(*(resolve_bearer(alice_token) for _ in range(10)))

    assert len(queries) == 1
    assert all(who is found[0] for who in found)


async def test_invalid_tokens_are_not_cached(alice: App, monkeypatch: pytest.MonkeyPatch) -> None:
    queries: list[object] = []
    monkeypatch.setattr(identity, "_load_token", _counting(identity._token_identity, queries))

    for _ in range(2):
        with pytest.raises(AuthError):
            await resolve_bearer("charlie-made-this-up")

    assert len(queries) == 2
    assert len(identity._identities) == 0


def _counting(lookup, queries: list[object]):  # type: ignore[no-untyped-def]
    def counted(arg):  # type: ignore[no-untyped-def]
        queries.append(arg)
        return lookup(arg)

    return database_sync_to_async(counted)


async def test_lookup_racing_an_invalidation_is_not_cached(
    alice: App, alice_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    load = identity._load_token
    read, revoked = asyncio.Event(), asyncio.Event()

    async def racing_load(lookup):  # type: ignore[no-untyped-def]
        who = await load(lookup)
        read.set()
        await revoked.wait()
        return who

    monkeypatch.setattr(identity, "_load_token", racing_load)
    lookup = asyncio.create_task(resolve_bearer(alice_token))
    await read.wait()
    identity.invalidate_app(alice.app.pk)
    revoked.set()

    assert (await lookup).app_id == alice.app.pk
    assert identity._identities.peek(identity.token_checksum(alice_token)) is None

"""Brakes on guessing secrets: the token endpoint and the admin sign-in.

Each test sends from its own loopback address (127.0.0.x), so the
per-address counts of one test do not reach the next; the gateway keeps its
counts under this test run's own prefix (tests/live.py).
"""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import unique

LIMITS = {"SLUICE_THROTTLE_CLIENT_FAILURES": "3", "SLUICE_THROTTLE_ADDRESS_FAILURES": "6"}


@pytest.fixture(scope="module")
def guarded(django_db_setup):
    from tests.live import GatewayServer, server_env

    server = GatewayServer(env=server_env(**LIMITS)).start()
    yield server
    server.stop()


def client_from(source: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=20)


def ask_token(client: httpx.Client, server, client_id: str, secret: str) -> httpx.Response:
    return client.post(
        f"{server.url}/o/token/",
        data={"grant_type": "client_credentials", "scope": "chat"},
        auth=(client_id, secret),
    )


def assert_throttled(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["Retry-After"]) >= 1
    assert response.json()["error"] == "slow_down"


def new_app(name: str):
    from accounts.services import app_create

    return app_create(name=unique(name), scopes=["chat"])


def test_wrong_secrets_for_a_known_client_id_are_throttled(guarded, live_db):
    (app, secret), (other, other_secret) = new_app("alice"), new_app("bob")
    with client_from("127.0.0.11") as client:
        for _ in range(3):
            assert ask_token(client, guarded, app.client_id, "wrong").status_code == 401
        # Locked: even the right secret waits, and no hash is computed.
        assert_throttled(ask_token(client, guarded, app.client_id, secret))
        # Another app is not locked out by alice's failures.
        assert ask_token(client, guarded, other.client_id, other_secret).status_code == 200


def test_an_unknown_client_id_is_throttled_like_a_known_one(guarded, live_db):
    with client_from("127.0.0.12") as client:
        for _ in range(3):
            assert ask_token(client, guarded, "no-such-client", "guess").status_code == 401
        assert_throttled(ask_token(client, guarded, "no-such-client", "guess"))


def test_failures_from_one_address_are_throttled_across_client_ids(guarded, live_db):
    app, secret = new_app("alice")
    with client_from("127.0.0.13") as client:
        for n in range(6):
            assert ask_token(client, guarded, f"made-up-{n}", "guess").status_code == 401
        assert_throttled(ask_token(client, guarded, "made-up-next", "guess"))
        assert_throttled(ask_token(client, guarded, app.client_id, secret))
    with client_from("127.0.0.14") as client:  # another address is still served
        assert ask_token(client, guarded, app.client_id, secret).status_code == 200


def sign_in(client: httpx.Client, server, username: str, password: str) -> httpx.Response:
    page = client.get(f"{server.url}/admin/login/")
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert found, page.text[:500]
    return client.post(
        f"{server.url}/admin/login/",
        data={
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": found.group(1),
            "next": "/admin/",
        },
    )


def test_the_admin_sign_in_is_locked_after_repeated_failures(guarded, live_db):
    from django.contrib.auth import get_user_model

    name = unique("root")
    get_user_model().objects.create_superuser(name, f"{name}@example.com", "right-password-1")
    with client_from("127.0.0.15") as client:
        for _ in range(3):
            assert sign_in(client, guarded, name, "wrong-password").status_code == 200
        locked = sign_in(client, guarded, name, "right-password-1")
        assert locked.status_code == 429
        assert int(locked.headers["Retry-After"]) >= 1
    with client_from("127.0.0.16") as client:  # another user is not locked out
        other = unique("root")
        get_user_model().objects.create_superuser(other, f"{other}@example.com", "right-pass-2")
        assert sign_in(client, guarded, other, "right-pass-2").status_code == 302

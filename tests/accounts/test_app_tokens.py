"""Long-lived tokens against a served gateway: issued from the shell, used as the
OpenAI and Anthropic SDKs' API key, stored hashed, introspected and revoked.

Alice's app issues a long-lived token with ``sluice_app token create`` (run
in this process: the gateway reads the same database). The shell's revoke
runs as a real subprocess and reaches the gateway through Redis; the
``/o/revoke_token/`` endpoint and the management API are served by the
gateway itself and run everywhere.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from datetime import timedelta
from typing import Any

import httpx
import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from tests.conftest import Actor
from tests.live import ROOT, GatewayServer
from tests.streams.test_revocation import (
    assert_cancelled,
    assert_ended,
    assert_refused,
    hold,
    long_model,
    needs_redis,
)

__all__ = ["long_model"]  # a fixture, used by name
pytestmark = [pytest.mark.timeout(90), pytest.mark.django_db(transaction=True)]
HELLO = [{"role": "user", "content": "Say hello"}]


def sluice_app(*args: str) -> Any:
    out = io.StringIO()
    call_command("sluice_app", *args, stdout=out)
    return json.loads(out.getvalue())


def issue(actor: Actor, *args: str) -> Actor:
    """A long-lived token of the actor's app, as the actor with that token."""
    issued = sluice_app("token", "create", actor.name, "--name", "ci-bot", *args)
    return Actor(actor.name, actor.client_id, actor.client_secret, issued["token"], actor.app_id)


def introspect(gateway: GatewayServer, actor: Actor, token: str) -> dict[str, Any]:
    response = httpx.post(
        f"{gateway.url}/o/introspect/",
        data={"token": token},
        auth=(actor.client_id, actor.client_secret),
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_a_token_from_the_shell_is_both_sdks_api_key(make_actor, sdk, claude, demo_model):
    alice = issue(make_actor("alice"))
    assert alice.token.startswith("sk-sluice-")

    stream = sdk(alice).chat.completions.create(model=demo_model, stream=True, messages=HELLO)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    message = claude(alice).messages.create(model=demo_model, max_tokens=64, messages=HELLO)

    assert text and message.content[0].text


def test_listed_never_shown_and_stored_hashed(make_actor, demo_model, sdk):
    from oauth2_provider.models import AccessToken

    from accounts.models import AppToken

    alice = issue(make_actor("alice"), "--expires", "12h")
    sdk(alice).models.list()  # used once: the lookup notes it

    listed = sluice_app("token", "list", alice.name)
    assert [t["name"] for t in listed] == ["ci-bot"] and alice.token not in json.dumps(listed)
    assert listed[0]["prefix"] == alice.token[:18] and listed[0]["scopes"] == ["chat"]
    assert listed[0]["last_used"] and listed[0]["status"] == "active"
    stored = AccessToken.objects.get(pk=AppToken.objects.get().access_token_id)
    assert stored.token == "" and stored.token_checksum == sha256(alice.token)
    for row in (*AccessToken.objects.values(), *AppToken.objects.values()):
        assert alice.token not in str(row)
    in_12h = timezone.now() + timedelta(hours=12)
    assert abs((stored.expires - in_12h).total_seconds()) < 60


def test_expiry_is_respected_and_never_means_never(gateway, make_actor):
    from oauth2_provider.models import AccessToken

    from accounts.models import NEVER_EXPIRES

    actor = make_actor("alice")
    soon, never = issue(actor, "--expires", "1h"), issue(actor, "--expires", "never")
    # Its hour has passed (unseen by the gateway's cache: never used before).
    AccessToken.objects.exclude(expires=NEVER_EXPIRES).filter(app_token__isnull=False).update(
        expires=timezone.now() - timedelta(seconds=1)
    )

    expired = httpx.get(f"{gateway.url}/v1/models", headers=soon.headers)
    assert expired.status_code == 401 and "expired" in expired.text
    assert httpx.get(f"{gateway.url}/v1/models", headers=never.headers).status_code == 200
    assert sluice_app("token", "list", actor.name)[0]["expires"] == "never"
    assert introspect(gateway, actor, never.token)["active"] is True


def test_scopes_must_be_the_apps(make_actor):
    alice = make_actor("alice")
    with pytest.raises(CommandError, match="admin"):
        sluice_app("token", "create", alice.name, "--name", "x", "--scopes", "admin")
    with pytest.raises(CommandError, match="Expiry"):
        sluice_app("token", "create", alice.name, "--name", "x", "--expires", "soon")
    ops = make_actor("ops", scopes=["chat", "admin"])
    issued = sluice_app("token", "create", ops.name, "--name", "x", "--scopes", "chat,admin")
    assert issued["scopes"] == ["chat", "admin"]


@pytest.mark.parametrize("long_lived", [False, True], ids=["client-credentials", "long-lived"])
def test_introspect_and_revoke_token_endpoints(gateway, make_actor, long_lived):
    actor = make_actor("alice")
    if long_lived:
        actor = issue(actor)
    facts = introspect(gateway, actor, actor.token)
    assert (facts["active"], facts["scope"], facts["client_id"]) == (True, "chat", actor.client_id)

    revoked = httpx.post(
        f"{gateway.url}/o/revoke_token/",
        data={"token": actor.token},
        auth=(actor.client_id, actor.client_secret),
    )

    assert revoked.status_code == 200
    assert introspect(gateway, actor, actor.token) == {"active": False}
    assert httpx.get(f"{gateway.url}/v1/models", headers=actor.headers).status_code == 401


def revoke_with_cli(gateway: GatewayServer, actor: Actor) -> None:
    prefix = actor.token[:18]
    command = [sys.executable, "manage.py", "sluice_app", "token", "revoke", actor.name, prefix]
    done = subprocess.run(command, cwd=ROOT, env=gateway.env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "revoked"


def revoke_with_oauth(gateway: GatewayServer, actor: Actor) -> None:
    response = httpx.post(
        f"{gateway.url}/o/revoke_token/",
        data={"token": actor.token},
        auth=(actor.client_id, actor.client_secret),
    )
    assert response.status_code == 200, response.text


def revoke_with_api(gateway: GatewayServer, actor: Actor) -> None:
    from accounts.models import AppToken
    from accounts.services import app_create
    from accounts.tokens import app_token_create

    ops, _ = app_create(name=f"ops-of-{actor.name}", scopes=["admin"])
    admin = app_token_create(application=ops, name="ops", scopes=["admin"]).token
    token_id = AppToken.objects.get(prefix=actor.token[:18]).pk
    response = httpx.delete(
        f"{gateway.url}/api/v1/apps/{actor.name}/tokens/{token_id}/",
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert response.status_code == 204, response.text


@pytest.mark.parametrize(
    "revoke",
    [
        pytest.param(revoke_with_cli, marks=needs_redis, id="sluice_app"),
        pytest.param(revoke_with_oauth, id="revoke_token"),
        pytest.param(revoke_with_api, id="api"),
    ],
)
def test_revoking_ends_the_next_request_and_open_streams(gateway, make_actor, long_model, revoke):
    from accounts.models import AppToken

    alice = issue(make_actor("alice"))
    held = [hold(kind, gateway.url, alice.headers, long_model) for kind in ("sse", "ws")]

    revoke(gateway, alice)

    assert_ended(held, "token_revoked")
    assert_refused([gateway], alice.headers, 401)
    assert_cancelled(held, "token_revoked")
    record = AppToken.objects.get(prefix=alice.token[:18])
    assert record.revoked is not None and record.access_token_id is None


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()

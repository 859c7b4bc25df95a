"""Revocation bites at once: on real gateway processes, with real clients.

Alice holds an SSE, an NDJSON, a text stream and a WebSocket open (each
already streaming a long answer) when her token is revoked, her app disabled,
or her token expires. Each connection must end with its own kind of error
(an OpenAI-style ``error`` event then ``[DONE]``, an error line, a last text
line, a 4401 close with a reason), long before the answer would have ended,
and the next request must be refused.

``sluice_app revoke`` runs as a real subprocess, and the policy is disabled
(or the app deleted) in this test process: these reach the gateway only
through the channel layer, so they need Redis. ``/o/revoke_token/`` and the
admin's token revocation are served by the gateway itself and run everywhere.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
import websockets.exceptions
from websockets.sync.client import connect

from tests.conftest import unique, wait_for_audit
from tests.live import ROOT, GatewayServer, server_env

REDIS_URL = os.environ.get("REDIS_URL", "")
needs_redis = pytest.mark.skipif(not REDIS_URL, reason="another process reaches it through Redis")
pytestmark = [pytest.mark.timeout(90), pytest.mark.django_db(transaction=True)]

TOKENS = 600  # at 0.05 s each: a 30 s answer, which a revocation must cut short
ENDS_WITHIN = 10.0  # generous: it should take milliseconds, never the answer's 30 s
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def long_model(upstream: Any, make_route: Callable[..., str]) -> str:
    upstream_model = unique("long")
    upstream.script(upstream_model, tokens=TOKENS, delay=0.05)
    return make_route(("openai", upstream.base_url, upstream_model))


@dataclass
class Held:
    """One connection, read in a thread until the server ends it."""

    kind: str
    opened: threading.Event = field(default_factory=threading.Event)
    lines: list[str] = field(default_factory=list)
    close: tuple[int, str] | None = None
    stream_id: str = ""
    thread: threading.Thread | None = None
    ws: Any = None

    def ended(self) -> bool:
        assert self.thread is not None
        self.thread.join(ENDS_WITHIN)
        return not self.thread.is_alive()


def _read_http(held: Held, base: str, headers: dict[str, str], model: str) -> None:
    accept = {"sse": "text/event-stream", "ndjson": "application/x-ndjson", "text": "text/plain"}
    body = {"model": model, "stream": True, "messages": HELLO}
    with httpx.stream(
        "POST",
        f"{base}/v1/chat/completions",
        json=body,
        headers={**headers, "Accept": accept[held.kind]},
        timeout=httpx.Timeout(60, read=40),
    ) as response:
        assert response.status_code == 200, response.read()
        held.stream_id = response.headers["x-sluice-stream-id"]
        if held.kind == "text":  # one long line of text until the end
            text = ""
            for piece in response.iter_text():
                text += piece
                held.opened.set()
            held.lines = [line for line in text.splitlines() if line.strip()]
            return
        for line in response.iter_lines():
            if line.strip():
                held.lines.append(line)
                held.opened.set()


def _read_ws(held: Held, base: str, headers: dict[str, str], model: str) -> None:
    url = base.replace("http", "ws") + "/v1/ws"
    with connect(url, additional_headers=headers, open_timeout=10) as ws:
        held.ws = ws
        ws.send(json.dumps({"type": "chat.create", "model": model, "messages": HELLO}))
        try:
            while True:
                message = json.loads(ws.recv(timeout=40))
                held.lines.append(message["type"])
                if message["type"] == "stream.created":
                    held.stream_id = message["stream_id"]
                elif message["type"] == "chunk":
                    held.opened.set()
        except websockets.exceptions.ConnectionClosed as closed:
            assert closed.rcvd is not None, "the server did not close the socket"
            held.close = (closed.rcvd.code, closed.rcvd.reason)


def hold(kind: str, base: str, headers: dict[str, str], model: str) -> Held:
    held = Held(kind)
    read = _read_ws if kind == "ws" else _read_http
    held.thread = threading.Thread(target=read, args=(held, base, headers, model), daemon=True)
    held.thread.start()
    assert held.opened.wait(15), f"{kind} did not start streaming"
    return held


def hold_all(servers: list[GatewayServer], headers: dict[str, str], model: str) -> list[Held]:
    """SSE, NDJSON, text and a WebSocket, spread over ``servers`` in turn."""
    kinds = ["sse", "ndjson", "text", "ws"]
    return [hold(k, servers[i % len(servers)].url, headers, model) for i, k in enumerate(kinds)]


def assert_ended(held: list[Held], reason: str) -> None:
    words = reason.replace("_", " ")
    for connection in held:
        assert connection.ended(), f"{connection.kind} is still open"
        last = connection.lines[-2:]
        if connection.kind == "sse":
            error = json.loads(last[0].removeprefix("data:"))["error"]
            assert (error["code"], last[1]) == (reason, "data: [DONE]")
            assert words in error["message"] and error["type"]
        elif connection.kind == "ndjson":
            assert json.loads(last[1])["error"]["code"] == reason
        elif connection.kind == "text":
            assert last[1].startswith("[error: ") and words in last[1]
        else:
            assert connection.close == (4401, words)


def assert_refused(servers: list[GatewayServer], headers: dict[str, str], status: int) -> None:
    for server in servers:
        assert httpx.get(f"{server.url}/v1/models", headers=headers).status_code == status
        with pytest.raises(websockets.exceptions.InvalidStatus):  # no new socket either
            connect(server.url.replace("http", "ws") + "/v1/ws", additional_headers=headers)


def assert_cancelled(held: list[Held], reason: str) -> None:
    """The generations in flight were cancelled, and their audit says why."""
    for connection in held:
        record = wait_for_audit(connection.stream_id)
        assert (record.outcome, record.error_class) == ("cancelled", reason), connection.kind
        # Its reader was ended by the revocation (or, first, by the stream's own end).
        (delivery,) = record.deliveries
        assert delivery["ended"] in ("revoked", "cancelled"), (connection.kind, delivery)


# -- the ways to revoke ------------------------------------------------------
def revoke_with_cli(server: GatewayServer, actor: Any) -> None:
    command = [sys.executable, "manage.py", "sluice_app", "revoke", actor.name]
    done = subprocess.run(command, cwd=ROOT, env=server.env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["revoked_tokens"] == 1


def revoke_with_oauth(server: GatewayServer, actor: Any) -> None:
    response = httpx.post(
        f"{server.url}/o/revoke_token/",
        data={"token": actor.token},
        auth=(actor.client_id, actor.client_secret),
    )
    assert response.status_code == 200, response.text


def disable_the_app(server: GatewayServer, actor: Any) -> None:
    from accounts.models import AppPolicy

    policy = AppPolicy.objects.get(application_id=actor.app_id)
    policy.enabled = False
    policy.save()


def revoke_in_the_admin(server: GatewayServer, actor: Any) -> None:
    """As ops would: the admin's "Revoke selected access tokens" action, on the gateway."""
    from django.contrib.auth import get_user_model
    from oauth2_provider.models import AccessToken

    get_user_model().objects.create_superuser("root", "root@example.com", "s3cret-root-pass")
    token = AccessToken.objects.get(application_id=actor.app_id)
    with httpx.Client(base_url=server.url) as admin:
        admin.get("/admin/login/")
        login = {"username": "root", "password": "s3cret-root-pass"}
        logged_in = admin.post(
            "/admin/login/?next=/admin/",
            data={**login, "csrfmiddlewaretoken": admin.cookies["csrftoken"]},
        )
        assert logged_in.headers.get("location") == "/admin/", logged_in.text
        action = {
            "action": "revoke_tokens",
            "_selected_action": [str(token.pk)],
            "csrfmiddlewaretoken": admin.cookies["csrftoken"],
        }
        done = admin.post("/admin/oauth2_provider/accesstoken/", data=action)
        assert done.status_code == 302, done.text
    assert not AccessToken.objects.filter(pk=token.pk).exists()


def delete_the_app(server: GatewayServer, actor: Any) -> None:
    from oauth2_provider.models import Application

    Application.objects.get(pk=actor.app_id).delete()


WAYS = [
    pytest.param(revoke_with_cli, "token_revoked", 401, marks=needs_redis, id="sluice_app"),
    pytest.param(revoke_with_oauth, "token_revoked", 401, id="revoke_token"),
    pytest.param(revoke_in_the_admin, "token_revoked", 401, id="admin"),
    pytest.param(disable_the_app, "app_disabled", 403, marks=needs_redis, id="policy"),
    pytest.param(delete_the_app, "app_deleted", 401, marks=needs_redis, id="app_deleted"),
]


# -- one instance --------------------------------------------------------------
@pytest.mark.parametrize(("revoke", "reason", "status"), WAYS)
def test_revocation_ends_open_connections_at_once(
    gateway: GatewayServer, alice: Any, long_model: str, revoke: Any, reason: str, status: int
) -> None:
    held = hold_all([gateway], alice.headers, long_model)

    revoke(gateway, alice)

    assert_ended(held, reason)
    assert_refused([gateway], alice.headers, status)
    assert_cancelled(held, reason)


def test_a_token_that_expires_closes_its_connections(
    gateway: GatewayServer, alice: Any, long_model: str
) -> None:
    from django.utils import timezone
    from oauth2_provider.models import AccessToken

    token = secrets.token_urlsafe(30)
    AccessToken.objects.create(
        application_id=alice.app_id,
        token=token,
        scope="chat",
        expires=timezone.now() + timedelta(seconds=4),
    )
    headers = {"Authorization": f"Bearer {token}"}
    held = [hold(kind, gateway.url, headers, long_model) for kind in ("sse", "ws")]

    assert_ended(held, "token_expired")
    assert_refused([gateway], headers, 401)


def test_other_apps_keep_streaming(
    gateway: GatewayServer, alice: Any, bob: Any, long_model: str
) -> None:
    bobs = hold("ws", gateway.url, bob.headers, long_model)
    alices = hold("ws", gateway.url, alice.headers, long_model)

    revoke_with_oauth(gateway, alice)

    assert alices.ended() and alices.close == (4401, "token revoked")
    assert bobs.thread is not None and bobs.thread.is_alive()
    assert httpx.get(f"{gateway.url}/v1/models", headers=bob.headers).status_code == 200
    bobs.ws.close()
    assert bobs.ended() and bobs.close == (1000, "")


# -- two instances on Redis ------------------------------------------------------
@pytest.fixture(scope="module")
def pair(django_db_setup: None) -> Iterator[list[GatewayServer]]:
    if not REDIS_URL:
        pytest.skip("two instances share revocations through Redis (CI sets REDIS_URL)")
    servers = [GatewayServer(env=server_env(REDIS_URL=REDIS_URL)).start() for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


@pytest.mark.parametrize(("revoke", "reason", "status"), WAYS)
def test_revocation_reaches_every_instance(
    pair: list[GatewayServer],
    alice: Any,
    long_model: str,
    revoke: Any,
    reason: str,
    status: int,
) -> None:
    a, b = pair
    held = hold_all([b, a], alice.headers, long_model)  # SSE and text on b, NDJSON and WS on a

    revoke(a, alice)  # the OAuth endpoint of a: b hears of it through Redis

    assert_ended(held, reason)
    assert_refused(pair, alice.headers, status)
    assert_cancelled(held, reason)

"""The admin playground never acts as an application other than its own.

Olivia is an operator (the ``operators`` group), Audrey an auditor, Sam staff
with no permissions; alice's app streams with its own token. Tickets come from
the real ticket view; streams run on a real gateway process.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from websockets.sync.client import connect

from tests.conftest import wait_for_audit
from tests.streams.clients import start_sse

pytestmark = [pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]

PASSWORD = "s3cret-pass-for-tests"
HELLO = [{"role": "user", "content": "hello"}]


def staff_client(username: str, *, group: str | None = None, superuser: bool = False) -> Client:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    User = get_user_model()
    if superuser:
        user = User.objects.create_superuser(username, f"{username}@example.com", PASSWORD)
    else:
        user = User.objects.create_user(username, password=PASSWORD, is_staff=True)
    if group is not None:
        user.groups.add(Group.objects.get(name=group))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def olivia(live_db: None) -> Client:
    return staff_client("olivia", group="operators")


def ticket_of(client: Client, **data: Any) -> dict[str, Any]:
    response = client.post("/admin/sluice/playground/ticket", data)
    assert response.status_code == 200, response.content
    return dict(response.json())


def ws_url(gateway: Any) -> str:
    return gateway.url.replace("http", "ws") + "/v1/ws"


@pytest.mark.parametrize("group", ["auditors", None])
def test_staff_without_the_permission_get_403(live_db: None, group: str | None) -> None:
    client = staff_client("audrey" if group else "sam", group=group)

    assert client.get("/admin/sluice/playground/").status_code == 403
    assert client.post("/admin/sluice/playground/ticket").status_code == 403


def test_operators_and_superusers_may_use_it(olivia: Client) -> None:
    root = staff_client("root", superuser=True)
    for client in (olivia, root):
        assert client.get("/admin/sluice/playground/").status_code == 200
        assert ticket_of(client)["ticket"]


def test_a_ticket_naming_another_app_is_for_the_playground_app(olivia: Client, alice) -> None:
    from oauth2_provider.models import Application

    got = ticket_of(olivia, app=str(alice.app_id))

    playground = Application.objects.get(name="sluice-playground")
    assert got["app_id"] == playground.pk != alice.app_id


def test_a_playground_ticket_cannot_resume_or_cancel_alices_stream(
    gateway, olivia: Client, alice, demo_model: str
) -> None:
    stream_id = start_sse(gateway.url, alice.headers, demo_model, stop_after=None).stream_id
    ticket = ticket_of(olivia, app=str(alice.app_id))["ticket"]

    with connect(ws_url(gateway), subprotocols=[f"sluice.ticket.{ticket}"]) as ws:
        for kind in ("stream.resume", "stream.cancel"):
            ws.send(json.dumps({"type": kind, "stream_id": stream_id, "after": 0}))
            reply = json.loads(ws.recv(timeout=10))
            assert (reply["type"], reply["status"]) == ("error", 403), reply
            assert reply["error"]["code"] == "stream_forbidden"


def test_the_audit_record_names_the_staff_user(gateway, olivia: Client, demo_model: str) -> None:
    ticket = ticket_of(olivia)["ticket"]

    with connect(ws_url(gateway), subprotocols=[f"sluice.ticket.{ticket}"]) as ws:
        ws.send(json.dumps({"type": "chat.create", "model": demo_model, "messages": HELLO}))
        created = json.loads(ws.recv(timeout=10))
        assert created["type"] == "stream.created", created
        while json.loads(ws.recv(timeout=10))["type"] != "stream.done":
            pass

    record = wait_for_audit(created["stream_id"])
    assert (record.app_name, record.staff_username) == ("sluice-playground", "olivia")
    assert record.staff_user_id is not None

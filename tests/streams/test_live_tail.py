"""Live tail: staff with audit.watch_stream watch a stream in flight, read-only.

Carol is an auditor who was granted ``watch_stream``; Audrey an auditor who
was not. Alice's app streams with its own token on a served gateway; Carol
signs in through the admin's login form and watches with a plain HTTP client.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from accounts.models import AppPolicy
from tests.conftest import unique, wait_for_audit
from tests.live import GatewayServer, server_env
from tests.streams.clients import Progress, read_sse, start_sse

pytestmark = [pytest.mark.timeout(90), pytest.mark.django_db(transaction=True)]
PASSWORD = "s3cret-pass-for-tests"
REDIS_URL = os.environ.get("REDIS_URL", "")


def auditor(username: str, *, may_watch: bool) -> str:
    from django.contrib.auth.models import Group, Permission, User

    user = User.objects.create_user(username, password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name="auditors"))
    if may_watch:
        user.user_permissions.add(Permission.objects.get(codename="watch_stream"))
    return username


def signed_in(base: str, username: str) -> httpx.Client:
    """An HTTP client with an admin session, signed in through the login form."""
    client = httpx.Client(base_url=base, timeout=20)
    client.get("/admin/login/")
    response = client.post(
        "/admin/login/?next=/admin/",
        data={
            "username": username,
            "password": PASSWORD,
            "csrfmiddlewaretoken": client.cookies["csrftoken"],
            "next": "/admin/",
        },
        headers={"Referer": f"{base}/admin/login/"},
    )
    assert response.status_code == 302, response.text[:500]
    return client


def watch(
    client: httpx.Client,
    stream_id: str,
    stop_after_text: int | None = None,
    *,
    last_event_id: int | None = None,
) -> list:
    """The tail's events as (id, event, data) until its end (or ``stop_after_text`` texts);
    with ``last_event_id``, as an EventSource reconnecting after it."""
    events: list[tuple[int | None, str, Any]] = []
    texts = 0
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    path = f"/admin/sluice/tail/{stream_id}/events"
    with client.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        event_id, name, data = None, "message", []
        for line in response.iter_lines():
            if line.startswith("id:"):
                event_id = int(line[3:].strip())
            elif line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif line == "" and data:
                events.append((event_id, name, json.loads("\n".join(data))))
                texts += name == "text"
                if name == "end" or (stop_after_text is not None and texts >= stop_after_text):
                    break
                event_id, name, data = None, "message", []
    return events


@pytest.fixture
def slow_model(upstream, make_route) -> tuple[str, list[str]]:
    tokens = [f"w{i} " for i in range(60)]
    upstream_model = unique("tail")
    upstream.script(upstream_model, tokens=tokens, delay=0.05)
    return make_route(("openai", upstream.base_url, upstream_model)), tokens


def in_background(target: Any, *args: Any) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(target(*args)), daemon=True)
    thread.start()
    return thread, result


def started_stream(gateway: GatewayServer, alice: Any, model: str) -> tuple[Progress, Any]:
    """A client reading a stream to its end in the background; (its progress, thread)."""
    progress = Progress()
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}

    def read() -> None:
        with httpx.stream(
            "POST", f"{gateway.url}/v1/chat/completions", headers=alice.headers, json=body
        ) as response:
            progress.stream_id = response.headers["x-sluice-stream-id"]
            read_sse(response, progress, None)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not progress.seqs and time.monotonic() < deadline:
        time.sleep(0.01)
    assert progress.stream_id
    return progress, thread


def notes(request_id: str, kind: str, count: int = 1) -> list[Any]:
    from audit.models import AuditNote

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = list(AuditNote.objects.filter(request_id=request_id, kind=kind))
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {kind} note for {request_id}")


def test_without_the_permission_403_and_an_unknown_stream_404(gateway, live_db, alice, slow_model):
    progress, thread = started_stream(gateway, alice, slow_model[0])
    audrey = signed_in(gateway.url, auditor("audrey", may_watch=False))
    carol = signed_in(gateway.url, auditor("carol", may_watch=True))
    anonymous = httpx.Client(base_url=gateway.url, timeout=10)

    for path in (f"/admin/sluice/tail/{progress.stream_id}/", "/admin/sluice/tail/x/events"):
        assert audrey.get(path).status_code == 403
    assert anonymous.get(f"/admin/sluice/tail/{progress.stream_id}/events").status_code == 403
    assert carol.get("/admin/sluice/tail/chatcmpl-nope/events").status_code == 404
    assert carol.get("/admin/sluice/tail/chatcmpl-nope/").status_code == 404
    page = carol.get(f"/admin/sluice/tail/{progress.stream_id}/")
    assert page.status_code == 200 and "Live tail" in page.text
    thread.join(20)
    for client in (audrey, carol, anonymous):
        client.close()


def test_streams_live_text_read_only(gateway, live_db, alice, slow_model):
    model, tokens = slow_model
    carol = signed_in(gateway.url, auditor("carol", may_watch=True))
    progress, thread = started_stream(gateway, alice, model)

    events = watch(carol, progress.stream_id)
    thread.join(20)

    texts = [data for _, name, data in events if name == "text"]
    assert "".join(texts) == "".join(tokens)
    assert len(texts) == len(tokens)  # delta by delta, as they came
    assert events[-1][1:] == ("end", {"outcome": "completed"})
    ids = [event_id for event_id, _, _ in events]
    assert ids == list(range(1, len(ids) + 1))  # every event of the log, in order
    assert progress.done and progress.content == "".join(tokens)
    record = wait_for_audit(progress.stream_id)
    assert record.outcome == "completed" and record.resumes == 0
    assert [d["actor"] for d in record.deliveries] == [alice.name]  # not the watcher
    (note,) = notes(progress.stream_id, "watch")
    assert note.actor == "carol" and note.detail == {"running": True}
    carol.close()


def test_a_watcher_leaving_cancels_nothing(gateway, live_db, alice, slow_model):
    model, tokens = slow_model
    carol = signed_in(gateway.url, auditor("carol", may_watch=True))
    progress, thread = started_stream(gateway, alice, model)

    events = watch(carol, progress.stream_id, stop_after_text=3)
    assert [data for _, name, data in events if name == "text"] == tokens[:3]
    carol.close()  # the watcher hangs up mid-stream
    thread.join(20)

    assert progress.done and progress.content == "".join(tokens)
    assert wait_for_audit(progress.stream_id).outcome == "completed"


def test_a_watcher_does_not_keep_an_abandoned_stream_alive(gateway, live_db, alice, slow_model):
    """The gateway abandons a stream nobody reads after SLUICE_STREAM_ABANDON_SECONDS (2
    in tests): a watcher alone is nobody."""
    model, tokens = slow_model  # 60 tokens at 50 ms: 3 s
    carol = signed_in(gateway.url, auditor("carol", may_watch=True))
    progress = start_sse(gateway.url, alice.headers, model, stop_after=2)  # then hangs up

    events = watch(carol, progress.stream_id)

    assert events[-1][1:] == ("end", {"outcome": "abandoned"})
    texts = [data for _, name, data in events if name == "text"]
    assert 0 < len(texts) < len(tokens)
    record = wait_for_audit(progress.stream_id)
    assert record.outcome == "abandoned" and record.resumes == 0
    carol.close()


def test_an_app_whose_records_are_redacted_is_watched_redacted(
    gateway, live_db, make_actor, upstream, make_route
):
    """Alice's app redacts emails: her client gets the answer as generated, the
    watcher never sees the address, not even its start, however the tokens cut
    it; a reconnect starts the page over, so nothing held back is lost."""
    alice = make_actor("alice")
    AppPolicy.objects.filter(application_id=alice.app_id).update(redact_emails=True)
    filler = [f"word{i} " for i in range(300)]  # about 2,400 characters
    tokens = [*filler[:150], "write to ali", "ce@exam", "ple.com today ", *filler[150:]]
    upstream_model = unique("tail")
    upstream.script(upstream_model, tokens=tokens, delay=0.005)
    model = make_route(("openai", upstream.base_url, upstream_model))
    carol = signed_in(gateway.url, auditor("carol", may_watch=True))
    progress, thread = started_stream(gateway, alice, model)

    events = watch(carol, progress.stream_id)
    thread.join(20)

    assert progress.content == "".join(tokens)
    expected = "".join(tokens).replace("alice@example.com", "[REDACTED:email]")
    texts = [data for _, name, data in events if name == "text"]
    assert events[0][1] == "reset" and "".join(texts) == expected
    assert not any("ali" in text or "@exam" in text for text in texts)
    assert events[-1][1:] == ("end", {"outcome": "completed"})

    again = watch(carol, progress.stream_id, last_event_id=events[-1][0])
    assert again[0][1] == "reset"
    assert "".join(data for _, name, data in again if name == "text") == expected
    assert len(notes(progress.stream_id, "watch")) == 1  # a reconnect is the same watch
    carol.close()


@pytest.fixture(scope="module")
def pair(django_db_setup) -> Iterator[list[GatewayServer]]:
    servers = [GatewayServer(env=server_env(REDIS_URL=REDIS_URL)).start() for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


@pytest.mark.skipif(not REDIS_URL, reason="needs REDIS_URL (CI sets it)")
def test_a_stream_on_another_instance_is_watched_through_redis(pair, live_db, alice, slow_model):
    model, tokens = slow_model
    a, b = pair
    carol = signed_in(b.url, auditor("carol", may_watch=True))
    progress, thread = started_stream(a, alice, model)

    events = watch(carol, progress.stream_id)
    thread.join(20)

    assert "".join(data for _, name, data in events if name == "text") == "".join(tokens)
    assert events[-1][1] == "end"
    assert wait_for_audit(progress.stream_id).resumes == 0
    assert notes(progress.stream_id, "watch")[0].actor == "carol"
    carol.close()

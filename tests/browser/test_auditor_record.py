"""An auditor in a real browser: watches a stream live, then reads its record.

Carol is an auditor granted ``audit.watch_stream``. Alice's app asks a
tool-using question on a slow route, drops its connection after a few events
and resumes. Carol watches the stream in flight from the admin and sees the
text arrive, then reads the record: the conversation, the attempt, and the
two connections that together got everything. Screenshots go to test-output/
(the ones in docs/ are taken from there).
"""

from __future__ import annotations

import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.browser.conftest import CHROMIUM, logged_in_page, shot
from tests.conftest import unique, wait_for_audit
from tests.streams.clients import Progress, read_sse, resume_sse

pytestmark = [pytest.mark.timeout(120), pytest.mark.django_db(transaction=True)]

if not os.path.exists(CHROMIUM):
    pytest.skip(f"no browser at {CHROMIUM} (make browser installs it)", allow_module_level=True)

PASSWORD = "s3cret-pass-carol"
ANSWER = (
    "Oslo is cold today: minus three degrees with light snow from the north. "
    "I found two hotels near the harbour with rooms free tonight, and booked "
    "the quieter one, which has a sauna and breakfast from six. Pack boots, "
    "a warm hat and gloves; the trams run every ten minutes until midnight."
)
MESSAGES = [
    {"role": "system", "content": "You are a travel agent. Be brief."},
    {"role": "user", "content": "What is the weather in Oslo? <b>Book me a hotel.</b>"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_w1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "c"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_w1", "content": '{"temp": -3, "sky": "snow"}'},
]


def wait_for_connections(request_id: str, count: int, timeout: float = 20.0) -> None:
    """Wait until ``count`` client connections are on the record or in its notes, and
    the watch is noted: a connection the gateway saw end after the stream did (its
    drop noticed late on a busy machine) is a note written a moment after the record."""
    from audit.models import AuditNote, AuditRecord

    deadline = time.monotonic() + timeout
    while True:
        record = AuditRecord.objects.get(request_id=request_id)
        notes = AuditNote.objects.filter(request_id=request_id)
        connections = len(record.deliveries or []) + notes.filter(kind="delivery").count()
        if connections >= count and notes.filter(kind="watch").exists():
            return
        assert time.monotonic() < deadline, (record.deliveries, list(notes.values()))
        time.sleep(0.1)


def off_loop(fn: Any, *args: Any) -> Any:
    """Run ORM code outside Playwright's event loop (Django refuses queries in it)."""

    def run() -> Any:
        from django.db import connections

        try:
            return fn(*args)
        finally:
            connections.close_all()  # this thread's own connection

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


@pytest.fixture
def carol(live_db: None) -> tuple[str, str]:
    from django.contrib.auth.models import Group, Permission, User

    user = User.objects.create_user("carol", password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name="auditors"))
    user.user_permissions.add(Permission.objects.get(codename="watch_stream"))
    return "carol", PASSWORD


@pytest.fixture
def slow_model(upstream, make_route) -> str:
    upstream_model = unique("travel")
    upstream.script(upstream_model, text=ANSWER, delay=0.1)
    return make_route(("openai", upstream.base_url, upstream_model))


def drop_and_resume(base: str, headers: dict[str, str], model: str, progress: Progress) -> None:
    """Read 6 events, hang up, come back a moment later and read the rest."""
    body = {"model": model, "stream": True, "messages": MESSAGES}
    with httpx.stream(
        "POST", f"{base}/v1/chat/completions", headers=headers, json=body, timeout=20
    ) as response:
        progress.stream_id = response.headers["x-sluice-stream-id"]
        read_sse(response, progress, 6)
    time.sleep(1.0)
    resume_sse(base, headers, progress)


def test_auditor_watches_a_stream_live_then_reads_its_record(
    gateway, alice, slow_model, carol, browser
):
    progress = Progress()
    client = threading.Thread(
        target=drop_and_resume, args=(gateway.url, alice.headers, slow_model, progress)
    )
    client.start()
    deadline = time.monotonic() + 10
    while not progress.stream_id and time.monotonic() < deadline:
        time.sleep(0.01)

    page = logged_in_page(browser, gateway, carol)
    page.goto(f"{gateway.url}/admin/sluice/tail/{progress.stream_id}/")
    page.wait_for_function("document.getElementById('tail-text').textContent.length > 20")
    seen = len(page.text_content("#tail-text") or "")
    page.wait_for_function(
        f"document.getElementById('tail-text').textContent.length > {seen + 40}"
    )  # it keeps arriving
    assert page.text_content("#tail-status") == "Live"
    shot(page, "audit-live-tail")
    page.wait_for_function(
        "document.getElementById('tail-status').textContent.startsWith('Ended')", timeout=30_000
    )
    assert page.text_content("#tail-status") == "Ended: completed"
    assert (page.text_content("#tail-text") or "").split() == ANSWER.split()
    assert page.text_content("#tail-end") == "Finish reason: stop"
    client.join(30)
    assert progress.done and progress.content.split() == ANSWER.split()

    record = off_loop(wait_for_audit, progress.stream_id)
    off_loop(wait_for_connections, progress.stream_id, 2)
    page.goto(f"{gateway.url}/admin/audit/auditrecord/{record.pk}/change/")
    body = page.text_content("#content") or ""
    for piece in (
        "You are a travel agent.",
        "What is the weather in Oslo? <b>Book me a hotel.</b>",  # as text, not markup
        "tool call get_weather (call_w1)",
        "tool result for call_w1",
        "client went away",
        "event 6",
        "read to the end",
        "carol",
    ):
        assert piece in body, (piece, body[-2500:])
    # The dropped connection was delivered at least the 6 events it read (one more
    # may have been written before the gateway saw it go).
    assert re.search(r"\b([6-9]|\d\d) of \d+", body), body[-2500:]
    assert page.locator(".audit-turn b").count() == 0
    shot(page, "audit-record")

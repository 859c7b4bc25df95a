"""The record page: the conversation, the attempt chain in ms, the deliveries, escaped."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from html import unescape

import httpx
import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from audit.models import AuditNote, AuditRecord
from audit.services import audit_note_add, audit_record_write
from tests.audit.conftest import auditor_client, make_attempt, make_entry
from tests.conftest import unique, wait_for_audit

pytestmark = pytest.mark.django_db

HOSTILE = '<script>alert("pwned")</script><img src=x onerror=alert(1)>'
STARTED = datetime(2026, 3, 1, 9, 30, 15, tzinfo=UTC).timestamp()


def _page(client: Client, record: AuditRecord) -> str:
    response = client.get(reverse("admin:audit_auditrecord_change", args=[record.pk]))
    assert response.status_code == 200
    return response.content.decode()


def _text(html: str) -> str:
    """The page's text as a reader sees it."""
    return unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)))


@pytest.fixture
def alice() -> Client:
    """Alice is an auditor: staff, in the auditors group."""
    return auditor_client("alice")


@pytest.fixture
def tool_record() -> AuditRecord:
    """A tool-using conversation, answered on the second attempt, read by two connections."""
    messages = [
        {"role": "system", "content": "You are a travel agent."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather in Oslo? " + HOSTILE},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_w1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo","unit":"c"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_w1", "content": "-3 C, snow"},
    ]
    deliveries = [
        {
            "transport": "sse",
            "actor": "alice-notes",
            "connected_at": STARTED + 0.01,
            "resumed": False,
            "from": None,
            "events": 7,
            "last_seq": 7,
            "ended_at": STARTED + 0.5,
            "ended": "client_gone",
            "generated": 20,
        },
        {
            "transport": "ws",
            "actor": "alice-notes",
            "connected_at": STARTED + 0.8,
            "resumed": True,
            "from": 7,
            "events": 13,
            "last_seq": 20,
            "ended_at": STARTED + 2.0,
            "ended": "completed",
            "generated": 20,
        },
    ]
    return audit_record_write(
        entry=make_entry(
            "chatcmpl-weather",
            started_at=STARTED,
            ended_at=STARTED + 2.5,
            request_messages=messages,
            response_text="It is -3 C and snowing in Oslo.",
            tool_calls=[
                {
                    "id": "call_b2",
                    "type": "function",
                    "function": {"name": "book_hotel", "arguments": '{"city":"Oslo"}'},
                }
            ],
            finish_reason="tool_calls",
            resumes=1,
            deliveries=deliveries,
            attempts=[
                make_attempt(
                    "anthropic",
                    started_at=STARTED + 0.002,
                    ended_at=STARTED + 0.0455,
                    outcome="failed",
                    status_code=529,
                    error_class="overloaded",
                    error_message=HOSTILE,
                ),
                make_attempt(
                    "openai",
                    started_at=STARTED + 0.05,
                    first_token_at=STARTED + 0.35,
                    ended_at=STARTED + 2.45,
                    tokens=12,
                ),
            ],
        )
    )


def test_the_conversation_reads_in_order_with_tool_calls_and_results(alice, tool_record):
    text = _text(_page(alice, tool_record))

    order = [
        "system",
        "You are a travel agent.",
        "user",
        "Weather in Oslo?",
        "[image: image/png, ",
        "tool call get_weather (call_w1)",
        '"city": "Oslo"',
        "tool result for call_w1",
        "-3 C, snow",
        "assistant",
        "It is -3 C and snowing in Oslo.",
        "tool call book_hotel (call_b2)",
        "finish reason",
        "tool_calls",
    ]
    at = text.index("Conversation")
    for piece in order:  # each after the one before
        at = text.find(piece, at)
        assert at >= 0, piece
    assert "base64" not in text  # an image is named, not inlined


def test_attempts_show_offsets_first_token_and_duration_in_ms(alice, tool_record):
    text = _text(_page(alice, tool_record))

    # The failed attempt: 2.0 ms after the request, 43.5 ms long, its error.
    assert " 2.0 ms " in text and " 44 ms " in text and "overloaded" in text
    # The one that answered: 50 ms in, first token 300 ms later, 2,400 ms long.
    assert " 50 ms " in text and " 300 ms " in text and " 2,400 ms " in text
    assert "start (after request)" in text.lower()


def test_ttft_and_duration_read_in_whole_ms_with_one_decimal_under_10(alice):
    slow = audit_record_write(
        entry=make_entry("chatcmpl-slow", ttft_ms=123.456789, duration_ms=2345.6789)
    )
    quick = audit_record_write(entry=make_entry("chatcmpl-quick", ttft_ms=7.26, duration_ms=9.94))

    slow_text, quick_text = _text(_page(alice, slow)), _text(_page(alice, quick))

    assert "TTFT: 123 ms Duration: 2,346 ms" in slow_text
    assert "123.4" not in slow_text and "2345.6" not in slow_text
    assert "TTFT: 7.3 ms Duration: 9.9 ms" in quick_text


def test_deliveries_say_what_each_connection_got_of_what_was_generated(alice, tool_record):
    audit_note_add(
        request_id=tool_record.request_id,
        kind="delivery",
        actor="alice-notes",
        at=STARTED + 60,
        detail={
            "transport": "ndjson",
            "resumed": True,
            "from": 15,
            "events": 5,
            "last_seq": 20,
            "ended": "completed",
            "generated": 20,
        },
    )
    audit_note_add(
        request_id=tool_record.request_id,
        kind="watch",
        actor="carol",
        at=STARTED + 1.0,
        detail={"running": True},
    )

    text = _text(_page(alice, tool_record))

    assert "7 of 20" in text and "client went away" in text
    assert "13 of 20" in text and "event 7" in text and "read to the end" in text
    assert "5 of 20" in text and "event 15" in text and "note" in text
    assert "carol" in text and "running, 1,000 ms in" in text
    assert AuditNote.objects.filter(request_id=tool_record.request_id).count() == 2


def test_hostile_html_in_prompts_and_errors_is_shown_as_text(alice, tool_record):
    html = _page(alice, tool_record)

    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_hostile_html_in_deliveries_and_notes_is_escaped(alice):
    record = audit_record_write(
        entry=make_entry(
            "chatcmpl-odd",
            deliveries=[{"transport": HOSTILE, "events": 1, "ended": HOSTILE}],
        )
    )
    audit_note_add(
        request_id=record.request_id, kind="watch", actor=HOSTILE, at=time.time(), detail={}
    )

    html = _page(alice, record)

    assert "<script>alert" not in html and "<img src=x" not in html


def test_staff_without_view_permission_get_403(tool_record):
    client = Client()
    client.force_login(User.objects.create_user("dave", password="x", is_staff=True))

    response = client.get(reverse("admin:audit_auditrecord_change", args=[tool_record.pk]))

    assert response.status_code == 403


def test_watch_live_is_offered_only_with_the_permission_while_in_progress(alice, tool_record):
    AuditRecord.objects.filter(pk=tool_record.pk).update(outcome="in_progress")
    tail = reverse("sluice:tail", args=[tool_record.request_id])
    assert tail not in _page(alice, tool_record)  # auditors do not have watch_stream

    user = User.objects.get(username="alice")
    user.user_permissions.add(Permission.objects.get(codename="watch_stream"))
    assert tail in _page(alice, tool_record)

    AuditRecord.objects.filter(pk=tool_record.pk).update(outcome="completed")
    assert tail not in _page(alice, tool_record)  # its stream does not run


WEATHER_CALL = {"city": "Oslo"}


def _conversation_of(client: Client, request_id: str) -> str:
    text = _text(_page(client, wait_for_audit(request_id)))
    return text[text.index("Conversation") :]


def _in_order(text: str, pieces: list[str]) -> None:
    at = 0
    for piece in pieces:
        at = text.find(piece, at)
        assert at >= 0, (piece, text[:3000])


@pytest.mark.django_db(transaction=True)
def test_a_messages_request_reads_as_the_same_conversation(
    gateway, make_actor, upstream, make_route
):
    upstream.script(upstream_model := unique("msgs"), text="Snow, minus three.")
    model = make_route(("openai", upstream.base_url, upstream_model))
    auditor = auditor_client("audrey")
    app = make_actor("alice")
    body = {
        "model": model,
        "max_tokens": 64,
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": WEATHER_CALL,
                    },
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "-3 C"}],
            },
        ],
    }
    response = httpx.post(f"{gateway.url}/v1/messages", headers=app.headers, json=body, timeout=20)
    assert response.status_code == 200, response.text

    text = _conversation_of(auditor, response.json()["id"])

    _in_order(
        text,
        [
            "system", "Be brief.",
            "user", "Weather in Oslo?",
            "assistant", "Checking.",
            "tool call get_weather (toolu_1)", '"city": "Oslo"',
            "tool result for toolu_1", "-3 C",
            "assistant", "Snow, minus three.",
            "finish reason",
        ],
    )  # fmt: skip


@pytest.mark.django_db(transaction=True)
def test_a_responses_request_reads_as_the_same_conversation(
    gateway, make_actor, upstream, make_route
):
    upstream.script(upstream_model := unique("resp"), text="Snow, minus three.")
    model = make_route(("openai", upstream.base_url, upstream_model))
    auditor = auditor_client("audrey")
    app = make_actor("alice")
    body = {
        "model": model,
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "type": "function_call",
                "call_id": "call_9",
                "name": "get_weather",
                "arguments": '{"city": "Oslo"}',
            },
            {"type": "function_call_output", "call_id": "call_9", "output": "-3 C"},
        ],
    }
    response = httpx.post(f"{gateway.url}/v1/responses", headers=app.headers, json=body, timeout=20)
    assert response.status_code == 200, response.text

    text = _conversation_of(auditor, response.json()["id"])

    _in_order(
        text,
        [
            "system", "Be brief.",
            "user", "Weather in Oslo?",
            "tool call get_weather (call_9)", '"city": "Oslo"',
            "tool result for call_9", "-3 C",
            "assistant", "Snow, minus three.",
        ],
    )  # fmt: skip

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from audit.models import AuditRecord
from audit.services import audit_record_write
from tests.audit.conftest import auditor_client, make_attempt, make_entry

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:audit_auditrecord_changelist")


@pytest.fixture
def record() -> AuditRecord:
    return audit_record_write(
        entry=make_entry(
            "chatcmpl-river",
            request_messages=[
                {"role": "system", "content": "Answer briefly."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Longest river <b>in</b> Europe?"}],
                },
            ],
            response_text="The Volga.",
            tool_calls=[{"id": "call_1", "function": {"name": "atlas_lookup", "arguments": "{}"}}],
            attempts=[
                make_attempt("anthropic", outcome="failed", status_code=529),
                make_attempt("openai", tokens=3),
            ],
        )
    )


@pytest.fixture
def other_record() -> AuditRecord:
    return audit_record_write(
        entry=make_entry(
            "chatcmpl-broken",
            app_name="bob-bot",
            outcome="upstream_error",
            response_text="Half an answ",
            error_class="UpstreamTimeout",
        )
    )


@pytest.fixture
def alice() -> Client:
    """Alice is an auditor: staff, in the auditors group."""
    return auditor_client("alice")


@pytest.fixture
def bob() -> Client:
    """Bob is staff without audit rights."""
    client = Client()
    client.force_login(User.objects.create_user("bob", password="x", is_staff=True))
    return client


def _change_url(record: AuditRecord) -> str:
    return reverse("admin:audit_auditrecord_change", args=[record.pk])


def test_auditor_lists_records(alice: Client, record: AuditRecord) -> None:
    response = alice.get(CHANGELIST)
    assert response.status_code == 200
    assert "alice-notes" in response.content.decode()


def test_auditor_reads_the_transcript_and_fallback_chain(
    alice: Client, record: AuditRecord
) -> None:
    response = alice.get(_change_url(record))
    page = response.content.decode()

    assert response.status_code == 200
    assert "Answer briefly." in page
    assert "Longest river &lt;b&gt;in&lt;/b&gt; Europe?" in page
    assert "The Volga." in page
    assert "atlas_lookup" in page
    assert page.index("Answer briefly.") < page.index("The Volga.")
    assert page.index("anthropic-model") < page.index("openai-model")
    assert 'name="_save"' not in page


def test_auditor_cannot_add_change_or_delete(alice: Client, record: AuditRecord) -> None:
    assert alice.get(reverse("admin:audit_auditrecord_add")).status_code == 403
    assert alice.post(_change_url(record), {"outcome": "completed"}).status_code == 403
    delete_url = reverse("admin:audit_auditrecord_delete", args=[record.pk])
    assert alice.post(delete_url, {"post": "yes"}).status_code == 403
    assert AuditRecord.objects.filter(pk=record.pk).exists()


def test_even_a_superuser_cannot_edit(record: AuditRecord) -> None:
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="x"))
    assert client.get(_change_url(record)).status_code == 200
    assert client.get(reverse("admin:audit_auditrecord_add")).status_code == 403
    assert client.post(_change_url(record), {"outcome": "completed"}).status_code == 403


def test_staff_without_audit_rights_sees_nothing(bob: Client, record: AuditRecord) -> None:
    assert bob.get(CHANGELIST).status_code == 403
    assert bob.get(_change_url(record)).status_code == 403


def test_search_finds_response_text(
    alice: Client, record: AuditRecord, other_record: AuditRecord
) -> None:
    page = alice.get(CHANGELIST, {"q": "Volga"}).content.decode()
    assert _change_url(record) in page
    assert _change_url(other_record) not in page


def test_filter_by_outcome(alice: Client, record: AuditRecord, other_record: AuditRecord) -> None:
    page = alice.get(CHANGELIST, {"outcome__exact": "upstream_error"}).content.decode()
    assert _change_url(other_record) in page
    assert _change_url(record) not in page


def test_lists_show_times_to_the_second_and_durations_in_ms(alice):
    from datetime import UTC, datetime

    started = datetime(2026, 3, 1, 9, 30, 15, 250000, tzinfo=UTC).timestamp()
    record = audit_record_write(
        entry=make_entry(
            "chatcmpl-timed",
            started_at=started,
            ended_at=started + 2.5,
            duration_ms=2500.0,
            ttft_ms=212.4,
            attempts=[
                make_attempt(
                    "openai",
                    started_at=started,
                    first_token_at=started + 0.2,
                    ended_at=started + 2.4,
                )
            ],
        )
    )

    listing = alice.get(CHANGELIST).content.decode()
    assert "2026-03-01 09:30:15<" in listing
    assert ">2,500<" in listing and ">212<" in listing

    page = alice.get(reverse("admin:audit_auditrecord_change", args=[record.pk])).content.decode()
    assert "2026-03-01 09:30:15" in page
    assert ">2026-03-01 09:30:17<" in page  # the record's end, as the changelist shows times
    assert "a.m." not in page
    assert ">200 ms<" in page  # first token, after the attempt began
    assert ">2,400 ms<" in page  # the attempt's duration
    assert ">212 ms<" in page and ">2,500 ms<" in page  # the record's TTFT and duration

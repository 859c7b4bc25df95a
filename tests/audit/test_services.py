from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from oauth2_provider.models import Application

from audit.models import AuditRecord
from audit.selectors import RecordFilters, audit_record_filter
from audit.services import (
    audit_record_get,
    audit_record_write,
    audit_records_write,
    auditors_group_ensure,
)
from tests.audit.conftest import make_attempt, make_entry

pytestmark = pytest.mark.django_db


def test_write_stores_entry_with_attempts_in_order() -> None:
    entry = make_entry(
        "chatcmpl-1",
        outcome="completed",
        continued=True,
        attempts=[
            make_attempt("anthropic", outcome="failed", status_code=529, error_class="Overloaded"),
            make_attempt("openai", tokens=3, continuation=True),
        ],
    )
    record = audit_record_write(entry=entry)

    assert record.response_text == "The Danube."
    assert record.usage["total_tokens"] == 8
    assert record.duration_ms == pytest.approx(2000, abs=5)
    assert record.started_at.tzinfo is not None
    attempts = list(record.attempts.all())
    assert [(a.index, a.provider, a.outcome) for a in attempts] == [
        (0, "anthropic", "failed"),
        (1, "openai", "ok"),
    ]
    assert attempts[1].continuation is True


def test_second_entry_for_a_request_replaces_the_record() -> None:
    audit_record_write(
        entry=make_entry("chatcmpl-2", outcome="client_disconnected", attempts=[make_attempt("a")])
    )
    audit_record_write(
        entry=make_entry(
            "chatcmpl-2",
            outcome="completed",
            resumes=1,
            attempts=[make_attempt("a"), make_attempt("b")],
        )
    )

    record = AuditRecord.objects.get(request_id="chatcmpl-2")
    assert (record.outcome, record.resumes) == ("completed", 1)
    assert [a.provider for a in record.attempts.all()] == ["a", "b"]


def test_later_entry_without_attempts_keeps_the_stored_ones() -> None:
    audit_record_write(entry=make_entry("chatcmpl-3", attempts=[make_attempt("a")]))
    audit_record_write(entry=make_entry("chatcmpl-3", outcome="abandoned"))

    record = AuditRecord.objects.get(request_id="chatcmpl-3")
    assert record.outcome == "abandoned"
    assert record.attempts.count() == 1


def test_batch_handles_repeats_within_and_across_batches() -> None:
    audit_record_write(entry=make_entry("old", outcome="client_disconnected"))
    audit_records_write(
        entries=[
            make_entry("new", attempts=[make_attempt("a")]),
            make_entry("old", outcome="completed", resumes=2),
            make_entry("new", outcome="cancelled", attempts=[make_attempt("b")]),
        ]
    )

    assert AuditRecord.objects.count() == 2
    old, new = AuditRecord.objects.get(request_id="old"), AuditRecord.objects.get(request_id="new")
    assert (old.outcome, old.resumes) == ("completed", 2)
    assert new.outcome == "cancelled"
    assert [a.provider for a in new.attempts.all()] == ["b"]


def test_batch_of_new_entries_costs_a_fixed_number_of_queries(
    django_assert_max_num_queries,
) -> None:
    entries = [make_entry(f"bulk-{i}", attempts=[make_attempt("a")]) for i in range(50)]
    # 6 to store, 5 to seal (read back records and attempts, lock the head,
    # insert the links, move the head): whatever the batch's size.
    with django_assert_max_num_queries(11):
        audit_records_write(entries=entries)
    assert AuditRecord.objects.filter(request_id__startswith="bulk-").count() == 50


def test_batch_falls_back_to_one_by_one_without_bulk_returning(monkeypatch) -> None:
    monkeypatch.setattr(type(connection.features), "can_return_rows_from_bulk_insert", False)
    audit_records_write(
        entries=[make_entry(f"r{i}", attempts=[make_attempt("a")]) for i in range(3)]
    )
    assert AuditRecord.objects.filter(attempts__provider="a").count() == 3


def test_deleted_app_keeps_its_name_but_not_the_link() -> None:
    app = Application.objects.create(
        name="alice-notes",
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
    )
    gone_id = app.pk + 1000
    audit_records_write(
        entries=[
            make_entry("live", app_id=app.pk, app_name="alice-notes"),
            make_entry("gone", app_id=gone_id, app_name="bob-old-app"),
        ]
    )

    assert AuditRecord.objects.get(request_id="live").app == app
    gone = AuditRecord.objects.get(request_id="gone")
    assert (gone.app_id, gone.app_name) == (None, "bob-old-app")
    app.delete()
    assert AuditRecord.objects.get(request_id="live").app_id is None


def test_over_long_values_are_clipped_not_rejected() -> None:
    record = audit_record_write(
        entry=make_entry("long", error_class="E" * 500, finish_reason="x" * 100)
    )
    assert len(record.error_class) == 200
    assert len(record.finish_reason) == 64


def test_selectors() -> None:
    audit_record_write(entry=make_entry("a1", outcome="completed"))
    audit_record_write(entry=make_entry("a2", outcome="upstream_error"))

    assert audit_record_get(request_id="a2").outcome == "upstream_error"
    assert audit_record_get(request_id="missing") is None
    failed = audit_record_filter(filters=RecordFilters(outcome="upstream_error"))
    assert [r.request_id for r in failed] == ["a2"]


def test_auditors_group_is_ensured_idempotently() -> None:
    auditors_group_ensure()
    group = auditors_group_ensure()

    assert Group.objects.filter(name="auditors").count() == 1
    assert set(group.permissions.values_list("codename", flat=True)) == {
        "view_auditrecord",
        "view_upstreamattempt",
    }


def test_a_write_ahead_and_its_final_entry_in_one_batch_cost_one_insert(
    django_assert_max_num_queries,
) -> None:
    final = make_entry("chatcmpl-wa", attempts=[make_attempt("a")])
    ahead = make_entry("chatcmpl-wa", outcome="in_progress", response_text="", ended_at=None)
    # 6 to store, 5 to seal the final record into the chain (audit.chain).
    with django_assert_max_num_queries(11) as captured:
        audit_records_write(entries=[ahead, final, ahead])  # a late duplicate too

    stored = ("audit_auditrecord", "audit_upstreamattempt")
    inserts = [
        q
        for q in captured.captured_queries
        if "INSERT" in q["sql"] and any(t in q["sql"] for t in stored)
    ]
    assert len(inserts) == 2  # the record and its attempts, once
    record = AuditRecord.objects.get(request_id="chatcmpl-wa")
    assert (record.outcome, record.attempts.count()) == ("completed", 1)


def test_a_final_entry_completes_its_write_ahead_and_a_replay_changes_nothing(
    django_assert_max_num_queries,
) -> None:
    final = make_entry("chatcmpl-fin", attempts=[make_attempt("a")], instance="gw-1")
    ahead = make_entry("chatcmpl-fin", outcome="in_progress", response_text="", ended_at=None)
    audit_records_write(entries=[ahead])
    assert AuditRecord.objects.get(request_id="chatcmpl-fin").outcome == "in_progress"

    audit_records_write(entries=[final])
    record = AuditRecord.objects.get(request_id="chatcmpl-fin")
    assert (record.outcome, record.instance, record.attempts.count()) == ("completed", "gw-1", 1)

    with django_assert_max_num_queries(8) as captured:
        audit_records_write(entries=[final])  # replayed: identical
        audit_records_write(entries=[ahead])  # late: never over a final record
    writes = [
        q
        for q in captured.captured_queries
        if any(w in q["sql"] for w in ("INSERT", "UPDATE", "DELETE"))
    ]
    assert writes == []
    assert AuditRecord.objects.get(request_id="chatcmpl-fin").response_text == "The Danube."

"""Retention: per-app days and the default; prune erases only what expired, chain intact."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.core.management import call_command
from django.test import override_settings

from accounts.models import AppPolicy
from accounts.services import app_delete, app_ensure
from audit.models import AuditRecord, ChainCheckpoint, ChainLink
from audit.retention import audit_prune
from audit.services import audit_records_write
from audit.verify import chain_verify
from tests.audit.conftest import make_attempt, make_entry

pytestmark = pytest.mark.django_db
DAY = 86400


def app_with_retention(name: str, days: int | None) -> Any:
    app, _ = app_ensure(name=name, scopes=["chat"])
    policy = AppPolicy.of(app)
    policy.audit_retention_days = days
    policy.full_clean()
    policy.save()
    return app


def record(request_id: str, app: Any | None, age_days: float) -> None:
    started = time.time() - age_days * DAY
    audit_records_write(
        entries=[
            make_entry(
                request_id,
                app_id=app.pk if app else None,
                app_name=app.name if app else "gone",
                started_at=started,
                ended_at=started + 1,
                attempts=[make_attempt("openai")],
            )
        ]
    )


def stored() -> set[str]:
    return set(AuditRecord.objects.values_list("request_id", flat=True))


@override_settings(SLUICE_AUDIT_RETENTION_DAYS=30)
def test_each_app_keeps_its_own_days_others_the_default() -> None:
    alice = app_with_retention("alice-ret", 7)  # short
    bob = app_with_retention("bob-ret", 90)  # longer than the default
    carol = app_with_retention("carol-ret", None)  # the default
    record("a-new", alice, 6)
    record("a-old", alice, 8)
    record("b-mid", bob, 60)
    record("b-old", bob, 91)
    record("c-mid", carol, 29)
    record("c-old", carol, 31)
    record("none-old", None, 31)  # an app deleted long ago: the default
    record("none-new", None, 1)

    dry = audit_prune(dry_run=True)
    assert dry.erased == {"app alice-ret": 1, "app bob-ret": 1, "default": 2}
    assert "would erase 4 records" in dry.summary()
    assert len(stored()) == 8  # a dry run deletes nothing

    report = audit_prune()
    assert report.total == 4
    assert stored() == {"a-new", "b-mid", "c-mid", "none-new"}
    assert chain_verify(using="default").ok, chain_verify(using="default").summary()


@override_settings(SLUICE_AUDIT_RETENTION_DAYS=30)
def test_a_deleted_apps_records_use_the_default() -> None:
    dora = app_with_retention("dora-ret", 365)
    record("d-old", dora, 40)
    app_delete(name="dora-ret")  # the record's app goes null: the default applies
    assert audit_prune().total == 1
    assert stored() == set()


@override_settings(SLUICE_AUDIT_RETENTION_DAYS=10)
def test_prune_compacts_the_chain_behind_a_signed_anchor() -> None:
    for i in range(4):
        record(f"old-{i}", None, 20)
    record("kept", None, 1)
    for i in range(2):
        record(f"old-late-{i}", None, 20)  # sealed after the kept one: stay linked
    report = audit_prune()
    assert report.total == 6
    anchor = ChainCheckpoint.objects.get(kind="anchor")
    # Links 1-4 (the first four records) went; the kept record's link (5) is the first left.
    assert anchor.seq == 4
    assert min(ChainLink.objects.values_list("seq", flat=True)) == 5
    result = chain_verify(using="default")
    assert result.ok, result.summary()
    assert result.start_seq == 4 and result.records == 1


@override_settings(SLUICE_AUDIT_RETENTION_DAYS=10)
def test_prune_command_and_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    record("cmd-old", None, 11)
    record("cmd-new", None, 9)
    call_command("sluice_audit", "prune", "--dry-run")
    assert "would erase 1 records (default: 1)" in capsys.readouterr().out
    assert stored() == {"cmd-old", "cmd-new"}
    call_command("sluice_audit", "prune")
    assert "erased 1 records (default: 1)" in capsys.readouterr().out
    assert stored() == {"cmd-new"}
    call_command("sluice_audit", "verify")
    assert "audit chain intact" in capsys.readouterr().out


def test_erase_command_erases_named_records_and_the_chain_verifies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from django.core.management.base import CommandError

    for request_id in ("dsr-1", "dsr-2", "dsr-keep"):
        record(request_id, None, 1)
    call_command("sluice_audit", "erase", "dsr-1", "dsr-2", "dsr-1")
    assert "2 of 2 audit record(s) erased" in capsys.readouterr().out
    assert stored() == {"dsr-keep"}
    call_command("sluice_audit", "verify")
    assert "audit chain intact" in capsys.readouterr().out
    # A request id with no record is an error (exit 1), not a silent success.
    with pytest.raises(CommandError) as refused:
        call_command("sluice_audit", "erase", "dsr-keep", "dsr-typo")
    assert refused.value.returncode == 1 and "1 not found" in str(refused.value)
    assert stored() == set()


def test_retention_days_must_be_positive() -> None:
    from django.core.exceptions import ValidationError

    app, _ = app_ensure(name="eve-ret", scopes=["chat"])
    policy = AppPolicy.of(app)
    policy.audit_retention_days = 0
    with pytest.raises(ValidationError) as error:
        policy.full_clean()
    assert "audit_retention_days" in error.value.message_dict

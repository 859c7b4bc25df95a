"""Tamper evidence: records sealed on write, and `sluice_audit verify` names what was changed."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from audit.chain import record_fields
from audit.checkpoints import checkpoint_write
from audit.models import AuditRecord, ChainCheckpoint, ChainLink, UpstreamAttempt
from audit.services import audit_record_write, audit_records_write
from tests.audit.conftest import make_attempt, make_entry
from tests.live import server_env

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


def verify(*args: str) -> str:
    """Run ``sluice_audit verify``; its summary, or the CommandError's text (exit 1)."""
    try:
        call_command("sluice_audit", "verify", *args, stdout=(out := _Out()))
    except CommandError as error:
        assert error.returncode == 1
        return f"BROKEN {error}"
    return out.text


class _Out:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def write_trail(count: int = 5) -> list[str]:
    ids = [f"chain-{i}" for i in range(count)]
    audit_records_write(
        entries=[
            make_entry(rid, response_text=f"answer {i}", attempts=[make_attempt("openai")])
            for i, rid in enumerate(ids)
        ]
    )
    return ids


def raw(sql: str, *params: object) -> None:
    """Tamper as someone with database access would: plain SQL, no model code."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def link_of(request_id: str) -> ChainLink:
    return ChainLink.objects.filter(request_id=request_id).order_by("-seq").first()  # type: ignore[return-value]


def test_final_records_are_sealed_in_order_and_verify() -> None:
    ids = write_trail(3)
    audit_records_write(entries=[make_entry("chain-live", outcome="in_progress")])

    links = list(ChainLink.objects.order_by("seq"))
    assert [(link.seq, link.request_id) for link in links] == [
        (1, ids[0]),
        (2, ids[1]),
        (3, ids[2]),
    ]
    assert "chain-live" not in {link.request_id for link in links}  # not final: not sealed
    assert verify().startswith("audit chain intact: 3 links from seq 1, 3 records")


def test_the_seal_covers_every_field_but_derived_ones() -> None:
    fields = set(record_fields())
    assert {"request_id", "response_text", "app_id", "cost_usd", "redactions"} <= fields
    assert "id" not in fields and "search_text" not in fields


def test_an_identical_rewrite_adds_nothing_a_changed_one_adds_a_link() -> None:
    entry = make_entry("chain-r", outcome="client_disconnected", attempts=[make_attempt("a")])
    audit_record_write(entry=entry)
    audit_records_write(entries=[entry])
    assert ChainLink.objects.filter(request_id="chain-r").count() == 1

    entry.outcome, entry.response_text = "completed", "The Danube, at last."
    audit_records_write(entries=[entry])
    assert ChainLink.objects.filter(request_id="chain-r").count() == 2
    assert verify().startswith("audit chain intact")


def test_an_in_progress_record_is_sealed_once_it_ends() -> None:
    audit_records_write(entries=[make_entry("chain-p", outcome="in_progress")])
    assert not ChainLink.objects.filter(request_id="chain-p").exists()
    audit_records_write(entries=[make_entry("chain-p", outcome="completed")])
    assert ChainLink.objects.filter(request_id="chain-p").count() == 1
    assert verify().startswith("audit chain intact")


def test_editing_a_record_is_named() -> None:
    ids = write_trail()
    raw("UPDATE audit_auditrecord SET response_text = %s WHERE request_id = %s", "forged", ids[2])
    result = verify()
    assert result.startswith("BROKEN")
    assert f"request {ids[2]} (seq 3): content edited" in result


def test_editing_an_attempt_is_named() -> None:
    ids = write_trail()
    record = AuditRecord.objects.get(request_id=ids[1])
    raw("UPDATE audit_upstreamattempt SET status_code = 200 WHERE record_id = %s", record.pk)
    assert f"request {ids[1]} (seq 2): content edited" in verify()


def test_deleting_an_attempt_is_named() -> None:
    ids = write_trail()
    UpstreamAttempt.objects.filter(record__request_id=ids[3]).delete()
    assert f"request {ids[3]} (seq 4): content edited" in verify()


def raw_delete(request_id: str) -> None:
    raw(
        "DELETE FROM audit_upstreamattempt WHERE record_id IN "
        "(SELECT id FROM audit_auditrecord WHERE request_id = %s)",
        request_id,
    )
    raw("DELETE FROM audit_auditrecord WHERE request_id = %s", request_id)


def test_deleting_a_record_is_named() -> None:
    ids = write_trail()
    raw_delete(ids[1])
    assert f"request {ids[1]} (seq 2): record deleted" in verify()


def test_inserting_a_record_behind_the_chain_is_named() -> None:
    write_trail(2)
    AuditRecord.objects.create(
        request_id="chain-forged",
        protocol="sse",
        public_model="m",
        outcome="completed",
        started_at=timezone.now(),
    )
    assert "request chain-forged (no link): record not in the chain" in verify()


def test_swapping_two_links_seq_is_named() -> None:
    ids = write_trail()
    raw("UPDATE audit_chainlink SET seq = -1 WHERE seq = 2")
    raw("UPDATE audit_chainlink SET seq = 2 WHERE seq = 4")
    raw("UPDATE audit_chainlink SET seq = 4 WHERE seq = -1")
    assert f"request {ids[3]} (seq 2): link altered or out of order" in verify()


def test_swapping_two_records_contents_is_named() -> None:
    ids = write_trail()
    raw("UPDATE audit_auditrecord SET response_text = %s WHERE request_id = %s", "answer 3", ids[1])
    raw("UPDATE audit_auditrecord SET response_text = %s WHERE request_id = %s", "answer 1", ids[3])
    assert f"request {ids[1]} (seq 2): content edited" in verify()


def test_deleting_a_link_is_named() -> None:
    ids = write_trail()
    raw("DELETE FROM audit_chainlink WHERE seq = 3")
    assert f"request {ids[3]} (seq 4): link 3 missing" in verify()


def test_a_rewritten_chain_does_not_pass_its_signed_checkpoint() -> None:
    """Someone who edits a record and recomputes every link still cannot re-sign."""
    from audit.chain import content_hashes, link_digest

    ids = write_trail()
    checkpoint_write(using="default")
    raw("UPDATE audit_auditrecord SET response_text = %s WHERE request_id = %s", "forged", ids[0])
    prev = "0" * 64
    for link in ChainLink.objects.order_by("seq"):
        content = content_hashes([link.request_id], using="default")[link.request_id]
        digest = link_digest(prev, link.seq, link.kind, link.request_id, content)
        raw(
            "UPDATE audit_chainlink SET content_hash = %s, digest = %s WHERE seq = %s",
            content,
            digest,
            link.seq,
        )
        prev = digest
    raw("UPDATE audit_chainhead SET digest = %s", prev)
    result = verify()
    assert f"request {ids[4]} (seq 5): chain rewritten" in result


def test_a_tampered_checkpoint_signature_is_named() -> None:
    write_trail()
    checkpoint = checkpoint_write(using="default")
    assert checkpoint is not None and "1 checkpoints verified" in verify()
    forged = base64.b64encode(b"\x01" * 64).decode()
    raw("UPDATE audit_chaincheckpoint SET signature = %s WHERE id = %s", forged, checkpoint.pk)
    assert "(seq 5): checkpoint signature bad" in verify()


def test_a_checkpoint_past_the_end_names_the_truncation() -> None:
    write_trail()
    checkpoint_write(using="default")
    raw("DELETE FROM audit_chainlink WHERE seq >= 4")
    raw("UPDATE audit_chainhead SET seq = 3")
    assert "links after seq 3 missing (checkpoint)" in verify()


def test_checkpoint_only_when_the_chain_grew() -> None:
    assert checkpoint_write(using="default") is None  # empty chain
    write_trail(2)
    assert checkpoint_write(using="default") is not None
    assert checkpoint_write(using="default") is None  # nothing new
    write_trail(3)
    assert checkpoint_write(using="default").seq == 5  # type: ignore[union-attr]


def test_since_starts_at_the_last_checkpoint_before_it() -> None:
    ids = write_trail(3)
    checkpoint_write(using="default")
    later = timezone.now() + timedelta(seconds=1)
    raw("UPDATE audit_auditrecord SET response_text = %s WHERE request_id = %s", "forged", ids[0])
    assert "content edited" in verify()
    # From the checkpoint on, only what came after it is walked (its signature trusted).
    assert verify("--since", later.isoformat()).startswith("audit chain intact: 0 links from seq 4")


def test_erasure_keeps_the_chain_verifiable_a_plain_delete_does_not() -> None:
    from audit.retention import audit_records_erase

    ids = write_trail()
    checkpoint_write(using="default")
    assert audit_records_erase(request_ids=[ids[1], "never-stored"]) == 1
    assert link_of(ids[1]).kind == "erasure"
    assert verify().startswith("audit chain intact: 6 links")
    raw_delete(ids[2])
    assert f"request {ids[2]} (seq 3): record deleted" in verify()


@pytest.mark.django_db(transaction=True)
def test_checkpoint_command_and_verify_exit_codes_as_a_subprocess() -> None:
    ids = write_trail(3)
    env = server_env()

    def manage(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", "sluice_audit", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    signed = manage("checkpoint")
    assert signed.returncode == 0, signed.stderr
    assert "audit checkpoint signed at seq 3" in signed.stdout
    intact = manage("verify")
    assert intact.returncode == 0, intact.stderr
    assert "audit chain intact: 3 links" in intact.stdout
    raw("UPDATE audit_auditrecord SET public_model = %s WHERE request_id = %s", "other", ids[0])
    broken = manage("verify")
    assert broken.returncode == 1
    assert f"request {ids[0]} (seq 1): content edited" in broken.stderr


@pytest.mark.timeout(90)
@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_keep_one_contiguous_chain() -> None:
    """Writers on their own connections (as gateway instances are) append in turn."""
    import threading

    from django.db import connections

    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for b in range(5):
                audit_records_write(entries=[make_entry(f"conc-{n}-{b}-{i}") for i in range(20)])
        except BaseException as error:
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    if connection.vendor == "sqlite" and errors:
        pytest.skip(f"SQLite refused a concurrent writer: {errors[0]}")
    assert not errors, errors
    assert list(ChainLink.objects.order_by("seq").values_list("seq", flat=True)) == list(
        range(1, 401)
    )
    assert "audit chain intact: 400 links" in verify()


@pytest.mark.timeout(120)
@pytest.mark.django_db(transaction=True)
def test_the_served_gateway_checkpoints_and_prunes_on_its_timers() -> None:
    from tests.live import GatewayServer

    old = time.time() - 40 * 86400
    audit_record_write(entry=make_entry("timer-old", started_at=old, ended_at=old + 1))
    audit_record_write(entry=make_entry("timer-new"))
    env = server_env(
        SLUICE_AUDIT_CHECKPOINT_SECONDS="0.5",
        SLUICE_AUDIT_PRUNE_SECONDS="0.5",
        SLUICE_AUDIT_RETENTION_DAYS="30",
    )
    server = GatewayServer(env=env).start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pruned = not AuditRecord.objects.filter(request_id="timer-old").exists()
            if pruned and ChainCheckpoint.objects.filter(kind="checkpoint").exists():
                break
            time.sleep(0.2)
    finally:
        server.stop()
    assert not AuditRecord.objects.filter(request_id="timer-old").exists()
    assert AuditRecord.objects.filter(request_id="timer-new").exists()
    assert ChainCheckpoint.objects.filter(kind="checkpoint").exists()
    assert "audit chain intact" in verify()


@pytest.mark.django_db(transaction=True)
def test_one_prune_at_a_time() -> None:
    import threading

    from django.db import connections

    from audit.maintenance import exclusive

    seen: list[bool] = []

    def other() -> None:
        with exclusive("default") as held:
            seen.append(held)
        connections.close_all()

    with exclusive("default") as held:
        thread = threading.Thread(target=other)
        thread.start()
        thread.join(10)
    assert held is True and seen == [False]
    other()
    assert seen == [False, True]


def test_records_from_before_the_chain_are_sealed_by_the_seal_command() -> None:
    from audit.models import ChainHead

    for n in range(3):
        AuditRecord.objects.create(
            request_id=f"legacy-{n}",
            protocol="sse",
            public_model="m",
            outcome="completed",
            started_at=timezone.now(),
        )
    last = AuditRecord.objects.order_by("-pk").first()
    assert last is not None
    # As migration 0006 leaves an existing trail: those records are not expected in the chain.
    ChainHead.objects.update_or_create(
        pk=1, defaults={"seq": 0, "digest": "0" * 64, "sealed_from_pk": last.pk + 1}
    )
    write_trail(1)
    assert "audit chain intact: 1 links" in verify()

    call_command("sluice_audit", "seal", stdout=(out := _Out()))
    assert "3 earlier records sealed" in out.text
    assert "audit chain intact: 4 links" in verify()
    raw("UPDATE audit_auditrecord SET public_model = 'x' WHERE request_id = %s", "legacy-1")
    assert "request legacy-1 (seq 3): content edited" in verify()


def test_the_signing_key_fails_closed_outside_dev_mode(tmp_path: Path) -> None:
    def check(**env: str) -> subprocess.CompletedProcess[str]:
        base = {k: v for k, v in server_env().items() if k != "SLUICE_AUDIT_SIGNING_KEY"}
        return subprocess.run(
            [sys.executable, "manage.py", "check"],
            cwd=ROOT,
            env={**base, "SLUICE_VAR_DIR": str(tmp_path), **env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    missing = check()
    assert missing.returncode != 0 and "SLUICE_AUDIT_SIGNING_KEY is not set" in missing.stderr
    # A dev-secrets file from before the key existed gets one added.
    (tmp_path / "dev-secrets.json").write_text('{"SECRET_KEY": "s" , "SLUICE_ENCRYPTION_KEY": "k"}')
    assert check(SLUICE_DEV="1").returncode == 0
    assert "SLUICE_AUDIT_SIGNING_KEY" in (tmp_path / "dev-secrets.json").read_text()
    assert '"SECRET_KEY": "s"' in (tmp_path / "dev-secrets.json").read_text()


def test_a_malformed_signing_key_is_a_clear_error() -> None:
    from django.core.exceptions import ImproperlyConfigured
    from django.test import override_settings

    from audit.checkpoints import signing_key

    signing_key.cache_clear()
    try:
        with (
            override_settings(SLUICE_AUDIT_SIGNING_KEY="c2hvcnQ="),
            pytest.raises(ImproperlyConfigured, match="base64 of 32 bytes"),
        ):
            signing_key()
    finally:
        signing_key.cache_clear()


def test_a_record_put_back_after_its_erasure_is_named() -> None:
    from audit.retention import audit_records_erase

    ids = write_trail(2)
    audit_records_erase(request_ids=[ids[0]])
    AuditRecord.objects.create(
        request_id=ids[0],
        protocol="sse",
        public_model="m",
        outcome="completed",
        started_at=timezone.now(),
    )
    assert f"request {ids[0]} (seq 3): record present after its erasure" in verify()


def test_hiding_an_edit_behind_an_appended_link_needs_the_key() -> None:
    """Someone with the database but not the key edits a sealed record and appends
    a link for its new content (as a legitimate replacement would): not signed."""
    from audit.chain import Pending, append_links, content_hashes

    ids = write_trail(3)
    raw("UPDATE audit_auditrecord SET response_text = 'forged' WHERE request_id = %s", ids[0])
    forged = content_hashes([ids[0]], using="default")[ids[0]]
    append_links([Pending("record", ids[0], forged)], using="default")
    assert f"request {ids[0]} (seq 4): record replaced without a signature" in verify()


def test_hiding_a_deletion_behind_an_erasure_needs_the_key() -> None:
    from audit.chain import Pending, append_links, erasure_hash

    ids = write_trail(3)
    raw_delete(ids[1])
    append_links([Pending("erasure", ids[1], erasure_hash(ids[1]))], using="default")
    assert f"request {ids[1]} (seq 4): erasure not signed" in verify()
    raw("UPDATE audit_chainlink SET signature = %s WHERE seq = 4", "0123456789abcdef:AAAA")
    assert f"request {ids[1]} (seq 4): link signature bad" in verify()


def test_a_legitimate_replacement_is_signed() -> None:
    entry = make_entry("chain-s", outcome="client_disconnected")
    audit_record_write(entry=entry)
    entry.outcome = "completed"
    audit_record_write(entry=entry)
    first, second = ChainLink.objects.filter(request_id="chain-s").order_by("seq")
    assert first.signature == "" and second.signature.count(":") == 1
    assert "audit chain intact: 2 links" in verify()

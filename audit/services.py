"""Writes and reads of the audit trail.

``audit_records_write`` is what the background writer calls for a batch;
``audit_record_write`` writes one entry synchronously (tests, fallbacks).
An entry for a request_id already stored replaces that record and, when it
carries attempts, its attempts: each entry is a full snapshot of the request.
A request's record is written ahead (outcome ``in_progress``) when it is
accepted and completed by its final entry; see ``audit_records_write``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import Group, Permission
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, router, transaction
from django.db.models import Model, QuerySet
from oauth2_provider.models import get_application_model

from audit.chain import seal_records
from audit.models import AuditNote, AuditRecord, Outcome, UpstreamAttempt
from audit.records import AttemptEntry, AuditEntry
from audit.redaction import redact_entry
from audit.search import search_text_of
from audit.storable import storable_json, storable_text

AUDITORS_GROUP = "auditors"
IN_PROGRESS = Outcome.IN_PROGRESS.value

logger = logging.getLogger(__name__)


def _when(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def _when_or_none(ts: float | None) -> datetime | None:
    return None if ts is None else _when(ts)


def _clip(model: type[AuditRecord] | type[UpstreamAttempt], name: str, value: str) -> str:
    # PostgreSQL rejects an over-long value and would fail the whole batch.
    limit = getattr(model._meta.get_field(name), "max_length", None)
    value = storable_text(value)
    return value[:limit] if limit else value


def _record_fields(entry: AuditEntry, known_apps: set[int]) -> dict[str, Any]:
    duration_ms = entry.duration_ms
    if duration_ms is None and entry.ended_at is not None:
        duration_ms = (entry.ended_at - entry.started_at) * 1000
    fields: dict[str, Any] = {
        "app_id": entry.app_id if entry.app_id in known_apps else None,
        "token_id": entry.token_id,
        "staff_user_id": entry.staff_user_id,
        "client_ip": entry.client_ip or None,
        "request_messages": storable_json(entry.request_messages),
        "request_params": storable_json(entry.request_params),
        "response_text": storable_text(entry.response_text),
        "tool_calls": storable_json(entry.tool_calls),
        "usage": storable_json(entry.usage),
        **_charged(entry),
        "ttft_ms": entry.ttft_ms,
        "duration_ms": duration_ms,
        "status_code": entry.status_code,
        "error_message": storable_text(entry.error_message),
        "resumes": entry.resumes,
        "redactions": entry.redactions,
        "deliveries": storable_json(entry.deliveries),
        "continued": entry.continued,
        "started_at": _when(entry.started_at),
        "ended_at": _when_or_none(entry.ended_at),
    }
    for name in (
        "app_name",
        "staff_username",
        "protocol",
        "public_model",
        "provider",
        "upstream_model",
        "finish_reason",
        "outcome",
        "error_class",
        "instance",
        "taken_over_by",
    ):
        fields[name] = _clip(AuditRecord, name, getattr(entry, name))
    # From the values as stored (escaped, redacted), never from the entry.
    fields["search_text"] = search_text_of(
        fields["request_messages"], fields["response_text"], fields["tool_calls"]
    )
    return fields


def _attempt_fields(index: int, a: AttemptEntry) -> dict[str, Any]:
    return {
        "index": index,
        "provider": _clip(UpstreamAttempt, "provider", a.provider),
        "upstream_model": _clip(UpstreamAttempt, "upstream_model", a.upstream_model),
        "started_at": _when(a.started_at),
        "first_token_at": _when_or_none(a.first_token_at),
        "ended_at": _when_or_none(a.ended_at),
        "status_code": a.status_code,
        "outcome": _clip(UpstreamAttempt, "outcome", a.outcome),
        "error_class": _clip(UpstreamAttempt, "error_class", a.error_class),
        "error_message": storable_text(a.error_message),
        "tokens": a.tokens,
        "continuation": a.continuation,
        **_charged(a),
    }


def _charged(item: AuditEntry | AttemptEntry) -> dict[str, Any]:
    return {
        "prompt_tokens": item.prompt_tokens,
        "completion_tokens": item.completion_tokens,
        "cached_tokens": item.cached_tokens,
        "reasoning_tokens": item.reasoning_tokens,
        "cost_usd": usd(item.cost_usd),
    }


def usd(amount: float) -> Decimal:
    """A cost as stored: a Decimal of 10 decimal places (a token can cost 1e-8 USD)."""
    return Decimal(f"{amount:.10f}")


def _insert_rows(model: type[Model], rows: list[dict[str, Any]], using: str) -> None:
    """Insert ``rows`` (field attname -> value; defaults for the rest) with one
    prepared statement.

    What bulk_create does, without building a model instance and compiling the
    SQL for every row and field: that cost about 370 µs of CPU per audit record,
    on the gateway's GIL. Values still go through each field's own conversion.
    """
    if not rows:
        return
    connection = connections[using]
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    quote = connection.ops.quote_name
    sql = "INSERT INTO {} ({}) VALUES ({})".format(
        quote(model._meta.db_table),
        ", ".join(quote(str(f.column)) for f in fields),
        ", ".join(["%s"] * len(fields)),
    )
    params = [
        [
            f.get_db_prep_save(row[f.attname] if f.attname in row else f.get_default(), connection)
            for f in fields
        ]
        for row in rows
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


def _known_apps(entries: Sequence[AuditEntry], using: str) -> set[int]:
    # An app deleted while its request ran would fail the batch on the foreign
    # key at commit; such records keep app_name only, as SET_NULL would.
    app_ids = {e.app_id for e in entries if e.app_id is not None}
    if not app_ids:
        return set()
    apps = get_application_model().objects.using(using).filter(pk__in=app_ids)
    return set(apps.values_list("pk", flat=True))


def _update_rows(model: type[Model], key: str, rows: list[dict[str, Any]], using: str) -> None:
    """Update the rows whose ``key`` matches, each from its dict (field attname -> value),
    with one prepared statement: the ``_insert_rows`` of updates (update_or_create
    cost two queries and a model instance per record)."""
    if not rows:
        return
    connection = connections[using]
    by_name = {f.attname: f for f in model._meta.concrete_fields}
    names = [name for name in rows[0] if name != key]
    quote = connection.ops.quote_name
    sql = "UPDATE {} SET {} WHERE {} = %s".format(
        quote(model._meta.db_table),
        ", ".join(f"{quote(str(by_name[n].column))} = %s" for n in names),
        quote(str(by_name[key].column)),
    )
    params = [
        [by_name[n].get_db_prep_save(row[n], connection) for n in names] + [row[key]]
        for row in rows
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


def _coalesced(entries: Sequence[AuditEntry]) -> dict[str, AuditEntry]:
    """The entry that counts for each request in a batch: the last one (entries
    are full snapshots), except that a write-ahead never replaces a final entry,
    and a final one without attempts keeps those of the one it replaces."""
    latest: dict[str, AuditEntry] = {}
    for entry in entries:
        previous = latest.get(entry.request_id)
        if previous is not None:
            if entry.outcome == IN_PROGRESS:
                continue
            if not entry.attempts and previous.attempts:
                entry = replace(entry, attempts=previous.attempts)
        latest[entry.request_id] = entry
    return latest


def _changes(
    batch: dict[str, AuditEntry], stored: dict[str, str], known_apps: set[int], using: str
) -> list[AuditEntry]:
    """The entries that change a stored record: a final entry over a write-ahead,
    or one that differs from the final record stored (a resumed stream that ended
    again). A write-ahead never replaces anything, and a final entry identical to
    the record (a replay, a late duplicate) is a no-op."""
    finals = [e for e in batch.values() if e.request_id in stored and e.outcome != IN_PROGRESS]
    over_final = [e.request_id for e in finals if stored[e.request_id] != IN_PROGRESS]
    if not over_final:
        return finals
    names = list(_record_fields(finals[0], known_apps))
    rows = AuditRecord.objects.using(using).filter(request_id__in=over_final)
    current = {row.pop("request_id"): row for row in rows.values("request_id", *names)}
    return [e for e in finals if current.get(e.request_id) != _record_fields(e, known_apps)]


def _insert_records(fresh: list[AuditEntry], known_apps: set[int], using: str) -> None:
    records = [{"request_id": e.request_id, **_record_fields(e, known_apps)} for e in fresh]
    _insert_rows(AuditRecord, records, using)
    _replace_attempts([e for e in fresh if e.attempts], using, stored=False)


def _update_records(changed: list[AuditEntry], known_apps: set[int], using: str) -> None:
    records = [{"request_id": e.request_id, **_record_fields(e, known_apps)} for e in changed]
    _update_rows(AuditRecord, "request_id", records, using)
    _replace_attempts([e for e in changed if e.attempts], using, stored=True)


def _replace_attempts(entries: list[AuditEntry], using: str, *, stored: bool) -> None:
    if not entries:
        return
    ids = dict(
        AuditRecord.objects.using(using)
        .filter(request_id__in=[e.request_id for e in entries])
        .values_list("request_id", "pk")
    )
    if stored:
        UpstreamAttempt.objects.using(using).filter(record_id__in=ids.values()).delete()
    attempts = [
        {"record_id": ids[e.request_id], **_attempt_fields(index, a)}
        for e in entries
        for index, a in enumerate(e.attempts)
    ]
    _insert_rows(UpstreamAttempt, attempts, using)


def audit_record_write(*, entry: AuditEntry) -> AuditRecord:
    """Store one entry as ``audit_records_write`` does; the record as stored."""
    audit_records_write(entries=[entry])
    using = router.db_for_write(AuditRecord)
    return AuditRecord.objects.using(using).get(request_id=entry.request_id)


def audit_records_write(*, entries: Sequence[AuditEntry]) -> int:
    """Store a batch in one transaction: new requests with two prepared inserts,
    changed ones with two prepared updates (and their attempts replaced).

    Idempotent by request_id, whatever the order entries arrive in (a spool
    replayed, a late duplicate): a request's entries in one batch cost one
    write, a write-ahead (``in_progress``) never replaces a stored record,
    and a final entry identical to the stored record changes nothing.
    Entries are redacted first (audit.redaction); the final records written
    are sealed into the chain (audit.chain) in the same transaction.
    Returns the entry count.
    """
    entries = [redact_entry(e) for e in entries]
    using = router.db_for_write(AuditRecord)
    batch = _coalesced(entries)
    with transaction.atomic(using=using):
        known_apps = _known_apps(list(batch.values()), using)
        stored = dict(
            AuditRecord.objects.using(using)
            .filter(request_id__in=list(batch))
            .values_list("request_id", "outcome")
        )
        fresh = [e for e in batch.values() if e.request_id not in stored]
        changed = _changes(batch, stored, known_apps, using)
        _insert_records(fresh, known_apps, using)
        _update_records(changed, known_apps, using)
        written = [e.request_id for e in fresh] + [e.request_id for e in changed]
        seal_records(written, existed=set(stored), using=using)
    return len(entries)


def audit_record_get(*, request_id: str) -> AuditRecord | None:
    return AuditRecord.objects.filter(request_id=request_id).first()


def auditors_group_ensure(*, using: str = DEFAULT_DB_ALIAS) -> Group:
    """The ``auditors`` group, with view permission on the audit models.

    Idempotent: run after every migrate (and every test-database flush).
    """
    group, _ = Group.objects.using(using).get_or_create(name=AUDITORS_GROUP)
    perms = Permission.objects.using(using).filter(
        content_type__app_label="audit",
        codename__in=["view_auditrecord", "view_upstreamattempt"],
    )
    group.permissions.add(*perms)
    return group


def audit_note_add(
    *, request_id: str, kind: str, actor: str, detail: dict[str, Any], at: float
) -> AuditNote | None:
    """Note a delivery or a watch against a request (see ``AuditNote``).

    A note is worth less than the request it is about: a database error is
    logged, and the note is lost, never raised into the stream that made it.
    """
    try:
        return AuditNote.objects.create(
            request_id=request_id[:128],
            kind=kind,
            at=_when(at),
            actor=storable_text(actor)[:150],
            detail=storable_json(detail),
        )
    except DatabaseError:
        logger.warning("audit note lost: %s %s", kind, request_id, exc_info=True)
        return None


def audit_notes_of(*, request_id: str) -> QuerySet[AuditNote]:
    return AuditNote.objects.filter(request_id=request_id).order_by("at", "pk")

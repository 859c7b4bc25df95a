"""The hash chain over the audit trail: what a link covers, and appending links.

Each final record (any outcome but ``in_progress``) is sealed when it is
written, in the same transaction: a ``ChainLink`` carries the record's
content hash, and its digest covers the previous link's digest, so editing,
deleting or reordering rows shows up in ``audit.verify``. A record replaced
by a different final entry gets a new link (the latest link of a request_id
is the one its record must match); an identical re-write adds none. Erasing
a record (retention) appends an ``erasure`` link naming it. Erasure links and
replacing links are signed (audit.signing), so that someone with the
database but not the key cannot hide an edit or a deletion behind one.

A record's content hash is computed from its row as read back from the
database, so a verifier reading the same row later gets the same bytes:
every concrete field but the primary key and ``UNSEALED_FIELDS`` (derived or
later-updated data), and its attempts' fields but their keys, as canonical
JSON (sorted keys, datetimes in ISO UTC, decimals as fixed-point text).

Appends are serialised across processes by locking the one ``ChainHead``
row (PostgreSQL: SELECT ... FOR UPDATE; SQLite serialises writers anyway).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from django.db import connections, transaction
from django.utils import timezone

from audit.models import AuditRecord, ChainHead, ChainLink, LinkKind, UpstreamAttempt
from audit.signing import sign_text

GENESIS = "0" * 64
# Outcomes of a record still being written: not sealed until it ends.
NOT_FINAL = frozenset({"in_progress"})
# Record fields outside the seal: derived from sealed ones (search), or
# updated after the record ends. Extend it for such a field, never for content.
UNSEALED_FIELDS = frozenset({"id", "search_text", "search_vector"})
ATTEMPT_UNSEALED_FIELDS = frozenset({"id", "record"})
HEAD_PK = 1


def _sealed_names(
    model: type[AuditRecord] | type[UpstreamAttempt], unsealed: frozenset[str]
) -> list[str]:
    return sorted(
        f.attname
        for f in model._meta.concrete_fields
        if not f.primary_key and f.name not in unsealed and f.attname not in unsealed
    )


def record_fields() -> list[str]:
    """The AuditRecord columns a content hash covers (derived from the model)."""
    return _sealed_names(AuditRecord, UNSEALED_FIELDS)


def attempt_fields() -> list[str]:
    return _sealed_names(UpstreamAttempt, ATTEMPT_UNSEALED_FIELDS)


def _canonical(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    raise TypeError(type(value).__name__)


def _utc(row: dict[str, Any]) -> dict[str, Any]:
    # Both backends read datetimes back in UTC; a non-UTC one is made UTC, so
    # orjson's own (fast) ISO rendering is the same whatever the connection said.
    for name, value in row.items():
        if isinstance(value, datetime) and value.utcoffset():
            row[name] = value.astimezone(UTC)
    return row


def content_hash(record: dict[str, Any], attempts: Sequence[dict[str, Any]]) -> str:
    """sha256 of a record row and its attempt rows (as ``values()`` returns them)."""
    body = orjson.dumps(
        {"record": _utc(record), "attempts": [_utc(a) for a in attempts]},
        default=_canonical,
        option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
    )
    return hashlib.sha256(body).hexdigest()


def erasure_hash(request_id: str) -> str:
    return hashlib.sha256(f"erased:{request_id}".encode()).hexdigest()


def link_statement(digest: str) -> str:
    """What a signed link's signature covers (its digest covers the rest)."""
    return f"sluice-audit-link|{digest}"


def link_digest(prev: str, seq: int, kind: str, request_id: str, content: str) -> str:
    """A link's digest: it covers the previous one, so the links cannot be reordered."""
    return hashlib.sha256(f"{prev}|{seq}|{kind}|{request_id}|{content}".encode()).hexdigest()


def content_hashes(
    request_ids: Iterable[str], *, using: str, final_only: bool = False
) -> dict[str, str]:
    """The content hash of each stored record among ``request_ids`` (two queries)."""
    records = AuditRecord.objects.using(using).filter(request_id__in=list(request_ids))
    if final_only:
        records = records.exclude(outcome__in=NOT_FINAL)
    rows = {
        row["request_id"]: (pk, row)
        for pk, row in ((r.pop("id"), r) for r in records.values("id", *record_fields()))
    }
    by_record: dict[int, list[dict[str, Any]]] = {pk: [] for pk, _ in rows.values()}
    attempts = (
        UpstreamAttempt.objects.using(using)
        .filter(record_id__in=list(by_record))
        .order_by("record_id", "index")
        .values("record_id", *attempt_fields())
    )
    for attempt in attempts:
        by_record[attempt.pop("record_id")].append(attempt)
    return {rid: content_hash(row, by_record[pk]) for rid, (pk, row) in rows.items()}


def latest_links(request_ids: Iterable[str], *, using: str) -> dict[str, tuple[str, str]]:
    """Each request_id's latest link, as (kind, content_hash)."""
    latest: dict[str, tuple[str, str]] = {}
    links = (
        ChainLink.objects.using(using)
        .filter(request_id__in=list(request_ids))
        .order_by("request_id", "seq")
        .values_list("request_id", "kind", "content_hash")
    )
    for request_id, kind, content in links:
        latest[request_id] = (kind, content)
    return latest


@dataclass(frozen=True, slots=True)
class Pending:
    """A link to append: what it is about, not yet where."""

    kind: str
    request_id: str
    content_hash: str
    # Signed: an erasure, or a record link that replaces an earlier one.
    signed: bool = False


def append_links(pending: Sequence[Pending], *, using: str) -> int:
    """Append ``pending`` after the head, under its lock; must run in a transaction.

    Returns the new head's seq.
    """
    head = _locked_head(using)
    if not pending:
        return head.seq
    connection = connections[using]
    created = ChainLink._meta.get_field("created_at").get_db_prep_save(timezone.now(), connection)
    seq, digest = head.seq, head.digest
    rows = []
    for item in pending:
        seq += 1
        digest = link_digest(digest, seq, item.kind, item.request_id, item.content_hash)
        signature = sign_text(link_statement(digest)) if item.signed else ""
        rows.append(
            (seq, item.kind, item.request_id, item.content_hash, digest, created, signature)
        )
    # One prepared statement: bulk_create's per-instance work was most of the seal's cost.
    quote = connection.ops.quote_name
    columns = ("seq", "kind", "request_id", "content_hash", "digest", "created_at", "signature")
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO {} ({}) VALUES ({})".format(
                quote(ChainLink._meta.db_table),
                ", ".join(quote(c) for c in columns),
                ", ".join(["%s"] * len(columns)),
            ),
            rows,
        )
    ChainHead.objects.using(using).filter(pk=HEAD_PK).update(seq=seq, digest=digest)
    return seq


def _locked_head(using: str) -> ChainHead:
    heads = ChainHead.objects.using(using).select_for_update()
    try:
        return heads.get(pk=HEAD_PK)
    except ChainHead.DoesNotExist:
        # The migration creates it; a flushed database (tests) has none.
        ChainHead.objects.using(using).bulk_create(
            [ChainHead(pk=HEAD_PK, seq=0, digest=GENESIS)], ignore_conflicts=True
        )
        return heads.get(pk=HEAD_PK)


def seal_records(request_ids: Sequence[str], *, existed: set[str], using: str) -> int:
    """Seal the final records among ``request_ids``, just written in this transaction.

    ``existed``: those that were stored before (only they can have a link
    already, and be unchanged). Returns how many links were appended.
    """
    assert transaction.get_connection(using).in_atomic_block, "seal inside the write"
    hashes = content_hashes(set(request_ids), using=using, final_only=True)
    if not hashes:
        return 0
    previous = latest_links([r for r in hashes if r in existed], using=using)
    pending = [
        Pending(LinkKind.RECORD, rid, hashes[rid], signed=rid in previous)
        for rid in dict.fromkeys(request_ids)  # in the order written
        if rid in hashes and previous.get(rid) != (LinkKind.RECORD, hashes[rid])
    ]
    if pending:  # an identical re-write neither appends nor waits for the head
        append_links(pending, using=using)
    return len(pending)


def chain_head(*, using: str) -> ChainHead:
    """The head as it is now (unlocked; a new one if there is none yet)."""
    head = ChainHead.objects.using(using).filter(pk=HEAD_PK).first()
    return head if head is not None else ChainHead(pk=HEAD_PK, seq=0, digest=GENESIS)


def seal_legacy(*, using: str, chunk: int = 500) -> int:
    """Seal the final records stored before the chain existed (``sealed_from_pk``).

    From then on the verifier expects every final record in the chain.
    Returns how many were sealed.
    """
    sealed = 0
    after = 0
    while True:
        head = chain_head(using=using)
        ids = list(
            AuditRecord.objects.using(using)
            .filter(pk__gt=after, pk__lt=head.sealed_from_pk)
            .order_by("pk")
            .values_list("pk", "request_id")[:chunk]
        )
        if not ids:
            break
        after = ids[-1][0]
        with transaction.atomic(using=using):
            sealed += seal_records(
                [rid for _, rid in ids], existed={rid for _, rid in ids}, using=using
            )
    ChainHead.objects.using(using).filter(pk=HEAD_PK).update(sealed_from_pk=0)
    return sealed

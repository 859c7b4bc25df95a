"""Retention: records older than their app's retention are erased, the chain kept verifiable.

An app's policy may set ``audit_retention_days``; records of other apps (and
of deleted apps) are kept SLUICE_AUDIT_RETENTION_DAYS. ``audit_prune``
erases what expired, in chunks, each in one transaction: an ``erasure`` link
naming each sealed record is appended under the chain's lock, then the rows
are deleted; ``audit.verify`` accepts a record whose latest link is its
erasure, and still names one deleted without it.

Then the chain itself is compacted: its longest prefix that covers no stored
record (links superseded or erased) is replaced by a signed ``anchor`` at
its last link, where verification starts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import router, transaction
from django.db.models import Exists, Min, OuterRef, Q
from django.utils import timezone
from oauth2_provider.models import get_application_model

from audit.chain import NOT_FINAL, Pending, append_links, chain_head, erasure_hash
from audit.checkpoints import checkpoint_sign
from audit.models import AuditRecord, ChainCheckpoint, ChainLink, CheckpointKind, LinkKind

CHUNK = 500
DELETE_STEP = 10_000


@dataclass(frozen=True, slots=True)
class Expiry:
    """Which records one retention covers: those of ``apps``, or (``default``) all but theirs."""

    days: int
    apps: tuple[int, ...]
    label: str
    default: bool = False

    def expired(self, now: datetime) -> Q:
        older = Q(started_at__lt=now - timedelta(days=self.days))
        if not self.default:
            return older & Q(app_id__in=self.apps)
        # A record of a deleted app (app null) falls here: NOT IN keeps nulls in Django.
        return older & ~Q(app_id__in=self.apps) if self.apps else older


@dataclass(slots=True)
class PruneReport:
    """What a prune erased (or, dry, would erase), per retention rule."""

    dry_run: bool
    erased: dict[str, int] = field(default_factory=dict)
    links_compacted: int = 0

    @property
    def total(self) -> int:
        return sum(self.erased.values())

    def summary(self) -> str:
        verb = "would erase" if self.dry_run else "erased"
        parts = ", ".join(f"{label}: {n}" for label, n in self.erased.items() if n) or "nothing"
        tail = f"; {self.links_compacted} chain links compacted" if self.links_compacted else ""
        return f"audit prune {verb} {self.total} records ({parts}){tail}"


def expiries(*, using: str) -> list[Expiry]:
    """One rule per app with its own retention, then the default for every other record."""
    apps = (
        get_application_model()
        .objects.using(using)
        .filter(policy__audit_retention_days__isnull=False)
        .values_list("pk", "name", "policy__audit_retention_days")
    )
    rules = [Expiry(days, (pk,), f"app {name}") for pk, name, days in apps]
    explicit = tuple(pk for rule in rules for pk in rule.apps)
    days = settings.SLUICE_AUDIT_RETENTION_DAYS
    return [*rules, Expiry(days, explicit, "default", default=True)]


def _chunks(query: Q, using: str) -> Iterator[list[tuple[int, str, str]]]:
    while True:
        rows = list(
            AuditRecord.objects.using(using)
            .filter(query)
            .order_by("pk")
            .values_list("pk", "request_id", "outcome")[:CHUNK]
        )
        if not rows:
            return
        yield rows


def _erase(rows: list[tuple[int, str, str]], using: str) -> None:
    """Delete the rows and append an erasure link for each sealed one: one transaction."""
    with transaction.atomic(using=using):
        ids = [rid for _, rid, outcome in rows if outcome not in NOT_FINAL]
        sealed = set(
            ChainLink.objects.using(using)
            .filter(request_id__in=ids)
            .values_list("request_id", flat=True)
            .distinct()
        )
        pending = [
            Pending(LinkKind.ERASURE, rid, erasure_hash(rid), signed=True)
            for rid in ids
            if rid in sealed
        ]
        # Rows first, the chain's head last: the order the writer takes its locks in.
        AuditRecord.objects.using(using).filter(pk__in=[pk for pk, _, _ in rows]).delete()
        append_links(pending, using=using)


def audit_records_erase(*, request_ids: Sequence[str]) -> int:
    """Erase these records now (a data subject's request, say), the chain kept verifiable.

    Returns how many were erased.
    """
    using = router.db_for_write(AuditRecord)
    rows = list(
        AuditRecord.objects.using(using)
        .filter(request_id__in=list(request_ids))
        .values_list("pk", "request_id", "outcome")
    )
    for start in range(0, len(rows), CHUNK):
        _erase(rows[start : start + CHUNK], using)
    return len(rows)


def audit_prune(*, dry_run: bool = False, now: datetime | None = None) -> PruneReport:
    """Erase every record past its retention; ``dry_run`` only counts them."""
    using = router.db_for_write(AuditRecord)
    now = now or timezone.now()
    report = PruneReport(dry_run=dry_run)
    for rule in expiries(using=using):
        query = rule.expired(now)
        if dry_run:
            report.erased[rule.label] = AuditRecord.objects.using(using).filter(query).count()
            continue
        count = 0
        for rows in _chunks(query, using):
            _erase(rows, using)
            count += len(rows)
        report.erased[rule.label] = count
    if not dry_run:
        report.links_compacted = chain_compact(using=using)
    return report


def chain_compact(*, using: str) -> int:
    """Replace the chain's prefix that covers no stored record by a signed anchor.

    Returns how many links were deleted.
    """
    live = (
        ChainLink.objects.using(using)
        .filter(kind=LinkKind.RECORD)
        .exclude(
            Exists(
                ChainLink.objects.using(using).filter(
                    request_id=OuterRef("request_id"), seq__gt=OuterRef("seq")
                )
            )
        )
        .aggregate(first=Min("seq"))["first"]
    )
    head = chain_head(using=using)
    last = head.seq if live is None else live - 1
    anchor = (
        ChainCheckpoint.objects.using(using)
        .filter(kind=CheckpointKind.ANCHOR)
        .order_by("-seq")
        .values_list("seq", flat=True)
        .first()
    )
    if last <= 0 or (anchor is not None and last <= anchor):
        return 0
    link = ChainLink.objects.using(using).get(seq=last)
    checkpoint_sign(kind=CheckpointKind.ANCHOR, seq=link.seq, digest=link.digest, using=using)
    # The verifier starts after the anchor: links below it may go in several steps.
    links = ChainLink.objects.using(using)
    lowest = links.aggregate(first=Min("seq"))["first"] or last
    deleted = 0
    for upto in range(lowest + DELETE_STEP - 1, last + DELETE_STEP, DELETE_STEP):
        deleted += links.filter(seq__lte=min(upto, last)).delete()[0]
    return deleted

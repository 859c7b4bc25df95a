"""Verifying the audit chain: every link's digest, every record's content, every checkpoint.

``chain_verify`` walks the links in seq order, in chunks (constant memory
on any trail), from the chain's start, or from the latest signed anchor
(links below it were pruned), or with ``since`` from the last checkpoint at
or before that time (trusting its signature). It stops at the first problem
and names it: the link's seq, its request_id and what is wrong.

What it catches: a record's content edited (its own fields or its
attempts'); a record deleted without an erasure link; a record inserted
without a link; links missing, reordered or edited; a checkpoint whose
signature is bad, or that the chain no longer passes through (a chain
rewritten after it). What no chain can catch: links removed from the end
after the last checkpoint, by someone who also rewinds the head; a
checkpoint every few minutes bounds that window.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from django.db import connections, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from audit.chain import (
    GENESIS,
    NOT_FINAL,
    chain_head,
    content_hashes,
    erasure_hash,
    link_digest,
    link_statement,
)
from audit.checkpoints import checkpoint_signature_valid
from audit.models import AuditRecord, ChainCheckpoint, ChainLink, CheckpointKind, LinkKind
from audit.signing import text_signed

CHUNK = 2000


@dataclass(frozen=True, slots=True)
class Problem:
    """The first thing found wrong."""

    seq: int | None
    request_id: str
    what: str

    def __str__(self) -> str:
        where = f"seq {self.seq}" if self.seq is not None else "no link"
        return f"request {self.request_id or '-'} ({where}): {self.what}"


@dataclass(slots=True)
class Report:
    """What was checked, and the first problem (None: intact)."""

    start_seq: int = 0
    start_kind: str = ""  # the checkpoint or anchor the walk started from, if any
    links: int = 0
    records: int = 0
    checkpoints: int = 0
    problem: Problem | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        if self.problem is not None:
            return f"audit chain BROKEN at {self.problem}"
        start = (
            f" after the signed {self.start_kind} at seq {self.start_seq}"
            if self.start_kind
            else ""
        )
        return (
            f"audit chain intact: {self.links} links from seq {self.start_seq + 1}{start}, "
            f"{self.records} records, {self.checkpoints} checkpoints verified"
        )


def _start(since: datetime | None, using: str) -> tuple[ChainCheckpoint | None, Problem | None]:
    """Where the walk starts: the latest anchor, or the last checkpoint before ``since``."""
    checkpoints = ChainCheckpoint.objects.using(using)
    start = checkpoints.filter(kind=CheckpointKind.ANCHOR).order_by("-seq", "-pk").first()
    if since is not None:
        before = checkpoints.filter(created_at__lte=since)
        if start is not None:
            before = before.filter(seq__gte=start.seq)
        start = before.order_by("-created_at", "-pk").first() or start
    if start is not None and not checkpoint_signature_valid(start):
        return None, Problem(start.seq, "", f"{start.kind} signature bad (key {start.key_id})")
    return start, None


@contextlib.contextmanager
def _snapshot(using: str) -> Iterator[None]:
    """One consistent view for a chunk's links and records, while writers go on."""
    connection = connections[using]
    outermost = not connection.in_atomic_block  # else: the caller's transaction's view
    with transaction.atomic(using=using):
        if outermost and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield  # SQLite: a transaction's reads share one snapshot anyway


def _chunk(after: int, upto: int, using: str) -> list[ChainLink]:
    links = ChainLink.objects.using(using).filter(seq__gt=after, seq__lte=upto)
    return list(links.order_by("seq")[:CHUNK])


def _seq_span(chunk: list[ChainLink], using: str) -> dict[str, tuple[int, int]]:
    """Each request_id's first and latest link seq (over the whole chain)."""
    span: dict[str, tuple[int, int]] = {}
    links = ChainLink.objects.using(using).filter(
        request_id__in={link.request_id for link in chunk}
    )
    for request_id, seq in links.values_list("request_id", "seq"):
        first, last = span.get(request_id, (seq, seq))
        span[request_id] = (min(first, seq), max(last, seq))
    return span


class _Walk:
    """The state of one walk along the chain."""

    def __init__(self, start: ChainCheckpoint | None, report: Report, using: str) -> None:
        self.using = using
        self.report = report
        self.seq = start.seq if start is not None else 0
        self.digest = start.digest if start is not None else GENESIS
        report.start_seq = self.seq
        report.start_kind = start.kind if start is not None else ""
        # Links appended while the walk runs are left for the next one; every
        # checkpoint signed before it started must be passed (or it was truncated).
        started = timezone.now()
        self.head = chain_head(using=using).seq
        self.checkpoints = ChainCheckpoint.objects.using(using).filter(
            seq__gt=self.seq, created_at__lte=started
        )

    def links(self, chunk: list[ChainLink]) -> Problem | None:
        marks = {cp.seq: cp for cp in self.checkpoints.filter(seq__lte=chunk[-1].seq)}
        self.checkpoints = self.checkpoints.filter(seq__gt=chunk[-1].seq)
        span = _seq_span(chunk, self.using)
        for link in chunk:
            problem = self._link(link, marks) or self._authority(link, span)
            if problem is not None:
                return problem
        return self._contents(chunk, span)

    def _authority(self, link: ChainLink, span: dict[str, tuple[int, int]]) -> Problem | None:
        """An erasure, or a link replacing an earlier one, must carry a valid signature."""
        if link.signature:
            if text_signed(link_statement(link.digest), link.signature):
                return None
            return Problem(link.seq, link.request_id, "link signature bad")
        if link.kind == LinkKind.ERASURE:
            return Problem(link.seq, link.request_id, "erasure not signed")
        if span[link.request_id][0] < link.seq:
            return Problem(link.seq, link.request_id, "record replaced without a signature")
        return None

    def _link(self, link: ChainLink, marks: dict[int, ChainCheckpoint]) -> Problem | None:
        if link.seq != self.seq + 1:
            missing = f"link {self.seq + 1} missing" if link.seq > self.seq + 1 else "seq repeated"
            return Problem(link.seq, link.request_id, f"{missing}: links deleted or out of order")
        expected = link_digest(self.digest, link.seq, link.kind, link.request_id, link.content_hash)
        if expected != link.digest:
            return Problem(link.seq, link.request_id, "link altered or out of order")
        if link.kind == LinkKind.ERASURE and link.content_hash != erasure_hash(link.request_id):
            return Problem(link.seq, link.request_id, "erasure link altered")
        self.seq, self.digest = link.seq, link.digest
        self.report.links += 1
        mark = marks.get(link.seq)
        if mark is not None:
            return self._checkpoint(mark, link)
        return None

    def _checkpoint(self, mark: ChainCheckpoint, link: ChainLink) -> Problem | None:
        if not checkpoint_signature_valid(mark):
            return Problem(mark.seq, link.request_id, f"{mark.kind} signature bad")
        if mark.digest != link.digest:
            return Problem(
                mark.seq, link.request_id, f"chain rewritten: it no longer passes the {mark.kind}"
            )
        self.report.checkpoints += 1
        return None

    def _contents(self, chunk: list[ChainLink], span: dict[str, tuple[int, int]]) -> Problem | None:
        current = [link for link in chunk if span[link.request_id][1] == link.seq]
        sealed = [link.request_id for link in current if link.kind == LinkKind.RECORD]
        hashes = content_hashes(sealed, using=self.using)
        erased = [link.request_id for link in current if link.kind == LinkKind.ERASURE]
        revived = set(
            AuditRecord.objects.using(self.using)
            .filter(request_id__in=erased)
            .values_list("request_id", flat=True)
        )
        for link in current:
            if link.kind == LinkKind.ERASURE:
                if link.request_id in revived:
                    return Problem(link.seq, link.request_id, "record present after its erasure")
                continue
            stored = hashes.get(link.request_id)
            if stored is None:
                return Problem(link.seq, link.request_id, "record deleted")
            if stored != link.content_hash:
                return Problem(link.seq, link.request_id, "content edited")
            self.report.records += 1
        return None

    def end(self) -> Problem | None:
        """After the last link: nothing promised beyond it is missing."""
        beyond = self.checkpoints.order_by("seq").first()
        if beyond is not None:
            return Problem(beyond.seq, "", f"links after seq {self.seq} missing ({beyond.kind})")
        if self.head != self.seq:
            return Problem(
                self.seq + 1, "", f"links after seq {self.seq} missing (head {self.head})"
            )
        return None


def _unsealed(since: datetime | None, using: str) -> Problem | None:
    """A final record that no link covers: inserted behind the gateway's back."""
    head = chain_head(using=using)
    records = (
        AuditRecord.objects.using(using)
        .filter(pk__gte=head.sealed_from_pk)
        .exclude(outcome__in=NOT_FINAL)
        .exclude(Exists(ChainLink.objects.filter(request_id=OuterRef("request_id"))))
    )
    if since is not None:
        records = records.filter(started_at__gte=since)
    stray = records.order_by("pk").values_list("request_id", flat=True).first()
    return None if stray is None else Problem(None, stray, "record not in the chain")


def chain_verify(*, using: str, since: datetime | None = None) -> Report:
    """Walk the chain (see the module's docstring); the report names the first problem."""
    report = Report()
    start, problem = _start(since, using)
    if problem is None:
        walk = _Walk(start, report, using)
        while problem is None:
            with _snapshot(using):
                chunk = _chunk(walk.seq, walk.head, using)
                if not chunk:
                    problem = walk.end() or _unsealed(since, using)
                    break
                problem = walk.links(chunk)
    report.problem = problem
    return report

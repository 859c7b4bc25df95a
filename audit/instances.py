"""Gateway instances' heartbeats, and the write-aheads a dead instance left behind.

Each served gateway calls ``instance_heartbeat`` every few seconds. Whoever
sweeps (``streaming.core.recovery``) asks ``instances_with_open_records`` for
the instances that still have ``in_progress`` records, decides which are
dead, and completes their records with ``audit_open_entries`` and the
ordinary ``audit_records_write``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from django.db.models import Min

from audit.models import AuditRecord, GatewayInstance, Outcome
from audit.records import AuditEntry


@dataclass(frozen=True, slots=True)
class InstanceSeen:
    """An instance with open records, and its heartbeat if it ever sent one."""

    name: str
    host: str | None = None
    pid: int | None = None
    started_at: float | None = None
    last_seen: float | None = None
    oldest_open: float | None = None  # the oldest in_progress record's start


def instance_heartbeat(*, name: str, host: str, pid: int, started_at: float) -> None:
    """This instance is alive now."""
    GatewayInstance.objects.update_or_create(
        name=name,
        defaults={
            "host": host[:255],
            "pid": pid,
            "started_at": datetime.fromtimestamp(started_at, tz=UTC),
            "last_seen": datetime.now(tz=UTC),
        },
    )


def instances_forget(*, last_seen_before: float) -> int:
    """Delete the heartbeats of instances gone since before then, with no open records left."""
    open_names = AuditRecord.objects.filter(outcome=Outcome.IN_PROGRESS).values("instance")
    gone = GatewayInstance.objects.filter(
        last_seen__lt=datetime.fromtimestamp(last_seen_before, tz=UTC)
    ).exclude(name__in=open_names)
    deleted, _ = gone.delete()
    return deleted


def instances_with_open_records() -> list[InstanceSeen]:
    """Every instance that has ``in_progress`` records, with its last heartbeat."""
    open_records = AuditRecord.objects.filter(outcome=Outcome.IN_PROGRESS)
    by_instance = open_records.values("instance").annotate(oldest=Min("started_at"))
    oldest: dict[str, datetime] = {row["instance"]: row["oldest"] for row in by_instance}
    rows = {row.name: row for row in GatewayInstance.objects.filter(name__in=list(oldest))}
    seen = []
    for name, first in oldest.items():
        row = rows.get(name)
        if row is None:
            seen.append(InstanceSeen(name, oldest_open=first.timestamp()))
            continue
        seen.append(
            InstanceSeen(
                name,
                host=row.host,
                pid=row.pid,
                started_at=row.started_at.timestamp(),
                last_seen=row.last_seen.timestamp(),
                oldest_open=first.timestamp(),
            )
        )
    return seen


def audit_open_entries(
    *, instance: str, started_before: float | None = None, limit: int = 500
) -> list[AuditEntry]:
    """The write-aheads (``in_progress``) of ``instance``, as the entries that made them."""
    records = AuditRecord.objects.filter(outcome=Outcome.IN_PROGRESS, instance=instance)
    if started_before is not None:
        records = records.filter(started_at__lt=datetime.fromtimestamp(started_before, tz=UTC))
    return [_entry_of(record) for record in records.order_by("started_at")[:limit]]


def _entry_of(record: AuditRecord) -> AuditEntry:
    # A write-ahead holds the request only: nothing else is lost here.
    return AuditEntry(
        request_id=record.request_id,
        protocol=record.protocol,
        public_model=record.public_model,
        started_at=record.started_at.timestamp(),
        app_id=record.app_id,
        app_name=record.app_name,
        token_id=record.token_id,
        staff_user_id=record.staff_user_id,
        staff_username=record.staff_username,
        client_ip=record.client_ip,
        request_messages=record.request_messages,
        request_params=record.request_params,
        instance=record.instance,
        outcome=record.outcome,
        redactions=record.redactions,  # in the request, already replaced
    )

"""What apps used and spent, read from the audit trail (a selector: no writes).

Every audit record carries the tokens and the cost its request was charged
(summed over its attempts), so usage is a grouped sum of records. Days and
months are those of the request's start, in the server's time zone
(``TIME_ZONE``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Count, DateField, F, QuerySet, Sum, Value
from django.db.models.functions import Coalesce, TruncDate, TruncMonth
from django.utils import timezone

from audit.models import AuditRecord, Outcome

# What usage can be grouped by, and the expression of each.
GROUPS: dict[str, Any] = {
    "app": F("app_name"),
    "route": F("public_model"),
    "provider": F("provider"),
    "day": TruncDate("started_at"),
    "month": TruncMonth("started_at", output_field=DateField()),
}
COUNTS = ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens")


def _moment(when: date | datetime, *, end: bool) -> datetime:
    """A bound as an aware datetime; a date ``until`` includes that whole day."""
    if isinstance(when, datetime):
        return when if timezone.is_aware(when) else timezone.make_aware(when)
    day = when + timedelta(days=1) if end else when
    return timezone.make_aware(datetime.combine(day, time.min))


def _records(
    app: str | int | None, since: date | datetime | None, until: date | datetime | None
) -> QuerySet[AuditRecord]:
    # A refused request was never served: it is on the record, not on the bill.
    records = AuditRecord.objects.exclude(outcome=Outcome.REJECTED)
    if isinstance(app, int):
        records = records.filter(app_id=app)
    elif app is not None:
        records = records.filter(app_name=app)
    if since is not None:
        records = records.filter(started_at__gte=_moment(since, end=False))
    if until is not None:
        records = records.filter(started_at__lt=_moment(until, end=True))
    return records


def usage_by(
    *,
    app: str | int | None = None,
    since: date | datetime | None = None,
    until: date | datetime | None = None,
    group: Sequence[str] = ("app", "route", "day"),
) -> list[dict[str, Any]]:
    """Requests, tokens and cost per group, ordered by the group's keys.

    ``app`` is an app's name or id; ``since`` is inclusive and ``until``
    exclusive for a datetime, inclusive for a date (its whole day). ``group``
    names keys of ``GROUPS`` (``app``, ``route``, ``provider``, ``day``,
    ``month``). Each row holds those keys (``day`` and ``month`` as dates,
    a month as its first day), ``requests``, ``prompt_tokens``,
    ``completion_tokens``, ``cached_tokens``, ``reasoning_tokens``,
    ``total_tokens`` and ``cost_usd`` (a Decimal).
    """
    unknown = set(group) - set(GROUPS)
    if unknown:
        raise ValueError(f"cannot group usage by {sorted(unknown)}; use {sorted(GROUPS)}")
    keys = list(dict.fromkeys(group))
    sums: dict[str, Any] = {name: Coalesce(Sum(name), Value(0)) for name in COUNTS}
    sums["cost_usd"] = Coalesce(Sum("cost_usd"), Value(Decimal(0)))
    rows = (
        _records(app, since, until)
        .annotate(**{f"by_{key}": GROUPS[key] for key in keys})
        .values(*(f"by_{key}" for key in keys))
        .annotate(requests=Count("id"), **sums)
        .order_by(*(f"by_{key}" for key in keys))
    )
    return [_row(row, keys) for row in rows]


def _row(row: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {key: row[f"by_{key}"] for key in keys}
    out["requests"] = row["requests"]
    out.update({name: int(row[name]) for name in COUNTS})
    out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    out["cost_usd"] = Decimal(row["cost_usd"])
    return out

"""Which audit records an auditor asked for: one set of filters for the admin,
the API and the export alike.

``record_filters_parse`` reads them from query parameters (the admin's
changelist uses the same names, so an export of the changelist is the same
query string) and raises ``ValidationError`` naming each bad parameter;
``audit_record_filter`` narrows a queryset by them. Full-text search is
PostgreSQL's (``websearch_to_tsquery`` against the stored ``search_vector``
and its GIN index, migration 0007_search) on PostgreSQL, and every word as a substring on SQLite.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import date, datetime, time, timedelta

from django.contrib.postgres.search import SearchQuery, SearchVectorField
from django.core.exceptions import ValidationError
from django.db import connections
from django.db.models import Q, QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from audit.models import AuditRecord, Outcome, Protocol

Q_MAX_LENGTH = 500
# to_tsvector('simple', search_text), kept by a trigger on PostgreSQL only
# (migration 0007_search): a column the model does not declare.
_SEARCH_VECTOR = RawSQL(
    f'"{AuditRecord._meta.db_table}"."search_vector"', [], output_field=SearchVectorField()
)
_OFFSET_AS_SPACE = re.compile(r"([T ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?) (\d\d(?::?\d\d)?)$")
_STATUS = re.compile(r"([1-5])(?:xx|XX)|([1-5]\d\d)")


@dataclass(frozen=True, slots=True)
class RecordFilters:
    """What to narrow the records to; None (or empty) means any.

    ``status`` is an inclusive range (``4xx`` is 400..499); ``since`` is
    inclusive and ``until`` exclusive (a date ``until`` has become the next
    day's midnight, so it includes the whole day it names).
    """

    app: str | None = None
    model: str | None = None
    provider: str | None = None
    protocol: str | None = None
    outcome: str | None = None
    status: tuple[int, int] | None = None
    error_class: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    q: str | None = None


FILTER_PARAMS = tuple(f.name for f in fields(RecordFilters))


def record_filters_parse(params: Mapping[str, str]) -> RecordFilters:
    """Filters from query parameters (others are ignored); blank means unset.

    Raises ``ValidationError`` with a message per bad parameter.
    """
    raw = {name: (params.get(name) or "").strip() for name in FILTER_PARAMS}
    errors: dict[str, list[str]] = {}

    def check(name: str, parse: object) -> object:
        try:
            return parse(raw[name]) if raw[name] else None  # type: ignore[operator]
        except ValueError as error:
            errors[name] = [str(error)]
            return None

    values = {
        "app": raw["app"] or None,
        "model": raw["model"] or None,
        "provider": raw["provider"] or None,
        "error_class": raw["error_class"] or None,
        "protocol": check("protocol", lambda v: _choice(v, Protocol.values)),
        "outcome": check("outcome", lambda v: _choice(v, Outcome.values)),
        "status": check("status", _status),
        "since": check("since", lambda v: _moment(v, end=False)),
        "until": check("until", lambda v: _moment(v, end=True)),
        "q": check("q", _query),
    }
    since, until = values["since"], values["until"]
    if isinstance(since, datetime) and isinstance(until, datetime) and until <= since:
        errors["until"] = ["'until' is not after 'since'"]
    if errors:
        raise ValidationError(errors)
    return RecordFilters(**values)  # type: ignore[arg-type]


def _choice(value: str, allowed: list[str]) -> str:
    if value not in allowed:
        raise ValueError(f"'{value}' is not one of {', '.join(allowed)}")
    return value


def _status(value: str) -> tuple[int, int]:
    match = _STATUS.fullmatch(value)
    if match is None:
        raise ValueError(f"'{value}' is not an HTTP status (e.g. 429) or class (e.g. 5xx)")
    if match.group(1):
        first = int(match.group(1)) * 100
        return first, first + 99
    return int(value), int(value)


def _moment(value: str, *, end: bool) -> datetime:
    """A bound as an aware datetime; a date ``until`` includes that whole day."""
    when: date | datetime | None
    # A "+01:00" offset typed into a URL unencoded arrives as " 01:00".
    value = _OFFSET_AS_SPACE.sub(r"\1+\2", value)
    try:
        when = parse_datetime(value) if "T" in value or " " in value else parse_date(value)
    except ValueError:
        when = None
    if when is None:
        raise ValueError(f"'{value}' is not a date (YYYY-MM-DD) or an ISO datetime")
    if isinstance(when, datetime):
        return when if timezone.is_aware(when) else timezone.make_aware(when)
    day = when + timedelta(days=1) if end else when
    return timezone.make_aware(datetime.combine(day, time.min))


def _query(value: str) -> str:
    if len(value) > Q_MAX_LENGTH:
        raise ValueError(f"at most {Q_MAX_LENGTH} characters")
    if "\x00" in value:
        raise ValueError("a NUL character cannot be searched for")
    return value


def audit_record_filter(
    *, filters: RecordFilters, records: QuerySet[AuditRecord] | None = None
) -> QuerySet[AuditRecord]:
    """``records`` (all by default) narrowed by ``filters``; the order is the caller's."""
    if records is None:
        records = AuditRecord.objects.all()
    if filters.app is not None:
        by_name = Q(app_name=filters.app)
        records = records.filter(
            by_name | Q(app_id=int(filters.app)) if filters.app.isdigit() else by_name
        )
    exact = {
        "public_model": filters.model,
        "provider": filters.provider,
        "protocol": filters.protocol,
        "outcome": filters.outcome,
        "error_class": filters.error_class,
    }
    records = records.filter(**{k: v for k, v in exact.items() if v is not None})
    if filters.status is not None:
        records = records.filter(status_code__range=filters.status)
    if filters.since is not None:
        records = records.filter(started_at__gte=filters.since)
    if filters.until is not None:
        records = records.filter(started_at__lt=filters.until)
    if filters.q is not None:
        records = audit_record_search(records=records, q=filters.q)
    return records


def audit_record_search(*, records: QuerySet[AuditRecord], q: str) -> QuerySet[AuditRecord]:
    """Records whose prompts or answer match ``q``, or whose request id is ``q``.

    PostgreSQL: web-search syntax (``"a phrase"``, ``or``, ``-word``) over the
    words of the text, unstemmed (config ``simple``: any language), through
    the GIN index. SQLite: every word of ``q`` appears in the text, any case.
    """
    by_id = Q(request_id=q)
    if connections[records.db].vendor == "postgresql":
        query = SearchQuery(q, search_type="websearch", config="simple")
        return records.alias(search_vector=_SEARCH_VECTOR).filter(Q(search_vector=query) | by_id)
    words = Q()
    for word in q.split():
        words &= Q(search_text__icontains=word)
    return records.filter(words | by_id)

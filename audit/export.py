"""A filtered set of audit records as JSONL or CSV, streamed in constant memory.

Under ASGI Django buffers a sync iterator whole before sending it, so the
response body is an async generator. It reads keyset-paginated chunks of
up to ``CHUNK`` records (``pk > last``, ordered by pk: each chunk is one index range
scan however deep the export is, and rows written meanwhile never shift it)
through ``sync_to_async``, renders each chunk in that thread and yields it as
one piece. The server's ``send`` waits for a slow reader, so at most about one
chunk is held at a time whatever the export's size.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import orjson
from asgiref.sync import sync_to_async
from django.http import StreamingHttpResponse

from audit.documents import CSV_COLUMNS, record_csv_row, record_document
from audit.models import AuditRecord, UpstreamAttempt
from audit.selectors import RecordFilters, audit_record_filter

CHUNK = 1000
# Records with long transcripts come in smaller chunks: the next chunk's size
# aims at about this much output (at least MIN_CHUNK records), which bounds
# the memory a chunk takes however large the records are.
CHUNK_BYTES = 2 * 1024 * 1024
MIN_CHUNK = 20
FORMATS = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}


def _json_line(record: AuditRecord, attempts: list[UpstreamAttempt]) -> bytes:
    document = record_document(record, attempts)
    try:
        return orjson.dumps(document, option=orjson.OPT_APPEND_NEWLINE)
    except (TypeError, orjson.JSONEncodeError):
        # e.g. an integer past 64 bits in request_params: the stdlib takes it.
        return json.dumps(document, ensure_ascii=False).encode() + b"\n"


def _csv_rows(rows: list[list[object]]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode()


def _attempts_of(records: list[AuditRecord]) -> dict[int, list[UpstreamAttempt]]:
    # Not prefetch_related: it caches each record on its attempts and the
    # attempts on the record, a reference cycle that keeps a whole chunk alive
    # until the cyclic collector runs (rarely, in the gateway: asgi.settle_gc).
    by_record: dict[int, list[UpstreamAttempt]] = defaultdict(list)
    attempts = UpstreamAttempt.objects.filter(record_id__in=[r.pk for r in records])
    for attempt in attempts.order_by("record_id", "index"):
        by_record[attempt.record_id].append(attempt)
    return by_record


def export_chunk(
    *, filters: RecordFilters, after: int, fmt: str, size: int = CHUNK
) -> tuple[int | None, bytes]:
    """The next ``size`` records after pk ``after``, rendered: (their last pk, bytes).

    The pk is None when no record is left.
    """
    matching = audit_record_filter(filters=filters).defer("search_text")
    records = list(matching.filter(pk__gt=after).order_by("pk")[:size])
    if not records:
        return None, b""
    attempts = _attempts_of(records)
    if fmt == "csv":
        data = _csv_rows([record_csv_row(r, attempts.get(r.pk, [])) for r in records])
    else:
        data = b"".join(_json_line(r, attempts.get(r.pk, [])) for r in records)
    return records[-1].pk, data


async def export_stream(filters: RecordFilters, fmt: str) -> AsyncIterator[bytes]:
    """Every record matching ``filters``, oldest (lowest pk) first, as ``fmt``."""
    if fmt == "csv":
        yield _csv_rows([list(CSV_COLUMNS)])
    after: int | None = 0
    size = CHUNK
    while True:
        after, data = await sync_to_async(export_chunk)(
            filters=filters, after=after or 0, fmt=fmt, size=size
        )
        if after is None:
            return
        yield data
        size = max(MIN_CHUNK, min(CHUNK, size * CHUNK_BYTES // max(len(data), 1)))


def export_response(*, filters: RecordFilters, fmt: str) -> StreamingHttpResponse:
    """The export as an attachment, e.g. ``audit-records-20261204T203000Z.jsonl``.

    ``fmt`` is a key of ``FORMATS``.
    """
    response = StreamingHttpResponse(export_stream(filters, fmt), content_type=FORMATS[fmt])
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = f'attachment; filename="audit-records-{stamp}.{fmt}"'
    response["Cache-Control"] = "no-store"
    response["X-Accel-Buffering"] = "no"
    return response

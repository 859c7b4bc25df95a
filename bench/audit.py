"""Audit scenarios: does the trail keep up, and does an export stay in constant memory?

``audit-sustained``: requests start at a fixed rate (open loop: the next one
goes at its time whatever the answers do) for a while, through one gateway.
``/metrics`` is read every quarter second for the audit writer's queue depth
and spool. After the run the writer drains, and every request that was
answered must have exactly one completed record: nothing lost.

``audit-export``: a million records are inserted straight into the database,
then exported through ``GET /api/v1/audit/export/`` by an app holding
``audit:read``, as JSONL and as CSV. The gateway's peak RSS during each export
against its RSS before: what constant memory means in MiB.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from bench import report
from bench.load import Spec
from bench.report import Row
from bench.scenarios import Bench, run_load, warm_up
from bench.stack import Process, fetch_token, peak_rss_kib, reset_peak_rss, rss_kib

SUSTAINED_RATE = 1000.0  # requests a second
SUSTAINED_SECONDS = 20.0
EXPORT_RECORDS = 1_000_000
DRAIN_SECONDS = 120.0


@dataclass
class AuditGauges:
    """The writer's queue depth and spool, sampled from ``/metrics`` in a thread."""

    url: str
    queue: list[float] = field(default_factory=list)
    spool: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> AuditGauges:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.wait(0.25):
                queue, spool = read_gauges(client, self.url)
                self.queue.append(queue)
                self.spool.append(spool)


def read_gauges(client: httpx.Client, url: str) -> tuple[float, float]:
    """(audit queue depth, spooled records) as the gateway's /metrics says."""
    try:
        text = client.get(f"{url}/metrics").text
    except httpx.HTTPError:
        return 0.0, 0.0
    values = {"sluice_audit_queue_depth": 0.0, "sluice_audit_spool_records": 0.0}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in values:
            values[name] = float(value)
    return values["sluice_audit_queue_depth"], values["sluice_audit_spool_records"]


def _drained(url: str) -> bool:
    deadline = time.monotonic() + DRAIN_SECONDS
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            if read_gauges(client, url) == (0.0, 0.0):
                return True
            time.sleep(0.25)
    return False


def _records(route: str, started: float, ended: float) -> dict[str, int]:
    """Records of ``route`` started within the run, by outcome."""
    from django.db.models import Count

    from audit.models import AuditRecord

    rows = (
        AuditRecord.objects.filter(
            public_model=route,
            started_at__gte=datetime.fromtimestamp(started - 1, UTC),
            started_at__lte=datetime.fromtimestamp(ended + 1, UTC),
        )
        .values("outcome")
        .annotate(n=Count("pk"))
    )
    return {row["outcome"]: row["n"] for row in rows}


def sustained(bench: Bench) -> list[Row]:
    """``rate`` requests a second for ``seconds``: the audit keeps up, nothing lost."""
    quick = bench.sizes.sequential_requests < 100
    rate, seconds = (100.0, 2.0) if quick else (SUSTAINED_RATE, SUSTAINED_SECONDS)
    count = int(rate * seconds)
    name = f"audit at {rate:,.0f} requests/s for {seconds:.0f} s (SSE)"
    route = bench.routes[bench.sizes.models()["sequential"]]
    with bench.gateway() as gateway:
        warm_up(bench, gateway, "sequential")
        url = f"http://127.0.0.1:{gateway.port}"
        legs = [bench.direct("sequential"), bench.sluice(gateway, "sequential")]
        spec = Spec(legs=legs, concurrency=500, requests=count, expect_tokens=10, rate=rate)
        with AuditGauges(url) as gauges:
            direct_run, sluice_run = run_load(spec)
            drained = _drained(url)
    stored = _records(route, sluice_run["started"], sluice_run["ended"])
    answered = sum(1 for r in sluice_run["records"] if r["error"] is None)
    lost = answered - stored.get("completed", 0)
    queue_max = max(gauges.queue, default=0.0)
    spool_max = max(gauges.spool, default=0.0)
    errors = report.errors(direct_run["records"]) + report.errors(sluice_run["records"])
    held = f"queue depth max {queue_max:,.0f}, spool max {spool_max:,.0f}"
    return [
        Row(
            name,
            "requests/s achieved",
            f"{_rate(direct_run):,.0f}",
            f"{_rate(sluice_run):,.0f}",
            f"{count:,} requests a leg",
            "",
            None,
            None,
            None,
            errors,
        ),
        Row(
            name,
            "audit records lost",
            "—",
            str(lost),
            f"{sum(stored.values()):,} records for {answered:,} answered "
            f"({_outcomes(stored)}); {held}" + ("" if drained else "; DID NOT DRAIN"),
            "0 lost, queue bounded",
            lost == 0 and drained and queue_max < 10_000,
            None,
            None,
            errors,
        ),
        _p99_row(name, direct_run, sluice_run, errors),
    ]


def _rate(run: dict[str, Any]) -> float:
    return len(run["records"]) / max(1e-9, run["ended"] - run["started"])


def _outcomes(stored: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {outcome}" for outcome, n in sorted(stored.items())) or "none"


def _p99_row(name: str, direct: dict[str, Any], sluice: dict[str, Any], errors: int) -> Row:
    d = report.percentile(report.ttfts_ms(direct["records"]), 99)
    s = report.percentile(report.ttfts_ms(sluice["records"]), 99)
    diff = f"+{s - d:.2f} ms"
    return Row(name, "TTFT p99 (ms)", f"{d:.2f}", f"{s:.2f}", diff, "", None, None, None, errors)


# -- export ---------------------------------------------------------------------
def seed_records(count: int, model: str) -> None:
    """``count`` completed records of ``model``, inserted in chunks with one prepared
    statement (building model instances would take minutes)."""
    from django.db import connection, transaction

    from audit.models import AuditRecord

    fields = [f for f in AuditRecord._meta.concrete_fields if not f.primary_key]
    start = datetime.now(UTC) - timedelta(days=1)
    sample = {
        "request_id": "",
        "app_name": "bench-export",
        "protocol": "sse",
        "public_model": model,
        "provider": "fake",
        "upstream_model": model,
        "request_messages": [{"role": "user", "content": "Say something about exports. " * 4}],
        "request_params": {"stream": True},
        "response_text": "An export streams rows as they are read, never all at once. " * 4,
        "outcome": "completed",
        "status_code": 200,
        "prompt_tokens": 30,
        "completion_tokens": 48,
        "ttft_ms": 1.5,
        "duration_ms": 20.0,
        "started_at": start,
        "ended_at": start,
    }
    names = [f.attname for f in fields]
    template = [
        f.get_db_prep_save(sample[n] if n in sample else f.get_default(), connection)
        for n, f in zip(names, fields, strict=True)
    ]
    rid, started, ended = (names.index(n) for n in ("request_id", "started_at", "ended_at"))
    quote = connection.ops.quote_name
    sql = "INSERT INTO {} ({}) VALUES ({})".format(
        quote(AuditRecord._meta.db_table),
        ", ".join(quote(str(f.column)) for f in fields),
        ", ".join(["%s"] * len(fields)),
    )
    by_field = {n: f for n, f in zip(names, fields, strict=True)}
    for low in range(0, count, 10_000):
        rows = []
        for index in range(low, min(count, low + 10_000)):
            row = list(template)
            when = start + timedelta(milliseconds=index)
            row[rid] = f"bench-export-{index:07d}"
            row[started] = by_field["started_at"].get_db_prep_save(when, connection)
            row[ended] = row[started]
            rows.append(row)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.executemany(sql, rows)


def _auditor_token(base_url: str) -> str:
    from accounts.services import app_create

    app, secret = app_create(name=f"bench-auditor-{time.monotonic_ns()}", scopes=["audit:read"])
    return fetch_token(base_url, app.client_id, secret, scope="audit:read")


def _export(gateway: Process, token: str, model: str, fmt: str) -> tuple[int, int, float, int]:
    """(lines, bytes, seconds, peak RSS growth KiB) of one export of ``model``'s records."""
    url = f"http://127.0.0.1:{gateway.port}/api/v1/audit/export/"
    idle = rss_kib(gateway.pid)
    reset_peak_rss(gateway.pid)
    lines = size = 0
    started = time.perf_counter()
    params = {"format": fmt, "model": model}
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.stream("GET", url, params=params, headers=headers, timeout=600) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes():
            size += len(chunk)
            lines += chunk.count(b"\n")
    seconds = time.perf_counter() - started
    return lines, size, seconds, peak_rss_kib(gateway.pid) - idle


def export(bench: Bench) -> list[Row]:
    """A million records exported as JSONL and as CSV: rows, time, memory."""
    count = 2_000 if bench.sizes.sequential_requests < 100 else EXPORT_RECORDS
    model = f"bench-export-{time.monotonic_ns()}"
    started = time.perf_counter()
    seed_records(count, model)
    seeded = time.perf_counter() - started
    rows = []
    with bench.gateway() as gateway:
        token = _auditor_token(f"http://127.0.0.1:{gateway.port}")
        for fmt, header in (("jsonl", 0), ("csv", 1)):
            lines, size, seconds, growth = _export(gateway, token, model, fmt)
            complete = lines - header == count
            rows.append(
                Row(
                    f"audit export, {count:,} records ({fmt.upper()}, API)",
                    "gateway peak RSS growth (MiB)",
                    "—",
                    f"{growth / 1024:.1f}",
                    f"{lines - header:,} rows, {size / 2**20:,.0f} MiB in {seconds:.1f} s "
                    f"({(lines - header) / seconds:,.0f} rows/s; seeded in {seeded:.0f} s)",
                    "≤ 64 MiB, every row",
                    complete and growth <= 64 * 1024,
                    None,
                    None,
                    0 if complete else 1,
                )
            )
    return rows

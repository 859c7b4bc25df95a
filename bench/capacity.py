"""``capacity``: what one request costs Redis and PostgreSQL, counted (docs/capacity.md).

Counts, not timings: every Redis command the gateway sends (MONITOR, this
run's database only; the commands a Lua script runs are counted apart) and
PostgreSQL's own counters for the run's database (pg_stat_database:
transactions committed, rows inserted, updated and deleted; the tables that
took them from pg_stat_user_tables). Counts do not depend on how loaded the
machine is, so the figures hold on this shared VM.

Windows, each on its own: idle (what an instance does with no request, per
second), N short requests (10 tokens), N long ones (100 tokens at 50/s,
concurrently), and N streams of 100 tokens resumed after their end on a second
instance (the reads a resume costs). Per token and per request come from the
short and long windows (two unknowns, two windows).

Run with REDIS_URL and a PostgreSQL DATABASE_URL in --gateway-env:
    python -m bench --only capacity --workers 1 \\
        --gateway-env REDIS_URL=redis://127.0.0.1:6379/8 \\
        --gateway-env DATABASE_URL=postgres://postgres@127.0.0.1:5432/h8
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

from bench.report import Row
from bench.scenarios import Bench, Spec, run_load, warm_up

REQUESTS = 100
SETTLE_SECONDS = 2.5  # the mirror's last batch, PostgreSQL's stats flush (about 1 s)
IDLE_SECONDS = 5.0
AUDIT_WRITES = ("audit_auditrecord:ins", "audit_auditrecord:upd", "audit_chainlink:ins")
PG_COUNTERS = ("xact_commit", "tup_inserted", "tup_updated", "tup_deleted")


@dataclass
class Counts:
    redis: Counter[str] = field(default_factory=Counter)  # command -> count, from clients
    lua: int = 0  # commands run inside scripts
    pg: Counter[str] = field(default_factory=Counter)  # PG_COUNTERS and table:ins/upd/del
    seconds: float = 0.0

    def redis_total(self) -> int:
        return sum(self.redis.values())


class Monitor:
    """Counts the commands Redis runs on one database, in a thread (MONITOR)."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.db = int(self.client.connection_pool.connection_kwargs.get("db", 0))
        self.counts: Counter[str] = Counter()
        self.lua = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stop = False

    def _run(self) -> None:
        with self.client.monitor() as monitor:
            for command in monitor.listen():
                if self._stop:
                    return
                if command.get("db") != self.db:
                    continue
                name = command["command"].split(" ", 1)[0].upper()
                with self._lock:
                    if command.get("client_type") == "lua":
                        self.lua += 1
                    else:
                        self.counts[name] += 1

    def start(self) -> Monitor:
        self._thread.start()
        time.sleep(0.3)
        return self

    def take(self) -> tuple[Counter[str], int]:
        with self._lock:
            taken, lua = self.counts, self.lua
            self.counts, self.lua = Counter(), 0
        return taken, lua

    def stop(self) -> None:
        self._stop = True
        self.client.ping()  # one more command wakes the thread to see it


_snapshots = 0


def pg_counters() -> Counter[str]:
    """This database's counters now (a fresh snapshot, not the transaction's)."""
    from django.db import connection

    global _snapshots
    found: Counter[str] = Counter()
    if connection.vendor != "postgresql":
        return found
    _snapshots += 1  # each is a transaction of this process's, counted in xact_commit
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            f"SELECT {', '.join(PG_COUNTERS)} FROM pg_stat_database "
            "WHERE datname = current_database()"
        )
        found.update(dict(zip(PG_COUNTERS, cursor.fetchone(), strict=True)))
        cursor.execute("SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables")
        for table, ins, upd, dele in cursor.fetchall():
            found[f"{table}:ins"], found[f"{table}:upd"] = ins, upd
            found[f"{table}:del"] = dele
    return found


def _audit_settled(quiet: float = 11.0, timeout: float = 90.0) -> None:
    """Wait until the audit tables have not changed for ``quiet`` seconds: the
    writer lags on a busy machine, and an idle PostgreSQL backend reports its
    counters up to 10 s late (PGSTAT_IDLE_INTERVAL); a window's records must
    not land in the next one."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    deadline, last, since = time.monotonic() + timeout, None, time.monotonic()
    while time.monotonic() < deadline:
        found = pg_counters()
        now = sum(found[k] for k in AUDIT_WRITES)  # not the instances' heartbeats
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(1.0)


@contextmanager
def window(monitor: Monitor | None, counts: Counts) -> Iterator[None]:
    """Count what happens in the block (and in the SETTLE_SECONDS after it)."""
    _audit_settled()  # what came before is written
    if monitor is not None:
        monitor.take()
    before = pg_counters()
    snapshots = _snapshots
    started = time.monotonic()
    yield
    time.sleep(SETTLE_SECONDS)
    _audit_settled()
    counts.seconds = time.monotonic() - started
    after = pg_counters()
    counts.pg = Counter({k: after[k] - before.get(k, 0) for k in after})
    counts.pg["xact_commit"] -= _snapshots - snapshots
    if monitor is not None:
        counts.redis, counts.lua = monitor.take()


def _sse_events(response: httpx.Response) -> Iterator[tuple[int, str]]:
    """(id, data) of each event of an SSE response."""
    event_id, data = 0, ""
    for line in response.iter_lines():
        if line.startswith("id:"):
            event_id = int(line[3:].strip())
        elif line.startswith("data:"):
            data = line[5:].strip()
        elif not line and data:
            yield event_id, data
            data = ""


def _finished_streams(url: str, token: str, model: str, count: int) -> list[tuple[str, int]]:
    """Stream ids of ``count`` finished streams on ``url``, each read up to its 10th event."""
    found = []
    headers = {"Authorization": f"Bearer {token}"}
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=30) as client:
        for _ in range(count):
            with client.stream(
                "POST", f"{url}/v1/chat/completions", json=body, headers=headers
            ) as response:
                stream_id = response.headers["X-Sluice-Stream-Id"]
                cursor = 0
                for cursor, _data in _sse_events(response):
                    if cursor >= 10:
                        break
            found.append((stream_id, cursor))
    return found


def _resume_all(url: str, token: str, streams: list[tuple[str, int]]) -> int:
    """Resume each stream after its cursor; the events received."""
    received = 0
    with httpx.Client(timeout=30) as client:
        for stream_id, cursor in streams:
            headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": str(cursor)}
            with client.stream("GET", f"{url}/v1/streams/{stream_id}", headers=headers) as r:
                r.raise_for_status()
                received += sum(1 for _ in _sse_events(r))
    return received


def measure(bench: Bench) -> dict[str, Counts]:
    """The four windows' counts (Redis ones empty without REDIS_URL)."""
    env = bench.workspace.env()
    url = env.get("REDIS_URL", "")
    monitor = Monitor(url).start() if url else None
    windows = {name: Counts() for name in ("idle", "short", "long", "resume")}
    long_model = bench.routes[bench.sizes.models()["paced"]]
    try:
        with bench.gateway() as a, bench.gateway() as b:
            warm_up(bench, a, "paced")
            warm_up(bench, b, "sequential")
            with window(monitor, windows["idle"]):
                time.sleep(IDLE_SECONDS)
            for name, key, concurrency in (("short", "sequential", 1), ("long", "paced", 50)):
                leg = bench.sluice(a, key)
                spec = Spec(legs=[leg], concurrency=concurrency, requests=REQUESTS)
                with window(monitor, windows[name]):
                    run_load(spec)
            a_url, b_url = f"http://127.0.0.1:{a.port}", f"http://127.0.0.1:{b.port}"
            _resume_all(b_url, bench.token, _finished_streams(a_url, bench.token, long_model, 2))
            streams = _finished_streams(a_url, bench.token, long_model, REQUESTS // 5)
            time.sleep(3.0)  # they end on A (2 s of tokens)
            if url:
                with window(monitor, windows["resume"]):
                    _resume_all(b_url, bench.token, streams)
    finally:
        if monitor is not None:
            monitor.stop()
    return windows


def _rate(counts: Counts, idle: Counts, value: float, idle_value: float) -> float:
    """``value`` less what the instances do idle over the same time."""
    return value - idle_value * counts.seconds / idle.seconds


def audit_write_rate(records: int = 2000, batch: int = 200) -> tuple[float, float]:
    """(records/s, seconds) storing ``records`` requests as the audit writer does:
    each a write-ahead batch, then the final entries (one attempt, a 100-token
    answer) in batches of ``batch``, into this run's database, chain and all."""
    from dataclasses import replace

    from audit.records import AttemptEntry, AuditEntry
    from audit.services import audit_records_write

    now = time.time()
    text = " ".join(f"tok{i}" for i in range(100))
    finals = [
        AuditEntry(
            request_id=f"chatcmpl-capacity-{now:.0f}-{n}",
            protocol="sse",
            public_model="bench",
            started_at=now - 2,
            ended_at=now,
            app_name="bench",
            provider="bench-upstream",
            upstream_model="fake",
            request_messages=[{"role": "user", "content": "hi"}],
            response_text=text,
            finish_reason="stop",
            outcome="completed",
            usage={"prompt_tokens": 1, "completion_tokens": 100, "total_tokens": 101},
            attempts=[
                AttemptEntry(provider="bench-upstream", upstream_model="fake", started_at=now - 2)
            ],
        )
        for n in range(records)
    ]
    started = time.perf_counter()
    for first in range(0, records, batch):
        chunk = finals[first : first + batch]
        ahead = [replace(e, outcome="in_progress", attempts=[], usage={}) for e in chunk]
        audit_records_write(entries=ahead)
        audit_records_write(entries=chunk)
    elapsed = time.perf_counter() - started
    return records / elapsed, elapsed


def capacity(bench: Bench) -> list[Row]:
    windows = measure(bench)
    idle, short, long, resume = (windows[k] for k in ("idle", "short", "long", "resume"))
    tokens = {"short": 10, "long": bench.sizes.paced_tokens}
    rows = []
    name = "capacity: what one request costs (counts)"

    def per(counts: Counts, value: float, idle_value: float, n: int) -> float:
        return _rate(counts, idle, value, idle_value) / n

    # Redis commands (sent, and run inside scripts: Redis does both): a + b * tokens
    # per request, from the short and long windows.
    def total(counts: Counts) -> int:
        return counts.redis_total() + counts.lua

    r_short = per(short, total(short), total(idle), REQUESTS)
    r_long = per(long, total(long), total(idle), REQUESTS)
    per_token = (r_long - r_short) / (tokens["long"] - tokens["short"])
    per_request = r_short - per_token * tokens["short"]
    sent = per(long, long.redis_total(), idle.redis_total(), REQUESTS)
    detail = ", ".join(f"{k} {v / REQUESTS:.1f}" for k, v in long.redis.most_common(6))
    rows += [
        Row(
            name,
            "Redis commands per request (fixed part) / per token, scripts' included",
            "—",
            f"{per_request:.1f} / {per_token:.2f}",
            f"{tokens['long']}-token request: {r_long:.1f}, of them sent {sent:.1f} "
            f"({detail}), run by scripts {per(long, long.lua, idle.lua, REQUESTS):.1f}",
            figures={"redis_per_request": per_request, "redis_per_token": per_token},
        ),
        Row(
            name,
            "Redis commands per instance per second, idle",
            "—",
            f"{idle.redis_total() / idle.seconds:.1f}",
            ", ".join(f"{k} {v}" for k, v in idle.redis.most_common(6))
            + f" over {idle.seconds:.1f} s",
        ),
    ]
    if resume.redis:
        resumed = REQUESTS // 5
        detail = ", ".join(f"{k} {v / resumed:.1f}" for k, v in resume.redis.most_common(6))
        total = per(resume, resume.redis_total(), idle.redis_total(), resumed)
        rows.append(
            Row(
                name,
                "Redis commands per resume on another instance (finished stream)",
                "—",
                f"{total:.1f}",
                detail,
            )
        )
    from django.db import connection

    if connection.vendor == "postgresql":
        pg = {k: per(long, long.pg[k], idle.pg[k], REQUESTS) for k in PG_COUNTERS}
        tables = Counter(
            {k: per(long, v, idle.pg[k], REQUESTS) for k, v in long.pg.items() if ":" in k}
        )
        detail = ", ".join(f"{k} {v:.2f}" for k, v in tables.most_common(8) if v >= 0.05)
        detail += (
            f"; {long.pg['xact_commit']} commits in the window of {REQUESTS} requests "
            f"({long.seconds:.1f} s)"
        )
        rows.append(
            Row(
                name,
                "PostgreSQL per request: commits / rows inserted / updated / deleted",
                "—",
                " / ".join(f"{pg[k]:.2f}" for k in PG_COUNTERS),
                detail,
                figures=pg,
            )
        )
        rate, seconds = audit_write_rate()
        rows.append(
            Row(
                name,
                "PostgreSQL audit records/s (write-ahead then final, batches of 200)",
                "—",
                f"{rate:,.0f}",
                f"2,000 records in {seconds:.1f} s from one process; timing: noisy on a shared VM",
            )
        )
        idle_pg = " / ".join(f"{idle.pg[k] / idle.seconds:.2f}" for k in PG_COUNTERS)
        rows.append(Row(name, "PostgreSQL per instance per second, idle", "—", idle_pg, ""))
    return rows

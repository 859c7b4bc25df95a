"""audit.spool and audit.store: audit batches wait in an fsync'd file while the database is away."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from django.db import OperationalError

from audit import store as store_module
from audit.models import AuditRecord
from audit.records import AuditEntry
from audit.services import audit_records_write
from audit.spool import Spool, decode_entry, encode_entry, spool_path
from audit.store import DurableStore
from audit.writer import audit_refusing
from tests.audit.conftest import make_attempt, make_entry


class Database:
    """The database as the store sees it: up or down, and what it was given, in order."""

    def __init__(self) -> None:
        self.down = False
        self.written: list[str] = []
        self.replays = threading.Event()  # cleared: replays wait
        self.replays.set()

    def __call__(self, entries: Sequence[AuditEntry]) -> None:
        if threading.current_thread().name == "audit-replay":
            self.replays.wait(10)
        if self.down:
            raise OperationalError("connection refused")
        self.written += [e.request_id for e in entries]


def wait_until(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def make_store(spool_dir: Path) -> Iterator:  # type: ignore[type-arg]
    made: list[DurableStore] = []

    def make(database: Database, *, owner: str = "alice-gw", max_bytes: int = 1 << 20):  # type: ignore[no-untyped-def]
        store = DurableStore(
            directory=spool_dir, owner=owner, max_bytes=max_bytes, write=database, max_backoff=0.1
        )
        made.append(store)
        return store

    yield make
    for store in made:
        store.stop()
        store.spool.close()


def test_an_entry_round_trips_exactly_with_its_attempts() -> None:
    entry = make_entry(
        "chatcmpl-rt",
        request_messages=[{"role": "user", "content": "nul \x00, é, 🦀", "n": [1, 2.5, None]}],
        request_params={"temperature": 0.1, "stop": ["\n"]},
        tool_calls=[{"id": "c1", "function": {"name": "f", "arguments": "{}"}}],
        cost_usd=1.23e-8,
        client_ip="::1",
        instance="host:1:abc",
        attempts=[
            make_attempt("a", outcome="failed", error_class="timeout", status_code=504),
            make_attempt("b", first_token_at=time.time(), tokens=7, cost_usd=3e-9),
        ],
    )
    line = encode_entry(entry)

    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_entry(line) == entry


def test_appends_are_fsynced_kept_in_order_and_survive_their_owner(spool_dir: Path) -> None:
    path = spool_path(spool_dir, "host:12:abc")
    spool = Spool(path, max_bytes=1 << 20)
    fsyncs: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    os.fsync = counting_fsync
    try:
        assert spool.append([encode_entry(make_entry(f"r{i}")) for i in range(3)])
        assert spool.append([encode_entry(make_entry("r3"))])
    finally:
        os.fsync = real_fsync
    assert len(fsyncs) == 2  # one per batch, before it is acknowledged
    spool.close()

    again = Spool(path, max_bytes=1 << 20)  # the owner died: its file is whole
    lines, offset = again.read(10)
    assert [decode_entry(line).request_id for line in lines] == ["r0", "r1", "r2", "r3"]
    assert (again.records, offset) == (4, again.size)
    again.close()


def test_an_outage_spools_batches_and_replays_them_in_order(make_store) -> None:  # type: ignore[no-untyped-def]
    database = Database()
    store = make_store(database)
    store.store([make_entry("before")])
    database.down = True

    store.store([make_entry("a1"), make_entry("a2")])
    store.store([make_entry("b1")])
    assert store.state()["spool_records"] == 3
    assert store.state()["spool_bytes"] == store.spool.size > 0
    database.replays.clear()
    database.down = False
    # Back, but the spool is not empty: a new batch goes behind it (order holds).
    store.store([make_entry("c1")])
    database.replays.set()

    wait_until(lambda: store.spool.size == 0)
    assert database.written == ["before", "a1", "a2", "b1", "c1"]
    assert store.state() == {
        "spool_records": 0,
        "spool_bytes": 0,
        "spool_full": 0,
        "spool_replayed": 4,
        "spool_lost": 0,
    }
    store.store([make_entry("d1")])  # drained: written directly again
    assert database.written[-1] == "d1" and store.spool.size == 0


def test_a_dead_owners_spool_is_adopted_replayed_and_removed(
    make_store, spool_dir, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(store_module, "ADOPT_SECONDS", 0.2)
    dead = Spool(spool_path(spool_dir, "bob-gw"), max_bytes=1 << 20)
    dead.append([encode_entry(make_entry("bob-1")), encode_entry(make_entry("bob-2"))])
    dead.close()  # its process is gone: the lock is free
    alive = Spool(spool_path(spool_dir, "charlie-gw"), max_bytes=1 << 20)
    alive.append([encode_entry(make_entry("charlie-1"))])

    database = Database()
    make_store(database)

    wait_until(lambda: database.written == ["bob-1", "bob-2"])
    wait_until(lambda: not spool_path(spool_dir, "bob-gw").exists())
    assert spool_path(spool_dir, "charlie-gw").exists()  # its owner holds the lock
    assert database.written == ["bob-1", "bob-2"]

    alive.close()  # charlie dies while this store runs: adopted at the next look
    wait_until(lambda: database.written == ["bob-1", "bob-2", "charlie-1"])
    wait_until(lambda: not spool_path(spool_dir, "charlie-gw").exists())


def test_a_full_spool_raises_the_alarm_refuses_or_drops(make_store, settings, caplog) -> None:  # type: ignore[no-untyped-def]
    database = Database()
    database.down = True
    line = len(encode_entry(make_entry("x0")))
    store = make_store(database, max_bytes=line * 2 + 10)
    store.store([make_entry("x0"), make_entry("x1")])
    assert not store.full

    with caplog.at_level(logging.ERROR, logger="audit.store"):
        store.store([make_entry("x2")])
        store.store([make_entry("x3")])
    assert store.full
    assert store.state()["spool_full"] == 1 and store.state()["spool_lost"] == 2
    alarms = [r for r in caplog.records if "AUDIT RECORDS LOST" in r.getMessage()]
    assert len(alarms) == 1  # throttled
    assert "the audit spool is full" in alarms[0].getMessage()

    store_module._Local.store, store_module._Local.pid = store, os.getpid()
    try:
        settings.SLUICE_AUDIT_SPOOL_FULL = "refuse"
        assert audit_refusing()
        settings.SLUICE_AUDIT_SPOOL_FULL = "drop"
        assert not audit_refusing()
        settings.SLUICE_AUDIT_SPOOL_FULL = "refuse"
        database.down = False  # drained: the alarm ends, requests are accepted again
        wait_until(lambda: not store.full)
        assert not audit_refusing()
    finally:
        store_module._Local.store = None
    assert database.written == ["x0", "x1"]


@pytest.mark.django_db(transaction=True)
def test_replays_are_idempotent_and_a_final_record_is_never_replaced_by_its_write_ahead(
    make_store, spool_dir
) -> None:  # type: ignore[no-untyped-def]
    final = make_entry("chatcmpl-a", attempts=[make_attempt("a")])
    ahead = replace(final, outcome="in_progress", attempts=[], response_text="", ended_at=None)
    other = make_entry("chatcmpl-b", outcome="in_progress", response_text="")
    lines = [encode_entry(e) for e in (ahead, final, other)]
    for owner in ("dead-1", "dead-2"):  # the same records spooled twice (a replay repeated)
        spool = Spool(spool_path(spool_dir, owner), max_bytes=1 << 20)
        spool.append(lines)
        spool.close()

    written: list[str] = []

    def database(entries: Sequence[AuditEntry]) -> None:
        audit_records_write(entries=entries)
        written.extend(e.request_id for e in entries)

    make_store(database)
    wait_until(lambda: len(written) == 6)
    # Late duplicates in the worst order: the write-ahead after its final entry.
    audit_records_write(entries=[ahead])
    audit_records_write(entries=[final, ahead])

    assert AuditRecord.objects.count() == 2
    a = AuditRecord.objects.get(request_id="chatcmpl-a")
    assert (a.outcome, a.response_text, a.attempts.count()) == ("completed", "The Danube.", 1)
    assert AuditRecord.objects.get(request_id="chatcmpl-b").outcome == "in_progress"

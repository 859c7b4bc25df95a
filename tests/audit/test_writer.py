from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence

import pytest

from audit import writer as audit_writer
from audit.models import AuditRecord
from audit.process import ProcessWrite
from audit.records import AuditEntry
from audit.writer import AuditWriter, audit_flush, audit_submit, audit_writer_stats
from streaming.core.outcome import write_ahead
from tests.audit.conftest import make_attempt, make_entry


class FlakyWrite:
    """A stand-in for the database write that fails on demand and records calls."""

    def __init__(self, *, fail_times: int = 0, poison: str | None = None) -> None:
        self.fail_times = fail_times
        self.poison = poison
        self.calls: list[list[str]] = []
        self.backlogs: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, entries: Sequence[AuditEntry], backlog: int) -> None:
        self.entered.set()
        self.release.wait(10)
        ids = [e.request_id for e in entries]
        self.calls.append(ids)
        self.backlogs.append(backlog)
        if self.fail_times > 0:
            self.fail_times -= 1
            raise OSError("database is locked")
        if self.poison in ids:
            raise ValueError("secret prompt text in the error")


@pytest.fixture
def writers() -> list[AuditWriter]:
    return []


@pytest.fixture(autouse=True)
def _stop_writers(writers: list[AuditWriter]):
    yield
    for writer in writers:
        assert writer.stop(timeout=5)


def _writer(writers: list[AuditWriter], write: FlakyWrite, **options) -> AuditWriter:
    options.setdefault("batch_seconds", 0.01)
    writer = AuditWriter(backoff_seconds=0, write=write, **options)
    writers.append(writer)
    return writer


@pytest.mark.django_db(transaction=True)
def test_submitted_entries_are_written_with_attempts() -> None:
    assert audit_submit(
        make_entry(
            "chatcmpl-w1",
            attempts=[make_attempt("anthropic", outcome="failed"), make_attempt("openai")],
        )
    )
    assert audit_submit(make_entry("chatcmpl-w2", protocol="ws"))
    assert audit_flush()

    record = AuditRecord.objects.get(request_id="chatcmpl-w1")
    assert [a.provider for a in record.attempts.all()] == ["anthropic", "openai"]
    assert AuditRecord.objects.get(request_id="chatcmpl-w2").protocol == "ws"
    assert audit_writer_stats()["queue_depth"] == 0


@pytest.mark.django_db(transaction=True)
def test_a_stream_ending_twice_updates_its_record() -> None:
    audit_submit(make_entry("chatcmpl-twice", outcome="client_disconnected"))
    assert audit_flush()
    audit_submit(make_entry("chatcmpl-twice", outcome="completed", resumes=1))
    audit_submit(make_entry("chatcmpl-other"))
    assert audit_flush()

    record = AuditRecord.objects.get(request_id="chatcmpl-twice")
    assert (record.outcome, record.resumes) == ("completed", 1)
    assert AuditRecord.objects.count() == 2


def test_submit_never_blocks_on_a_stuck_database(writers, caplog) -> None:
    write = FlakyWrite()
    write.release.clear()
    writer = _writer(writers, write, maxsize=2)
    writer.submit(make_entry("r1"))
    assert write.entered.wait(5)  # the thread holds r1 inside a stuck write

    # The write stays stuck until released below: a submit that waited on it
    # would still be waiting after 5 s (no timing is measured).
    results: list[bool] = []
    submitting = threading.Thread(
        target=lambda: results.extend(
            writer.submit(make_entry(f"r{i}", response_text="private")) for i in (2, 3, 4)
        )
    )
    submitting.start()
    submitting.join(timeout=5)
    assert not submitting.is_alive(), "submit waited on the stuck database write"

    assert results == [True, True, False]
    assert writer.stats() == {
        "queue_depth": 2,
        "written": 0,
        "failed": 0,
        "dropped": 1,
        "shed": 0,
    }
    assert "r4" in caplog.text
    assert "private" not in caplog.text
    assert writer.flush(timeout=0.05) is False

    write.release.set()
    assert writer.flush()
    assert writer.stats()["written"] == 3


def test_refused_requests_give_way_to_served_ones_in_a_filling_queue(writers) -> None:
    """A flood of refusals cannot crowd served requests' records out of the queue:
    a refusal's record is queued only while the queue is under half full."""
    write = FlakyWrite()
    write.release.clear()
    writer = _writer(writers, write, maxsize=4)
    writer.submit(make_entry("held"))
    assert write.entered.wait(5)  # the thread holds it inside a stuck write

    assert writer.submit(make_entry("refused-1", outcome="rejected"), spare=True)
    assert writer.submit(make_entry("served-1"))
    assert not writer.submit(make_entry("refused-2", outcome="rejected"), spare=True)
    assert writer.submit(make_entry("served-2")) and writer.submit(make_entry("served-3"))
    assert (writer.stats()["shed"], writer.stats()["dropped"]) == (1, 0)

    write.release.set()
    assert writer.flush()
    written = [request_id for call in write.calls for request_id in call]
    assert written == ["held", "refused-1", "served-1", "served-2", "served-3"]


def test_a_write_ahead_is_written_within_its_own_short_delay(writers, monkeypatch) -> None:
    """A request's record exists soon after it is accepted, not a writer's period
    later: a gateway killed after SLUICE_AUDIT_WRITE_AHEAD_SECONDS has handed it over.
    Here the writer's period is a minute: only the write-ahead's wake-up is quick."""
    write = FlakyWrite()
    writer = _writer(writers, write, batch_seconds=60)
    monkeypatch.setattr(audit_writer, "_writer", writer)
    writer.submit(make_entry("earlier"))  # an ordinary entry waits for the period

    async def accept() -> bool:
        write_ahead(make_entry("accepted"))
        write_ahead(make_entry("accepted-too"))  # one wake-up for both
        for _ in range(100):
            if write.calls:
                return True
            await asyncio.sleep(0.05)
        return False

    assert asyncio.run(accept()), "the write-ahead waited for the writer's period"
    assert write.calls == [["earlier", "accepted", "accepted-too"]]


def test_a_failed_batch_is_retried(writers) -> None:
    write = FlakyWrite(fail_times=2)
    writer = _writer(writers, write, retries=2)
    writer.submit(make_entry("r1"))

    assert writer.flush()
    assert write.calls == [["r1"]] * 3
    assert writer.stats()["written"] == 1
    assert writer.stats()["failed"] == 0


def test_a_batch_that_keeps_failing_is_written_entry_by_entry(writers, caplog) -> None:
    write = FlakyWrite(poison="bad")
    write.release.clear()
    writer = _writer(writers, write, retries=1)
    writer.submit(make_entry("first"))
    assert write.entered.wait(5)
    for request_id in ("good", "bad", "also-good"):
        writer.submit(make_entry(request_id))
    write.release.set()

    with caplog.at_level(logging.WARNING, logger="audit.writer"):
        assert writer.flush()

    assert writer.stats()["written"] == 3
    assert writer.stats()["failed"] == 1
    assert ["good", "bad", "also-good"] in write.calls
    assert write.calls[-3:] == [["good"], ["bad"], ["also-good"]]
    assert "audit record bad lost" in caplog.text
    assert "secret prompt" not in caplog.text


def test_a_single_entry_that_keeps_failing_is_counted(writers, caplog) -> None:
    writer = _writer(writers, FlakyWrite(fail_times=10), retries=2)
    writer.submit(make_entry("doomed"))

    assert writer.flush()
    assert writer.stats()["failed"] == 1
    assert "audit record doomed lost" in caplog.text


def test_stop_writes_what_is_queued_and_a_later_submit_restarts(writers) -> None:
    write = FlakyWrite()
    writer = _writer(writers, write)
    writer.submit(make_entry("before"))
    assert writer.stop()
    assert writer.stats()["written"] == 1

    writer.submit(make_entry("after"))
    assert writer.flush()
    assert writer.stats()["written"] == 2


def test_flush_without_any_submit_returns_at_once(writers) -> None:
    assert _writer(writers, FlakyWrite()).flush(timeout=0.01)


def test_entries_wait_for_the_period_and_go_out_together(writers) -> None:
    # The thread is not woken per entry (each wake-up takes the GIL from the
    # event loop): entries submitted within one period are one write.
    write = FlakyWrite()
    writer = _writer(writers, write, batch_seconds=0.5)
    for request_id in ("a", "b", "c"):
        writer.submit(make_entry(request_id))
    assert write.entered.wait(5)  # written after the period, without a flush
    assert writer.flush()
    assert write.calls == [["a", "b", "c"]]


def test_a_flush_or_a_full_batch_does_not_wait_for_the_period(writers) -> None:
    # A period longer than every timeout below: only a wake-up can explain a write.
    write = FlakyWrite()
    writer = _writer(writers, write, batch_size=2, batch_seconds=3600)
    writer.submit(make_entry("one"))
    assert writer.flush(timeout=5)
    assert write.calls == [["one"]]

    write.entered.clear()
    writer.submit(make_entry("two"))
    writer.submit(make_entry("three"))  # a full batch
    assert write.entered.wait(5)
    assert writer.flush()
    assert write.calls == [["one"], ["two", "three"]]


def test_each_write_is_told_how_many_entries_wait_behind_its_batch(writers) -> None:
    # How the audit process tells a writer that is behind from a busy one.
    write = FlakyWrite()
    write.release.clear()
    writer = _writer(writers, write, batch_size=2, batch_seconds=3600)
    writer.submit(make_entry("a"))
    writer.submit(make_entry("b"))  # a full batch: written at once, and held there
    assert write.entered.wait(5)
    for request_id in ("c", "d", "e"):
        writer.submit(make_entry(request_id))
    write.release.set()
    deadline = time.monotonic() + 5
    while len(write.calls) < 2 and time.monotonic() < deadline:  # "e" waits for the period
        time.sleep(0.01)
    assert writer.flush()
    assert write.calls == [["a", "b"], ["c", "d"], ["e"]]
    assert write.backlogs == [0, 1, 0]


def test_an_entry_that_cannot_be_encoded_is_counted_and_named(writers, caplog) -> None:
    write = FlakyWrite()
    writer = _writer(writers, write, encode=ProcessWrite().encode)
    secret = "my card number is 4111"
    unpicklable = make_entry("chatcmpl-odd", response_text=secret, usage={"f": lambda: secret})

    assert not writer.submit(unpicklable)
    assert writer.submit(make_entry("chatcmpl-next"))
    assert writer.flush()

    assert write.calls == [["chatcmpl-next"]]
    assert writer.stats()["failed"] == 1
    (lost,) = [r.getMessage() for r in caplog.records if "lost" in r.getMessage()]
    assert lost.startswith("audit record chatcmpl-odd lost: cannot be encoded: ")
    assert secret not in caplog.text

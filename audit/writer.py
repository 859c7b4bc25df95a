"""The background audit writer: requests hand entries over, a thread stores them.

``submit`` never blocks and never touches the database, so a slow or locked
database cannot stall a stream: when the bounded queue is full the entry is
dropped, counted and its request_id logged. A daemon thread drains the queue
in batches and writes each batch in one transaction, retrying with backoff;
a batch that keeps failing is retried entry by entry so one bad entry cannot
take the others with it. Nothing is lost without a log line naming it.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.db import connections

from audit.process import AuditWriteFailed, ProcessWrite
from audit.records import AuditEntry
from audit.store import durable_store, local_spool_full, local_spool_state

logger = logging.getLogger(__name__)


class Queued(Protocol):
    """What the queue holds: an entry, or what ``encode`` made of one."""

    @property
    def request_id(self) -> str: ...


# A batch, and how many entries are still queued behind it.
WriteBatch = Callable[[Sequence[Any], int], object]
Encode = Callable[[AuditEntry], Queued]


def _write_to_database(entries: Sequence[AuditEntry], backlog: int = 0) -> object:
    # The database, or this process's spool while it is away (audit.store).
    durable_store().store(entries)
    return len(entries)


@dataclass(slots=True)
class _Control:
    """A marker in the queue: everything before it has been handled once ``done`` is set."""

    stop: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class AuditWriter:
    """A bounded queue of audit entries and the daemon thread that writes them.

    The thread starts on the first ``submit`` (again in a forked child).
    """

    BATCH_SIZE = 200

    def __init__(
        self,
        *,
        maxsize: int = 10_000,
        batch_size: int = BATCH_SIZE,
        batch_seconds: float = 0.25,
        retries: int = 2,
        backoff_seconds: float = 0.2,
        write: WriteBatch = _write_to_database,
        encode: Encode | None = None,
    ) -> None:
        """``encode``, if given, turns each entry into what ``write`` takes, in ``submit``."""
        self._queue: queue.Queue[Queued | _Control] = queue.Queue(maxsize)
        self._wake = threading.Event()  # a full batch or a flush: do not wait for the period
        self._maxsize = maxsize
        self._batch_size = batch_size
        self._batch_seconds = batch_seconds
        self._retries = retries
        self._backoff_seconds = backoff_seconds
        self._write = write
        self._encode = encode
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._thread: threading.Thread | None = None
        self.written = 0
        self.failed = 0
        self.dropped = 0
        self.shed = 0

    def submit(self, entry: AuditEntry, *, spare: bool = False) -> bool:
        """Queue an entry for writing; False (and the entry dropped) if the queue is full.

        A ``spare`` entry (a refused request's record) is queued only while the
        queue is under half full, else counted as ``shed``: a flood of refusals
        cannot crowd out the records of requests that were served.
        """
        if spare and self._queue.qsize() >= self._maxsize // 2:
            with self._lock:
                self.shed += 1
            return False
        if self._pid != os.getpid():
            self._start()
        item = self._encoded(entry)
        if item is None:
            return False
        try:
            self._queue.put_nowait(item)
            if self._queue.qsize() >= self._batch_size:
                self._wake.set()
        except queue.Full:
            with self._lock:
                self.dropped += 1
            logger.warning("audit queue full: dropped record %s", entry.request_id)
            return False
        return True

    def _encoded(self, entry: AuditEntry) -> Queued | None:
        if self._encode is None:
            return entry
        try:
            return self._encode(entry)
        except Exception as exc:
            with self._lock:
                self.failed += 1
            # The class only, as for failed writes: an error's text can quote content.
            reason = type(exc).__name__
            logger.error("audit record %s lost: cannot be encoded: %s", entry.request_id, reason)
            return None

    def wake(self) -> None:
        """Take what is queued now, not at the end of the period."""
        self._wake.set()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every entry submitted so far is written (or given up); False on timeout."""
        return self._send(_Control(), timeout)

    def stop(self, timeout: float = 5.0) -> bool:
        """Write what is queued, then end the thread; a later submit starts it again."""
        stopped = self._send(_Control(stop=True), timeout)
        if stopped and self._thread is not None:
            self._thread.join(timeout)
        close = getattr(self._write, "close", None)
        if stopped and close is not None:
            close()
        with self._lock:
            if stopped:
                self._pid = None
                self._thread = None
        return stopped

    def stats(self) -> dict[str, int]:
        return {
            "queue_depth": self._queue.qsize(),
            "written": self.written,
            "failed": self.failed,
            "dropped": self.dropped,
            "shed": self.shed,
        }

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            if self._pid is not None:
                # Forked: the parent's queue and thread are not ours.
                self._queue = queue.Queue(self._maxsize)
                self._wake = threading.Event()
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()
            self._pid = os.getpid()

    def _send(self, control: _Control, timeout: float) -> bool:
        if self._pid != os.getpid():
            return True  # never started here: nothing submitted
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(control, timeout=timeout)
        except queue.Full:
            return False
        self._wake.set()
        return control.done.wait(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        try:
            while True:
                batch, control = self._collect()
                if batch:
                    self._write_batch(batch)
                # Not kept while waiting for the next one: prompts and texts can be big.
                del batch
                if control is not None:
                    control.done.set()
                    if control.stop:
                        return
        finally:
            connections.close_all()

    def _collect(self) -> tuple[list[Queued], _Control | None]:
        """Wait until a batch is due, then take what is queued (at most a batch).

        The thread wakes once per ``batch_seconds``, or at once for a full
        batch or a flush, never once per entry: every wake-up takes the GIL
        from the event loop's thread, which then waits until this thread has
        had a core. With the machine busy that wait was milliseconds, and at
        one wake-up per request it showed on the gateway's first-token tail.
        """
        if self._queue.qsize() < self._batch_size:
            self._wake.wait(self._batch_seconds)
        self._wake.clear()
        batch: list[Queued] = []
        while len(batch) < self._batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Control):
                return batch, item
            batch.append(item)
        return batch, None

    def _write_batch(self, batch: list[Queued]) -> None:
        if self._write_with_retries(batch):
            self.written += len(batch)
            return
        if len(batch) == 1:
            self._give_up(batch[0])
            return
        for entry in batch:
            if self._try_write([entry]):
                self.written += 1
            else:
                self._give_up(entry)

    def _write_with_retries(self, batch: list[Queued]) -> bool:
        for attempt in range(self._retries + 1):
            if attempt:
                time.sleep(self._backoff_seconds * 2 ** (attempt - 1))
            if self._try_write(batch):
                return True
        return False

    def _try_write(self, entries: Sequence[Queued]) -> bool:
        # The thread keeps its connection between batches (opening one cost
        # more than writing a batch); a broken one fails the write, is closed
        # here, and the retry opens a new one.
        try:
            self._write(entries, self._queue.qsize())
        except Exception as exc:
            # The class only: database errors can quote the row, i.e. content.
            reason = str(exc) if isinstance(exc, AuditWriteFailed) else type(exc).__name__
            logger.warning("audit write of %d record(s) failed: %s", len(entries), reason)
            connections.close_all()
            return False
        return True

    def _give_up(self, entry: Queued) -> None:
        self.failed += 1
        logger.error("audit record %s lost: could not be written", entry.request_id)


_writer: AuditWriter | None = None
_writer_lock = threading.Lock()


def _default_writer() -> AuditWriter:
    global _writer
    if _writer is None:
        with _writer_lock:
            if _writer is None:
                _writer = _new_writer(_write_to_database)
    return _writer


def _new_writer(write: WriteBatch, encode: Encode | None = None) -> AuditWriter:
    from django.conf import settings

    writer = AuditWriter(maxsize=settings.SLUICE_AUDIT_QUEUE_SIZE, write=write, encode=encode)
    atexit.register(writer.stop)
    return writer


def audit_writer_use_process() -> None:
    """From now on, store batches from a child process (see ``audit.process``).

    The served gateway calls this at start-up; without it (tests, scripts,
    ``runserver``) the writer thread stores batches itself.
    """
    global _writer
    write = ProcessWrite(urgent_backlog=AuditWriter.BATCH_SIZE)
    try:
        write.start()
    except Exception:
        logger.exception("could not start the audit writer process: storing from a thread")
        return
    with _writer_lock:
        previous, _writer = _writer, _new_writer(write, encode=write.encode)
    if previous is not None:
        previous.stop()


def audit_submit(entry: AuditEntry, *, spare: bool = False) -> bool:
    """Hand one finished request's entry to the background writer; never blocks
    (``spare``: a refused request's, kept only while the queue has room to spare)."""
    return _default_writer().submit(entry, spare=spare)


def audit_wake() -> None:
    """Have the writer take what is queued now instead of at the end of its period."""
    if _writer is not None:
        _writer.wake()


def audit_flush(timeout: float = 5.0) -> bool:
    """Block until every entry submitted so far is written; for tests and shutdown."""
    return _writer.flush(timeout) if _writer is not None else True


def audit_writer_stats() -> dict[str, int]:
    """The writer's queue and counts, and the spool's (``audit.store.STATE_KEYS``)."""
    if _writer is None:
        stats = {"queue_depth": 0, "written": 0, "failed": 0, "dropped": 0, "shed": 0}
    else:
        stats = _writer.stats()
    return {**stats, **_spool_state()}


def _spool_state() -> dict[str, int]:
    write = _writer._write if _writer is not None else None
    if isinstance(write, ProcessWrite):
        return write.spool_state()
    return local_spool_state()


def audit_refusing() -> bool:
    """New requests must be refused: the spool is full and the policy says refuse.

    Cheap enough for every request (a flag read).
    """
    from django.conf import settings

    write = _writer._write if _writer is not None else None
    full = write.spool_full if isinstance(write, ProcessWrite) else local_spool_full()
    return full and settings.SLUICE_AUDIT_SPOOL_FULL == "refuse"


def audit_writer_stop(timeout: float = 5.0) -> bool:
    """Write what is queued and end the thread, and its process if it has one (shutdown)."""
    return _writer.stop(timeout) if _writer is not None else True

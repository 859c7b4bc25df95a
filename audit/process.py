"""Audit writes in a process of their own, on CPU time nobody else wants.

Turning an audit entry into rows (field conversions, the driver, the
database's own work) costs about 90 µs of CPU a record. Done by a thread of
the gateway's process, that ran under its GIL, in bursts, and showed up as
milliseconds on the first token of whatever streamed at that moment; done
by a normal process it still took a core from the gateway, the upstream or
the client. ``ProcessWrite`` is the writer thread's write function when the
gateway is served: it pickles a batch down a pipe to a child process, whose
``SCHED_IDLE`` thread runs ``audit_records_write`` and answers with nothing
(stored) or the error's class name. A full batch means the writer is behind:
the child stores it at normal priority, so a busy machine slows the audit
down but cannot starve it. The writer thread's queue, retries, flush and drop
accounting are unchanged; a child that dies fails the batch in flight (the
thread retries it) and is started again.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from audit.records import AuditEntry

logger = logging.getLogger(__name__)

_STOP = None  # what the parent sends to end the child


class AuditWriteFailed(Exception):
    """The child could not store a batch; the message is the error's class name."""


def _serve(conn: Connection) -> None:
    """The child: store each batch that arrives; end at the stop marker or EOF."""
    # The parent decides when to stop (after its last flush); the child must
    # not die first from the terminal's Ctrl-C or the service manager's TERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")
    import django

    django.setup()
    from django.db import connections

    idle = ThreadPoolExecutor(1, "audit-idle", initializer=_run_when_idle)
    while True:
        try:
            message = conn.recv()
        except EOFError:
            break
        if message is _STOP:
            break
        urgent, batch = message
        conn.send(_store(batch) if urgent else idle.submit(_store, batch).result())
    idle.submit(connections.close_all).result()
    idle.shutdown()
    connections.close_all()


def _store(batch: list[AuditEntry]) -> str | None:
    """Store a batch; None, or the class name of the error (never its text: content)."""
    from django.db import connections

    from audit.services import audit_records_write

    try:
        audit_records_write(entries=batch)
    except Exception as exc:
        connections.close_all()  # a broken connection is reopened by the next batch
        return type(exc).__name__
    return None


def _run_when_idle() -> None:
    """Give this thread only CPU time nobody else wants.

    Nice values do not do it: under Linux's EEVDF scheduler a nice 19 writer
    still held the gateway, the fake upstream or the client off a core for a
    few ms (sequential p99 +4 to +5 ms, as with no nice at all). A
    ``SCHED_IDLE`` thread is preempted as soon as any normal one wakes up.
    Any process may lower its own thread to it; none may raise it back
    without CAP_SYS_NICE, which is why urgent batches go to another thread.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux
        os.nice(19)


class ProcessWrite:
    """The writer thread's write function: one batch down the pipe, one answer back.

    Called from one thread at a time (the writer's). The child is started on
    the first call after ``start`` or after it died, in this process only.
    """

    def __init__(self, *, urgent_size: int = 200, stop_seconds: float = 5.0) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._urgent_size = urgent_size
        self._stop_seconds = stop_seconds
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._child: BaseProcess | None = None
        self._pid: int | None = None

    def start(self) -> None:
        """Start the child now, so its Django start-up overlaps the gateway's."""
        with self._lock:
            self._ensure()

    def __call__(self, entries: Sequence[AuditEntry]) -> int:
        with self._lock:
            conn = self._ensure()
            try:
                conn.send((len(entries) >= self._urgent_size, list(entries)))
                answer = conn.recv()
            except (EOFError, OSError) as exc:
                self._discard()
                raise AuditWriteFailed(f"audit process gone: {type(exc).__name__}") from None
        if answer is not None:
            raise AuditWriteFailed(answer)
        return len(entries)

    def close(self) -> None:
        """End the child once the batch in flight is answered; kill it if it does not end.

        Also runs at exit, before multiprocessing's own exit handler (which
        would wait forever on a child that ignores SIGTERM).
        """
        locked = self._lock.acquire(timeout=self._stop_seconds)
        try:
            if locked and self._conn is not None and self._pid == os.getpid():
                with contextlib.suppress(OSError):  # already gone
                    self._conn.send(_STOP)
            self._discard()
        finally:
            if locked:
                self._lock.release()

    @property
    def pid(self) -> int | None:
        """The child's process id, once started (for operators and tests)."""
        child = self._child
        return child.pid if child is not None and self._pid == os.getpid() else None

    def _ensure(self) -> Connection:
        if self._pid != os.getpid():  # never started, or forked: not ours
            self._conn = self._child = None
        if self._conn is None or self._child is None or not self._child.is_alive():
            self._discard()
            ours, theirs = self._context.Pipe()
            child = self._context.Process(
                target=_serve, args=(theirs,), name="sluice-audit-writer", daemon=True
            )
            child.start()
            theirs.close()
            if self._pid is None:
                atexit.register(self.close)
            self._conn, self._child, self._pid = ours, child, os.getpid()
            logger.info("audit writer process %s started", child.pid)
        return self._conn

    def _discard(self) -> None:
        conn, child = self._conn, self._child
        self._conn = self._child = None
        if child is not None and self._pid == os.getpid():
            child.join(self._stop_seconds)
            if child.is_alive():
                logger.warning("audit writer process %s did not stop: killed", child.pid)
                child.kill()
                child.join(1)
        if conn is not None:
            conn.close()

"""Audit writes in a process of their own, on CPU time nobody else wants.

Turning an audit entry into rows (field conversions, the driver, the
database's own work) costs about 90 µs of CPU a record. Done by a thread of
the gateway's process, that ran under its GIL, in bursts, and showed up as
milliseconds on the first token of whatever streamed at that moment; done
by a normal process it still took a core from the gateway, the upstream or
the client. ``ProcessWrite`` is the writer thread's write function when the
gateway is served: it pickles a batch down a pipe to a child process, whose
``SCHED_IDLE`` thread runs ``audit_records_write`` and answers with nothing
(stored) or the error's class name. The writer thread's queue, retries,
flush and drop accounting are unchanged; a child that dies fails the batch
in flight (the thread retries it) and is started again.

Every step in the gateway's process that is not I/O holds its GIL, which
the event loop then waits out, so they are kept small:
- entries are pickled one by one as they are submitted, on the event loop's
  thread (``ProcessWrite.encode``, about 10 µs each), so the writer thread
  only moves bytes. Pickling a batch of 200 there took 1.5 to 7 ms, every
  quarter second under load;
- the child unpickles in its idle thread too: its main thread, at normal
  priority, only moves bytes;
- a batch is stored at normal priority only when the writer is behind, that
  is, when a full batch more is already queued behind it, or when the idle
  thread got no CPU to begin it within IDLE_WAIT_SECONDS (every core busy:
  a busy machine slows the audit down but cannot starve it; before the
  second rule, a quiet gateway's few records waited as long as the cores
  were busy). Before, every full batch was:
  at 700 requests a second that was every other one, each taking a core
  for 20 to 60 ms.
Together these were most of the sequential benchmark's first-token p99.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from audit.instance import instance_id
from audit.records import AuditEntry
from audit.store import STATE_KEYS

logger = logging.getLogger(__name__)

_STOP = None  # what the parent sends to end the child
IDLE_WAIT_SECONDS = 1.0


class AuditWriteFailed(Exception):
    """The child could not store a batch; the message is the error's class name."""


@dataclass(frozen=True, slots=True)
class PickledEntry:
    """An audit entry already pickled for the child, with the id the writer logs."""

    request_id: str
    data: memoryview


class _Slab:
    """Where pickled entries wait for the child: 256 KiB blocks of their own.

    A ``bytes`` of its own per entry (a ~0.5 KiB block of the heap, alive for
    up to a quarter second among the requests' long-lived allocations) left
    the heap full of holes: 12 MiB more RSS after 20,000 requests. A block is
    a mapping (``streaming.core.memory.map_large_buffers``), unmapped when the last
    entry in it has gone to the child. A big entry keeps its own ``bytes``.
    """

    SIZE = 256 * 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._block = memoryview(bytearray())
        self._used = 0

    def keep(self, data: bytes) -> memoryview:
        size = len(data)
        if size > self.SIZE // 4:
            return memoryview(data)
        with self._lock:
            if self._used + size > len(self._block):
                self._block, self._used = memoryview(bytearray(self.SIZE)), 0
            view = self._block[self._used : self._used + size]
            self._used += size
        view[:] = data
        return view


def _serve(conn: Connection, instance: str, spool_state: Any) -> None:
    """The child: store each batch that arrives; end at the stop marker or EOF.

    It works as ``instance`` (its spool file is that instance's) and keeps
    ``spool_state`` (shared memory, read by the parent for its metrics and
    for refusing requests when the spool is full) up to date.
    """
    # The parent decides when to stop (after its last flush); the child must
    # not die first from the terminal's Ctrl-C or the service manager's TERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")
    import django

    django.setup()
    from django.db import connections

    from audit.instance import set_instance_id
    from audit.store import STATE_KEYS, durable_store, publish_state_to

    set_instance_id(instance)

    def publish(state: dict[str, int]) -> None:
        spool_state[:] = [state[key] for key in STATE_KEYS]

    publish_state_to(publish)
    store = durable_store()  # now: its spool is locked, dead ones adopted, from the start
    idle = ThreadPoolExecutor(1, "audit-idle", initializer=_run_when_idle)
    while True:
        try:
            message = conn.recv()
        except EOFError:
            break
        if message is _STOP:
            break
        urgent, pickled = message
        answer = _store(pickled) if urgent else _store_when_idle(idle, pickled)
        try:
            conn.send(answer)
        except OSError:  # the gateway is gone (killed): what it sent is stored
            break
    idle.submit(connections.close_all).result()
    idle.shutdown()
    store.stop()
    connections.close_all()


def _store_when_idle(idle: ThreadPoolExecutor, pickled: list[bytes]) -> str | None:
    """Store a batch on the idle thread; at normal priority if that thread got no
    CPU to begin it within IDLE_WAIT_SECONDS (every core busy: a SCHED_IDLE
    thread may wait for as long as they are, and records must not)."""
    future = idle.submit(_store, pickled)
    try:
        return future.result(timeout=IDLE_WAIT_SECONDS)
    except FutureTimeout:
        return _store(pickled) if future.cancel() else future.result()


def _store(pickled: list[bytes]) -> str | None:
    """Store a batch (or spool it, see ``audit.store``); None, or the class name
    of the error (never its text: content)."""
    from django.db import connections

    from audit.store import durable_store

    try:
        durable_store().store([pickle.loads(data) for data in pickled])
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
    without CAP_SYS_NICE, which is why urgent batches are stored by another thread.
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

    def __init__(self, *, urgent_backlog: int = 200, stop_seconds: float = 5.0) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._urgent_backlog = urgent_backlog
        self._slab = _Slab()
        self._stop_seconds = stop_seconds
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._child: BaseProcess | None = None
        self._pid: int | None = None
        # What the child's spool holds (audit.store.STATE_KEYS), kept live by the child.
        self._spool_state: Any = self._context.Array("q", len(STATE_KEYS), lock=False)

    def spool_state(self) -> dict[str, int]:
        """The child's spool: records and bytes waiting, full, replayed and lost counts."""
        return dict(zip(STATE_KEYS, self._spool_state, strict=True))

    @property
    def spool_full(self) -> bool:
        return bool(self._spool_state[2])

    def start(self) -> None:
        """Start the child now, so its Django start-up overlaps the gateway's."""
        with self._lock:
            self._ensure()

    def encode(self, entry: AuditEntry) -> PickledEntry:
        """What the writer queues instead of the entry (see the module's docstring)."""
        data = pickle.dumps(entry, pickle.HIGHEST_PROTOCOL)
        return PickledEntry(entry.request_id, self._slab.keep(data))

    def __call__(self, entries: Sequence[AuditEntry | PickledEntry], backlog: int = 0) -> int:
        """Store ``entries``; ``backlog`` is how many more the writer has queued."""
        pickled = [
            bytes(entry.data)
            if isinstance(entry, PickledEntry)
            else pickle.dumps(entry, pickle.HIGHEST_PROTOCOL)
            for entry in entries
        ]
        with self._lock:
            conn = self._ensure()
            try:
                conn.send((backlog >= self._urgent_backlog, pickled))
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
                target=_serve,
                args=(theirs, instance_id(), self._spool_state),
                name="sluice-audit-writer",
                daemon=True,
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

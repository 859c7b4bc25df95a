"""Where a batch of audit entries is stored: the database, or the spool while it is away.

The store path, in the process that writes (the audit child of a served
gateway, or the writer thread elsewhere), is::

    entries -> prepare(entries) -> database, or the spool (audit.spool)

``prepare`` is the one place to change entries before anything keeps them
(redaction is done there). While the database is unreachable (a connection
error, not a data error) batches are appended to this instance's spool,
fsync'd; a replay thread retries the database with backoff and replays the
spool in order once it is back. While the spool holds anything, new batches
go behind it (order per instance holds); once drained, direct writes resume
and the file is emptied. Spools left by dead instances are adopted (at start,
and every ADOPT_SECONDS after: an instance that dies while others run) and
replayed the same way. Replays are idempotent (``audit_records_write``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson
from django.db import InterfaceError, OperationalError, connections

from audit.records import AuditEntry
from audit.redaction import redact_entry
from audit.spool import Spool, adoptable, decode_entry, encode_entry, spool_path

logger = logging.getLogger(__name__)

# The database cannot be reached (or went away mid-write): spool, do not drop.
UNAVAILABLE = (OperationalError, InterfaceError)
STATE_KEYS = ("spool_records", "spool_bytes", "spool_full", "spool_replayed", "spool_lost")
ALARM_SECONDS = 60.0
ADOPT_SECONDS = 5.0  # how often the spool directory is looked at for a dead instance's spool

Write = Callable[[Sequence[AuditEntry]], object]
Publish = Callable[[dict[str, int]], None]


def prepare(entries: Sequence[AuditEntry]) -> Sequence[AuditEntry]:
    """What is kept of a batch, in the database or the spool: each entry with its
    app's redaction applied (audit.redaction), before anything stores it."""
    return [redact_entry(entry) for entry in entries]


def _write_database(entries: Sequence[AuditEntry]) -> object:
    from audit.services import audit_records_write

    return audit_records_write(entries=entries)


class DurableStore:
    """Stores batches in the database, or spools them; replays the spool when it can.

    Thread-safe. ``publish``, if given, is called with ``state()`` after each change.
    """

    def __init__(
        self,
        *,
        directory: Path,
        owner: str,
        max_bytes: int,
        write: Write = _write_database,
        publish: Publish | None = None,
        batch_size: int = 200,
        max_backoff: float = 5.0,
    ) -> None:
        self._write = write
        self._publish = publish
        self._batch_size = batch_size
        self._max_backoff = max_backoff
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self.spool = _own_spool(directory, owner, max_bytes)
        self._directory, self._max_bytes = directory, max_bytes
        self._adopted = adoptable(directory, self.spool.path, max_bytes=max_bytes)
        self.full = False
        self.replayed = 0
        self.lost = 0
        self._alarmed_at = -ALARM_SECONDS
        self._thread = threading.Thread(target=self._replay_loop, name="audit-replay", daemon=True)
        self._thread.start()
        self._changed()

    # -- storing -----------------------------------------------------------
    def store(self, entries: Sequence[AuditEntry]) -> None:
        """Store a batch, or spool it; a data error (not an outage) is raised."""
        entries = prepare(entries)
        with self._lock:
            if self.spool.size == 0:
                try:
                    self._write(entries)
                    return
                except UNAVAILABLE as exc:
                    connections.close_all()
                    logger.warning("audit database unavailable (%s): spooling", type(exc).__name__)
            self._append(entries)
        self._wake.set()

    def _append(self, entries: Sequence[AuditEntry]) -> None:
        lines = []
        for entry in entries:
            try:
                lines.append(encode_entry(entry))
            except (TypeError, orjson.JSONEncodeError) as exc:
                self._lose(1, f"cannot be encoded ({type(exc).__name__}): {entry.request_id}")
        if self.spool.append(lines):
            self._changed()
            return
        self.full = True
        self._lose(len(lines), "the audit spool is full")

    def _lose(self, count: int, why: str) -> None:
        self.lost += count
        self._changed()
        now = time.monotonic()
        if now - self._alarmed_at >= ALARM_SECONDS:
            self._alarmed_at = now
            logger.error(
                "AUDIT RECORDS LOST: %s; %d lost so far (spool %s, %d bytes)",
                why,
                self.lost,
                self.spool.path,
                self.spool.size,
            )

    # -- replaying ---------------------------------------------------------
    def _replay_loop(self) -> None:
        delay = 0.5
        next_look = time.monotonic() + ADOPT_SECONDS
        while not self._stopped:
            more = False
            if time.monotonic() >= next_look:
                next_look = time.monotonic() + ADOPT_SECONDS
                self._adopt_more()
            try:
                more = self._replay_some()
                delay = 0.5
            except UNAVAILABLE:
                connections.close_all()
                delay = min(delay * 2, self._max_backoff)
            except Exception:
                logger.exception("audit spool replay failed")
                connections.close_all()
                delay = min(delay * 2, self._max_backoff)
            if not more:
                self._wake.wait(delay)
                self._wake.clear()
        connections.close_all()

    def _adopt_more(self) -> None:
        """Adopt the spools of instances that died since this one started (a
        shared spool volume: their records do not wait for their own restart)."""
        found = adoptable(self._directory, self.spool.path, max_bytes=self._max_bytes)
        if found:
            logger.warning("audit: adopted %d spool(s) of stopped instances", len(found))
            with self._lock:
                self._adopted = [*self._adopted, *found]
            self._changed()

    def _replay_some(self) -> bool:
        """Replay one batch (an adopted spool's first); True if more is waiting."""
        if self._adopted:
            spool = self._adopted[0]
            if self._replay_batch(spool):
                spool.remove()
                self._adopted.pop(0)
            return True
        with self._lock:
            if self.spool.size == 0:
                return False
        drained = self._replay_batch(self.spool)
        return not drained

    def _replay_batch(self, spool: Spool) -> bool:
        """Write the next batch of ``spool``; True once it is all replayed (and emptied)."""
        own = spool is self.spool
        with self._lock:
            lines, after = spool.read(self._batch_size)
        entries = [decode_entry(line) for line in lines]
        if entries:
            self._write_each(entries)
        with self._lock:
            spool.advance(after, len(lines))
            self.replayed += len(entries)
            drained = spool.drained
            if drained and own:
                spool.truncate()
                self.full = False
                logger.warning("audit spool drained: %d replayed so far", self.replayed)
        self._changed()
        return drained

    def _write_each(self, entries: list[AuditEntry]) -> None:
        try:
            self._write(entries)
            return
        except UNAVAILABLE:
            raise
        except Exception:
            connections.close_all()
        for entry in entries:  # a data error: keep the others
            try:
                self._write([entry])
            except UNAVAILABLE:
                raise
            except Exception as exc:
                connections.close_all()
                self._lose(1, f"cannot be stored ({type(exc).__name__}): {entry.request_id}")

    # -- state -------------------------------------------------------------
    def state(self) -> dict[str, int]:
        adopted = self._adopted
        return {
            "spool_records": self.spool.waiting + sum(s.waiting for s in adopted),
            "spool_bytes": self.spool.size + sum(s.size for s in adopted),
            "spool_full": int(self.full),
            "spool_replayed": self.replayed,
            "spool_lost": self.lost,
        }

    def _changed(self) -> None:
        if self._publish is not None:
            self._publish(self.state())

    def stop(self, timeout: float = 5.0) -> None:
        """End the replay thread; an empty spool file goes (a non-empty one stays, for adoption)."""
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout)
        with self._lock:
            if self.spool.size == 0:
                self.spool.remove()


def _own_spool(directory: Path, owner: str, max_bytes: int) -> Spool:
    # Two stores of one instance (a test process and its audit child) cannot
    # share a file: the second takes the next name.
    for n in range(100):
        try:
            return Spool(spool_path(directory, f"{owner}-{n}" if n else owner), max_bytes=max_bytes)
        except BlockingIOError:
            continue
    raise RuntimeError(f"no free audit spool file for {owner} in {directory}")


class _Local:
    store: DurableStore | None = None
    pid = 0
    publish: Publish | None = None


_local_lock = threading.Lock()


def durable_store() -> DurableStore:
    """This process's store (made on first use, with the settings and instance name)."""
    if _Local.store is None or _Local.pid != os.getpid():
        with _local_lock:
            if _Local.store is None or _Local.pid != os.getpid():
                from django.conf import settings

                from audit.instance import instance_id

                _Local.store = DurableStore(
                    directory=Path(settings.SLUICE_AUDIT_SPOOL_DIR),
                    owner=instance_id(),
                    max_bytes=settings.SLUICE_AUDIT_SPOOL_MAX_BYTES,
                    publish=_Local.publish,
                )
                _Local.pid = os.getpid()
    return _Local.store


def publish_state_to(publish: Publish) -> None:
    """Have this process's store report its state to ``publish`` (the audit child's parent)."""
    _Local.publish = publish


def local_spool_state() -> dict[str, int]:
    """The state of this process's store, zeros if it has none."""
    store = _Local.store
    if store is None or _Local.pid != os.getpid():
        return dict.fromkeys(STATE_KEYS, 0)
    return store.state()


def local_spool_full() -> bool:
    store = _Local.store
    return store is not None and store.full

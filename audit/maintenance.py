"""The served gateway's audit upkeep: signed checkpoints and pruning, on a timer.

A daemon thread (``SCHED_IDLE`` where Linux allows, so it only gets CPU
time nobody else wants) writes a checkpoint every
SLUICE_AUDIT_CHECKPOINT_SECONDS when the chain grew, and prunes every
SLUICE_AUDIT_PRUNE_SECONDS. Several instances may run it: a prune runs on
one at a time (``exclusive``: a PostgreSQL advisory lock, or a file lock
beside an SQLite database); two checkpoints of the same head do no harm.
``sluice_audit checkpoint`` and ``sluice_audit prune`` do the same from cron.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from django.conf import settings
from django.db import connections, router

from audit.models import AuditRecord

logger = logging.getLogger(__name__)

# pg_try_advisory_lock's key for "an audit prune is running" (any 64-bit number).
PRUNE_LOCK_KEY = 0x51CE_A0D1
FIRST_RUN_SECONDS = 60.0


@contextlib.contextmanager
def exclusive(using: str) -> Iterator[bool]:
    """Yield True if this process holds the prune lock until the block ends, else False."""
    connection = connections[using]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [PRUNE_LOCK_KEY])
            held = bool(cursor.fetchone()[0])
        try:
            yield held
        finally:
            if held:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [PRUNE_LOCK_KEY])
        return
    path = Path(settings.VAR_DIR) / "audit-prune.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def run_checkpoint() -> None:
    from audit.checkpoints import checkpoint_write

    checkpoint = checkpoint_write(using=router.db_for_write(AuditRecord))
    if checkpoint is not None:
        logger.info("audit checkpoint signed at seq %s", checkpoint.seq)


def run_prune() -> None:
    from audit.retention import audit_prune

    with exclusive(router.db_for_write(AuditRecord)) as held:
        if held:
            report = audit_prune()
            logger.info("%s", report.summary())


class AuditMaintenance:
    """The timer thread; ``start`` once per process, ``stop`` at shutdown."""

    def __init__(self, *, checkpoint_seconds: float, prune_seconds: float) -> None:
        jobs: list[tuple[Callable[[], None], float]] = [
            (run_checkpoint, checkpoint_seconds),
            (run_prune, prune_seconds),
        ]
        self._jobs = [(job, every) for job, every in jobs if every > 0]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self._jobs or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="sluice-audit-upkeep", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        with contextlib.suppress(AttributeError, OSError):  # not Linux: normal priority
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        # The first run comes soon after start: a gateway restarted more often
        # than the interval would otherwise never prune.
        due = {job: time.monotonic() + min(every, FIRST_RUN_SECONDS) for job, every in self._jobs}
        while not self._stop.wait(min(due.values()) - time.monotonic()):
            for job, every in self._jobs:
                if time.monotonic() >= due[job]:
                    due[job] = time.monotonic() + every
                    self._safely(job)
        connections.close_all()

    @staticmethod
    def _safely(job: Callable[[], None]) -> None:
        try:
            job()
        except Exception:
            logger.exception("audit upkeep failed (retried at its next interval)")
        finally:
            connections.close_all()


_maintenance: AuditMaintenance | None = None


def audit_maintenance_start() -> None:
    """Start the upkeep thread of this process (the served gateway's lifespan)."""
    global _maintenance
    if _maintenance is None:
        _maintenance = AuditMaintenance(
            checkpoint_seconds=settings.SLUICE_AUDIT_CHECKPOINT_SECONDS,
            prune_seconds=settings.SLUICE_AUDIT_PRUNE_SECONDS,
        )
        _maintenance.start()


def audit_maintenance_stop() -> None:
    global _maintenance
    if _maintenance is not None:
        _maintenance.stop()
        _maintenance = None

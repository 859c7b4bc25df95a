"""Requests left ``in_progress`` by a gateway instance that died: completed as ``interrupted``.

A served gateway runs one ``InstanceWatch`` thread (normal priority, off the
event loop): every HEARTBEAT_SECONDS it says it is alive
(``audit.instances.instance_heartbeat``), and every SWEEP_SECONDS it looks for
instances that died with requests in flight. Such a request's record gets
the write-ahead's request, the transcript so far where the stream log
survives (the Redis copy, with ``REDIS_URL``), ``ended_at`` now, outcome
``interrupted`` and error class ``instance_lost``; it is written through
the ordinary ``audit_records_write`` (a final outcome: replays and a second
sweeper change nothing).

An instance is dead when it ran on this host and its process is gone (or
the pid is another process's now); elsewhere, when its heartbeat is older
than SLUICE_INSTANCE_DEAD_SECONDS while this instance's own heartbeats have
been succeeding for at least as long (a database outage makes nobody look
dead). In Redis mode a stream whose log and request are in Redis is not
interrupted but carried on by another instance (streaming.core.takeover):
the sweeper leaves its record to the taker (``taken_over``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.db import connections

from accounts.services import app_redaction
from audit.instance import HOST, instance_id
from audit.instances import (
    InstanceSeen,
    audit_open_entries,
    instance_heartbeat,
    instances_forget,
    instances_with_open_records,
)
from audit.records import AuditEntry
from audit.services import audit_records_write
from gateway.redis import redis_enabled, sync_client
from streaming.core.events import ERROR, Entry
from streaming.core.outcome import INSTANCE_LOST
from streaming.core.redis_log import RUNNING_KEY, log_key, meta_key
from streaming.core.transcript import Transcript
from streaming.observability.logging import warn_throttled

logger = logging.getLogger("sluice.recovery")

HEARTBEAT_SECONDS = 3.0
SWEEP_SECONDS = 10.0
ERROR_CLASS = INSTANCE_LOST
FORGET_SECONDS = 24 * 3600  # a dead instance's heartbeat row, once nothing of it is open


def process_started_at(pid: int) -> float | None:
    """When process ``pid`` of this host started (epoch seconds); None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        lines = Path("/proc/stat").read_text().splitlines()
        boot = next(float(line.split()[1]) for line in lines if line.startswith("btime"))
    except (OSError, StopIteration, ValueError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0.0  # alive, start unknown
    ticks = int(stat.rsplit(")", 1)[1].split()[19])
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _same_host_dead(pid: int | None, started_at: float | None) -> bool:
    if pid is None:
        return False
    began = process_started_at(pid)
    if began is None:
        return True
    # The pid is in use by a process started after the instance: not it.
    return started_at is not None and began > started_at + 2.0


def _pid_of(name: str) -> int | None:
    host, _, rest = name.partition(":")
    pid = rest.partition(":")[0]
    return int(pid) if host == HOST and pid.isdigit() else None


def is_dead(seen: InstanceSeen, *, now: float, healthy_for: float, dead_after: float) -> bool:
    """Whether ``seen`` died (see the module's docstring)."""
    if seen.host == HOST:
        return _same_host_dead(seen.pid, seen.started_at)
    if seen.host is None and _pid_of(seen.name) is not None:
        return _same_host_dead(_pid_of(seen.name), None)
    if healthy_for < dead_after:
        return False  # our own view of the database is too young to judge
    last = seen.last_seen if seen.last_seen is not None else seen.oldest_open
    return last is not None and now - last > dead_after


def transcript_entries(request_id: str) -> Sequence[Entry]:
    """The stream log's events kept in Redis for ``request_id`` (none without Redis)."""
    if not redis_enabled():
        return []
    try:
        reply: Any = sync_client().xrange(log_key(request_id))
    except (redis.RedisError, OSError):
        logger.warning("could not read the stream log of %s", request_id)
        return []
    return [(int(eid.split(b"-", 1)[0]), int(f[b"k"]), f[b"d"]) for eid, f in reply]


def taken_over(entry: AuditEntry) -> bool:
    """Whether ``entry``'s stream is (or was) carried on by another instance
    (streaming.core.takeover): then its taker completes the record, not the sweeper."""
    if not redis_enabled() or settings.SLUICE_TAKEOVER_SECONDS <= 0:
        return False
    try:
        client = sync_client()
        if client.zscore(RUNNING_KEY, entry.request_id) is not None:
            return True
        owner: Any = client.hget(meta_key(entry.request_id), "owner")
    except (redis.RedisError, OSError):
        return True  # no telling now: the next sweep decides
    return owner is not None and owner.decode() != entry.instance


def interrupted(entry: AuditEntry, *, now: float) -> AuditEntry:
    """``entry`` (a write-ahead) completed as ``interrupted`` with what its log kept,
    which its app's redaction applies to as it does to any record (audit.store.prepare)."""
    if entry.app_id is not None:
        entry.redact = app_redaction(app_id=entry.app_id)
    transcript = Transcript()
    entries = transcript_entries(entry.request_id)
    for _, kind, payload in entries:
        transcript.add_event(kind, payload)
    transcript.fill(entry)
    if entry.status_code is None and entries and entries[0][1] != ERROR:
        entry.status_code = 200  # its client was answered, then the answer broke off
    entry.outcome = "interrupted"
    entry.error_class = ERROR_CLASS
    entry.error_message = f"gateway instance {entry.instance} stopped before the request ended"
    entry.ended_at = now
    entry.duration_ms = (now - entry.started_at) * 1000
    return entry


def sweep(*, healthy_for: float, started_at: float) -> int:
    """Complete the open records of dead instances (and of an earlier process with
    this instance's name); how many were completed."""
    now = time.time()
    own = instance_id()
    dead_after = settings.SLUICE_INSTANCE_DEAD_SECONDS
    completed = 0
    for seen in instances_with_open_records():
        if seen.name == own:
            entries = audit_open_entries(instance=own, started_before=started_at)
        elif is_dead(seen, now=now, healthy_for=healthy_for, dead_after=dead_after):
            entries = audit_open_entries(instance=seen.name)
        else:
            continue
        entries = [e for e in entries if not taken_over(e)]
        if entries:
            audit_records_write(entries=[interrupted(e, now=now) for e in entries])
            completed += len(entries)
            logger.warning("instance %s: %d request(s) interrupted", seen.name, len(entries))
    instances_forget(last_seen_before=now - FORGET_SECONDS)
    return completed


class InstanceWatch:
    """This instance's heartbeat and the sweeper, on one thread of their own."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self.healthy_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="instance-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        next_sweep = 0.0
        while not self._stop.is_set():
            self._beat()
            if time.monotonic() >= next_sweep and self.healthy_since is not None:
                next_sweep = time.monotonic() + SWEEP_SECONDS
                self._sweep()
            self._stop.wait(HEARTBEAT_SECONDS)
        connections.close_all()

    def _beat(self) -> None:
        try:
            instance_heartbeat(
                name=instance_id(), host=HOST, pid=os.getpid(), started_at=self.started_at
            )
        except Exception as exc:
            self.healthy_since = None
            connections.close_all()
            warn_throttled(logger, "instance heartbeat failed: %s", type(exc).__name__)
            return
        if self.healthy_since is None:
            self.healthy_since = time.monotonic()

    def _sweep(self) -> None:
        healthy_for = time.monotonic() - (self.healthy_since or time.monotonic())
        try:
            sweep(healthy_for=healthy_for, started_at=self.started_at)
        except Exception as exc:
            connections.close_all()
            warn_throttled(logger, "interrupted-request sweep failed: %s", type(exc).__name__)


_watch: InstanceWatch | None = None


def start_instance_watch() -> None:
    """Start this process's heartbeat and sweeper (the served gateway, at start-up)."""
    global _watch
    if _watch is None:
        _watch = InstanceWatch()
        _watch.start()


def stop_instance_watch() -> None:
    global _watch
    if _watch is not None:
        _watch.stop()
        _watch = None

"""``GET /metrics``: the Prometheus exposition, for allowed networks or a bearer token.

One process: the default registry, plus a collector that reads the audit
writer's numbers at scrape time. Several workers (``PROMETHEUS_MULTIPROC_DIR``
set): each scrape sums every worker's files; the audit writer, which lives
in each worker, is mirrored into those files once a second by each worker
(and by the scraping one right before it answers).
"""

from __future__ import annotations

import atexit
import hmac
import ipaddress
import os
from collections.abc import Iterator
from functools import lru_cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from audit.writer import audit_writer_stats

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

QUEUE_HELP = "Audit records waiting for the background writer."
# audit_writer_stats() key: (gauge name, help); the spool of audit.store.
SPOOL_GAUGES = {
    "spool_records": ("sluice_audit_spool_records", "Audit records waiting in the spool."),
    "spool_bytes": ("sluice_audit_spool_bytes", "Size of the audit spool."),
    "spool_full": ("sluice_audit_spool_full", "1 while the audit spool is full (alarm)."),
}
AUDIT_COUNTERS = {
    # audit_writer_stats() key: (metric name without _total, help)
    "written": ("sluice_audit_records_written", "Audit records stored."),
    "failed": ("sluice_audit_write_failures", "Audit records lost: the write kept failing."),
    "dropped": ("sluice_audit_records_dropped", "Audit records dropped: the queue was full."),
    "shed": (
        "sluice_audit_refusals_unrecorded",
        "Refused requests left unrecorded: the audit queue was over half full.",
    ),
    "spool_replayed": ("sluice_audit_spool_replayed", "Audit records replayed from the spool."),
    "spool_lost": ("sluice_audit_spool_lost", "Audit records lost: the spool was full."),
}


class AuditWriterCollector(Collector):
    """The audit writer's queue depth and counts, read when Prometheus scrapes."""

    def collect(self) -> Iterator[Metric]:
        stats = audit_writer_stats()
        yield GaugeMetricFamily("sluice_audit_queue_depth", QUEUE_HELP, value=stats["queue_depth"])
        for key, (name, text) in SPOOL_GAUGES.items():
            yield GaugeMetricFamily(name, text, value=stats[key])
        for key, (name, text) in AUDIT_COUNTERS.items():
            yield CounterMetricFamily(name, text, value=stats[key])


# Multiprocess mode: the same names, kept in the per-process files.
_queue_gauge = Gauge(
    "sluice_audit_queue_depth", QUEUE_HELP, multiprocess_mode="livesum", registry=None
)
_spool_gauges = {
    key: Gauge(name, text, multiprocess_mode="livesum", registry=None)
    for key, (name, text) in SPOOL_GAUGES.items()
}
_counters = {
    key: Counter(name, text, registry=None) for key, (name, text) in AUDIT_COUNTERS.items()
}
_mirrored: dict[str, int] = {}


def sync_multiprocess_audit() -> None:
    """Copy this process's audit writer numbers into the multiprocess files."""
    if not MULTIPROCESS:
        return
    stats = audit_writer_stats()
    _queue_gauge.set(stats["queue_depth"])
    for key, gauge in _spool_gauges.items():
        gauge.set(stats[key])
    for key, counter in _counters.items():
        delta = stats[key] - _mirrored.get(key, 0)
        if delta > 0:
            counter.inc(delta)
        _mirrored[key] = stats[key]


def process_exiting() -> None:
    """At a served worker's end (its ASGI lifespan): its last audit numbers into
    the files, then its live gauges out of the sums. uvicorn ends the process by
    re-raising its signal, so the ``atexit`` below does not run there."""
    if MULTIPROCESS:
        sync_multiprocess_audit()
        multiprocess.mark_process_dead(os.getpid())


if MULTIPROCESS:
    # Live gauges (active streams, queue depth) of an exited worker must not count.
    atexit.register(multiprocess.mark_process_dead, os.getpid())
else:
    REGISTRY.register(AuditWriterCollector())


def exposition() -> bytes:
    if not MULTIPROCESS:
        return generate_latest(REGISTRY)
    sync_multiprocess_audit()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


# -- access -------------------------------------------------------------------
@lru_cache(maxsize=8)
def _networks(spec: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(item, strict=False) for item in spec)
    except ValueError as error:
        raise ImproperlyConfigured(f"SLUICE_METRICS_ALLOWED_NETWORKS: {error}") from None


def metrics_allowed(client_ip: str | None, authorization: str | None) -> bool:
    """From an allowed network, or with ``Authorization: Bearer <SLUICE_METRICS_TOKEN>``."""
    token = settings.SLUICE_METRICS_TOKEN
    if token and authorization:
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token):
            return True
    if not client_ip:
        return False
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    return any(address in net for net in _networks(tuple(settings.SLUICE_METRICS_ALLOWED_NETWORKS)))


def metrics_view(request: HttpRequest) -> HttpResponse:
    # The peer address, never X-Forwarded-For: a client could claim any network.
    if not metrics_allowed(request.META.get("REMOTE_ADDR"), request.headers.get("Authorization")):
        return HttpResponse(b"forbidden\n", status=403, content_type="text/plain")
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)

"""Serve the gateway with uvicorn (uvloop, httptools), TLS from settings.

uvicorn is the production server: its ``send()`` waits on the transport, so
a slow reader cannot pile data up in memory the way it can under daphne.

``--workers N`` (default: the cores this process may use) runs N worker
processes on one port, each with a listening socket of its own
(``SO_REUSEPORT``: the kernel spreads connections over them). Only with
Redis: the stream log, finished streams, limits, cancels, revocations and
the channel layer are otherwise in each process's memory, and a request that
reached another worker than its stream's (a resume, a cancel) would not find
it. With several workers the command sets up Prometheus's multiprocess files
itself (``streaming.observability.multiproc``) so ``/metrics`` reports the
sum.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from pathlib import Path
from typing import Any

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from uvicorn.supervisors import Multiprocess

from streaming.core.shutdown import HANDOVER_MARGIN
from streaming.observability.multiproc import multiprocess_dir, process_exited

logger = logging.getLogger("sluice.serve")

APP = "gateway.asgi:application"


class Command(BaseCommand):
    help = "Serve the Sluice gateway (uvicorn)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--workers",
            type=int,
            default=None,
            help="worker processes (default: the usable cores with REDIS_URL, else 1)",
        )
        parser.add_argument("--log-level", default="info")

    def handle(self, *args: Any, **options: Any) -> None:
        cert, key = settings.SLUICE_TLS_CERT_FILE, settings.SLUICE_TLS_KEY_FILE
        if bool(cert) != bool(key):
            raise CommandError("set both SLUICE_TLS_CERT_FILE and SLUICE_TLS_KEY_FILE, or neither")
        workers = worker_count(options["workers"], redis=bool(settings.REDIS_URL))
        config: dict[str, Any] = dict(
            host=options["host"],
            port=options["port"],
            loop="uvloop",
            http="streaming.transports.connections:GuardedHttpProtocol",
            ws="streaming.transports.connections:GuardedWebSocketProtocol",
            ws_per_message_deflate=settings.SLUICE_WS_COMPRESSION,
            lifespan="on",
            log_level=options["log_level"],
            access_log=False,
            ssl_certfile=cert or None,
            ssl_keyfile=key or None,
            # SIGTERM: streams run on for the grace, then are handed over and
            # their readers told to go elsewhere (streaming.core.shutdown).
            timeout_graceful_shutdown=math.ceil(
                settings.SLUICE_SHUTDOWN_GRACE_SECONDS + HANDOVER_MARGIN
            ),
            timeout_keep_alive=settings.SLUICE_KEEPALIVE_SECONDS,
            # uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise:
            # any local client could then pick its own address.
            proxy_headers=bool(settings.SLUICE_TRUSTED_PROXIES),
            forwarded_allow_ips=",".join(settings.SLUICE_TRUSTED_PROXIES) or "",
        )
        if workers == 1:
            uvicorn.run(APP, **config)
            return
        # Before any worker starts: prometheus-client reads the variable at import.
        with multiprocess_dir(Path(settings.VAR_DIR)) as directory:
            logger.info("%d workers; Prometheus multiprocess files in %s", workers, directory)
            uvicorn_config = uvicorn.Config(APP, workers=workers, **config)
            sock = bind_listener(options["host"], options["port"])
            logger.info("serving on %s:%d", *sock.getsockname()[:2])
            try:
                Supervisor(uvicorn_config, sockets=[sock]).run()
            finally:
                sock.close()


def worker_count(given: int | None, *, redis: bool) -> int:
    """``--workers`` as given, else the usable cores with Redis, else 1."""
    if given is None:
        return usable_cores() if redis else 1
    if given < 1:
        raise CommandError("--workers must be at least 1")
    if given > 1 and not redis:
        raise CommandError(
            "--workers > 1 needs REDIS_URL: without Redis, streams, their logs, limits, "
            "cancels and revocations live in each worker's memory, so a resume or cancel "
            "that reached another worker than its stream's would not find it. Set "
            "REDIS_URL, or serve one worker."
        )
    return given


def usable_cores() -> int:
    """The CPUs this process may run on, capped by a cgroup CPU quota (a
    container limited to 2 CPUs on a 64-core host gets 2 workers, not 64)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cores, quota) if quota else cores)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The CPU quota of this cgroup, rounded up to whole CPUs; None if unlimited."""
    try:
        quota, _, period = (root / "cpu.max").read_text().partition(" ")  # cgroup v2
    except OSError:
        try:  # cgroup v1
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text()
        except OSError:
            return None
    try:
        limit, length = int(quota), int(period)
    except ValueError:  # "max": no quota
        return None
    return math.ceil(limit / length) if limit > 0 and length > 0 else None


class WorkerListener(socket.socket):
    """The address the workers serve, bound (never listening) in the supervisor.

    uvicorn's supervisor hands the same socket to every worker it spawns, and
    pickling this one makes, in the worker, a socket of the worker's own on
    the same address with ``SO_REUSEPORT`` (``reuse_port_socket``). The kernel
    then spreads new connections over the workers' sockets by their address
    hash. On one shared socket, every worker woke for a burst and the first
    to run accepted all it could: of 100 connections opened at once, one of
    two workers took 60 to 92 in most of 10 bursts, and queued them behind
    each other. A worker that dies loses only the connections waiting in its
    own backlog; the others keep accepting meanwhile.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return reuse_port_socket, (self.family, self.getsockname()[:2])


def reuse_port_socket(family: int, address: tuple[str, int]) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def bind_listener(host: str, port: int) -> WorkerListener:
    """Bind ``host:port`` for the workers; a CommandError if it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        # Without SO_REUSEPORT first: the port must be free, not shared with
        # another server that happens to use SO_REUSEPORT too.
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
            port = port or probe.getsockname()[1]
        sock = WorkerListener(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as error:
        raise CommandError(f"cannot serve on {host}:{port}: {error}") from None
    return sock


class Supervisor(Multiprocess):
    """uvicorn's worker supervisor; a worker that exits (ends, crashes, is
    killed or replaced) has its live gauges dropped from the metrics' sums.

    A worker that shuts down cleanly drops them itself (the ASGI lifespan);
    one killed cannot, so the supervisor does it once the worker has left
    its list (uvicorn replaces a dead worker every half second).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._known: set[int] = set()

    def init_processes(self) -> None:
        super().init_processes()
        self._known = self._pids()

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()
        self._forget_exited()  # also those that SIGHUP (restart) or SIGTTOU retired

    def join_all(self) -> None:
        super().join_all()
        for pid in self._pids() | self._known:
            process_exited(pid)

    def _pids(self) -> set[int]:
        return {process.pid for process in self.processes if process.pid is not None}

    def _forget_exited(self) -> None:
        current = self._pids()
        for pid in self._known - current:
            process_exited(pid)
        self._known = current

"""The processes a benchmark run needs, and how to watch the gateway's cost.

A run gets a temp directory with its own SQLite database (migrated), one app
and bearer token (through the real ``/o/token/`` endpoint), routes to the
fake upstream, and then one fresh gateway process per scenario, so each
scenario's CPU seconds and peak RSS are its own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process {process.args} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


# -- /proc readings ---------------------------------------------------------
def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (the gateway's: its audit writer)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat_fields(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return found


def descendants(pid: int) -> list[int]:
    """``pid``'s live children, theirs, and so on (workers, their audit writers)."""
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def serving_processes(pid: int) -> list[int]:
    """The processes that serve requests: ``pid`` itself, or with ``--workers N``
    its workers (the children that have an audit writer child of their own)."""
    return [child for child in children(pid) if children(child)] or [pid]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds so far of a process and its live descendants.

    The gateway's audit writer is a child process for the gateway's whole
    life (with ``--workers N``: each worker's, below the worker), so a
    difference of two readings counts its work too.
    """
    total = 0
    for each in [pid, *descendants(pid)]:
        try:
            fields = _stat_fields(each)
        except OSError:
            continue  # ended in between
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def machine_speed_ms(rounds: int = 5) -> float:
    """How long a fixed pure-Python loop takes here now, best of ``rounds`` (ms).

    This VM's speed changes from one phase to the next (the same work takes
    twice the CPU time in a slow phase); a figure per scenario says which
    phase each row was measured in.
    """
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        total = 0
        for i in range(200_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return best * 1000


def cpu_jiffies() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[7], sum(fields[:8])


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def rss_kib(pid: int) -> int:
    return _status_kib(pid, "VmRSS")


def peak_rss_kib(pid: int) -> int:
    return _status_kib(pid, "VmHWM")


def reset_peak_rss(pid: int) -> None:
    """Start VmHWM over from the current RSS (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


class RssSampler:
    """Samples a process's RSS in a thread: (epoch seconds, KiB) pairs."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.time(), rss_kib(self.pid)))
            except (OSError, KeyError):
                return
            self._stop.wait(self.interval)

    def between(self, start: float, end: float) -> list[int]:
        return [kib for at, kib in self.samples if start <= at <= end]


# -- the environment ----------------------------------------------------------
@dataclass
class Workspace:
    """Temp dir, database and secrets shared by every gateway process of a run."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sluice-bench-")))
    extra: dict[str, str] = field(default_factory=dict)  # --gateway-env settings
    workers: int | None = None  # sluice_serve --workers; None: its default

    def env(self, **overrides: str) -> dict[str, str]:
        from cryptography.fernet import Fernet

        key_file = self.root / "fernet.key"
        if not key_file.exists():
            key_file.write_bytes(Fernet.generate_key())
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "PYTEST"))}
        env.update(
            DJANGO_SETTINGS_MODULE="gateway.settings",
            SECRET_KEY="bench-secret-key-" + "x" * 40,
            SLUICE_ENCRYPTION_KEY=key_file.read_text(),
            SLUICE_AUDIT_SIGNING_KEY="YmVuY2gtYXVkaXQtc2lnbmluZy1rZXktMzItYnl0ZXM=",
            DATABASE_URL=f"sqlite:///{self.root / 'bench.sqlite3'}",
            SLUICE_VAR_DIR=str(self.root),
            SLUICE_UPSTREAM_MAX_CONNECTIONS="4000",
            SLUICE_MAX_CONNECTIONS_PER_CLIENT="0",  # every load client is on loopback
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra)
        env.update(overrides)
        return env

    def setup_django(self) -> None:
        """Configure Django in this process (for migrate and the fixtures)."""
        os.environ.update(self.env())
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0, interactive=False)


def create_app() -> tuple[str, str]:
    """An app allowed to chat; returns (client_id, secret)."""
    from accounts.services import app_create

    app, secret = app_create(name=f"bench-{os.getpid()}", scopes=["chat"])
    return app.client_id, secret


def create_routes(base_url: str, upstream_models: list[str]) -> dict[str, str]:
    """One route per upstream model name (a fake script); returns {upstream: public}."""
    from streaming.models import ModelRoute, Provider, RouteTarget

    provider = Provider(name="bench-upstream", kind="openai", base_url=base_url)
    provider.set_api_key("sk-bench")
    provider.save()
    routes = {}
    for index, upstream_model in enumerate(upstream_models):
        route = ModelRoute.objects.create(model=f"bench-{index}")
        RouteTarget.objects.create(route=route, provider=provider, upstream_model=upstream_model)
        routes[upstream_model] = route.model
    return routes


def fetch_token(base_url: str, client_id: str, secret: str, scope: str = "chat") -> str:
    response = httpx.post(
        f"{base_url}/o/token/",
        data={"grant_type": "client_credentials", "scope": scope},
        auth=(client_id, secret),
        timeout=10,
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


# -- processes ----------------------------------------------------------------
SERVERS = {
    # The production command (uvicorn, uvloop, httptools), as `make serve` runs it.
    "uvicorn": [
        "manage.py",
        "sluice_serve",
        "--host",
        "127.0.0.1",
        "--log-level",
        "warning",
        "--port",
    ],
    "daphne": ["-m", "daphne", "gateway.asgi:application", "-b", "127.0.0.1", "-p"],
}


@dataclass
class Process:
    """A child process with a port; ``stop`` ends it by its own pid."""

    name: str
    process: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_process(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Process:
    port = free_port()
    with open(log_dir / f"{name}-{port}.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, *args, str(port)], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    server = Process(name, process, port)
    try:
        wait_port(port, process)
    except RuntimeError:
        server.stop()
        raise
    return server


def start_upstream(workspace: Workspace) -> Process:
    env = workspace.env()
    return start_process("upstream", ["-m", "bench.upstream", "--port"], env, workspace.root)


def start_gateway(workspace: Workspace, server: str, **env: str) -> Process:
    args = SERVERS[server]
    if server == "uvicorn" and workspace.workers is not None:
        args = [*args[:2], "--workers", str(workspace.workers), *args[2:]]
    gateway = start_process(server, args, workspace.env(**env), workspace.root)
    # The port answers once one worker listens (each has a socket of its own):
    # wait for all of them, so no scenario starts on fewer.
    deadline = time.monotonic() + 30
    while len(serving_processes(gateway.pid)) < (workspace.workers or 1):
        if time.monotonic() > deadline:
            gateway.stop()
            raise RuntimeError(f"fewer than {workspace.workers} workers after 30 s")
        time.sleep(0.1)
    time.sleep(0.5 if workspace.workers else 0)
    return gateway

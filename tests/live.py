"""Gateway server processes for end-to-end tests.

Each server is a real uvicorn process running gateway.asgi, pointed at the
test database (and Redis when REDIS_URL is set), exactly as in production.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_url() -> str:
    """The URL of the database pytest-django created, for other processes."""
    from django.db import connection

    conf = connection.settings_dict
    if conf["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{conf['NAME']}"
    user = conf.get("USER") or "postgres"
    host = conf.get("HOST") or "127.0.0.1"
    port = conf.get("PORT") or 5432
    return f"postgres://{user}@{host}:{port}/{conf['NAME']}"


@dataclass
class GatewayServer:
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    scheme: str = "http"
    # sluice_serve --workers; None: the command's default (the cores, with Redis)
    workers: int | None = 1

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> GatewayServer:
        log = open(Path(self.env["SLUICE_VAR_DIR"]) / f"gateway-{self.port}.log", "wb")  # noqa: SIM115
        # The production command itself (uvicorn with uvloop and httptools).
        self.process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "sluice_serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *([] if self.workers is None else ["--workers", str(self.workers)]),
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited early; see {self.log_path}:\n{self.log_text()}")
            try:
                httpx.get(f"{self.url}/healthz", timeout=1.0, verify=False)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gateway did not start in {timeout}s:\n{self.log_text()}")

    @property
    def log_path(self) -> Path:
        return Path(self.env["SLUICE_VAR_DIR"]) / f"gateway-{self.port}.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def server_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(
        DJANGO_SETTINGS_MODULE="gateway.settings",
        DATABASE_URL=database_url(),
        SLUICE_CONFIG_CACHE_SECONDS="0",
        SLUICE_STREAM_ABANDON_SECONDS="2",
        SLUICE_DEMO_TOKEN_DELAY="0.002",
        SLUICE_SSE_KEEPALIVE_SECONDS="1",
        SLUICE_UPSTREAM_CONNECT_TIMEOUT="3",
        PYTHONUNBUFFERED="1",
        # Redis is shared with other test runs: this run's failure counts are its own.
        SLUICE_THROTTLE_PREFIX=f"sluice-test-{os.getpid()}:throttle",
    )
    env.pop("SLUICE_DEV", None)
    env.update(overrides)
    return env

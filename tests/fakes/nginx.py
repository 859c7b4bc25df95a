"""nginx (Debian's package) in front of gateway processes, configured exactly as
docker-compose.yml configures it: the same text, with the compose service
names swapped for local addresses."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import yaml

from tests.live import ROOT, free_port


def compose_nginx_config() -> str:
    """The site configuration docker-compose.yml hands nginx (compose's ``$$`` unescaped)."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return str(compose["configs"]["nginx_conf"]["content"]).replace("$$", "$")


def local_config(upstreams: list[str], port: int) -> str:
    """The compose configuration, listening on ``port`` and proxying to ``upstreams``."""
    site = compose_nginx_config()
    servers = "".join(f"    server {at} max_fails=1 fail_timeout=5s;\n" for at in upstreams)
    site = re.sub(r"(upstream sluice_gateways \{\n)(?:\s*server [^\n]*\n)+", r"\1" + servers, site)
    return site.replace("listen 80;", f"listen 127.0.0.1:{port};")


class Nginx:
    """A real nginx master process with its own prefix directory."""

    def __init__(self, upstreams: list[str], workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        for sub in ("logs", "tmp"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        (workdir / "site.conf").write_text(local_config(upstreams, self.port))
        (workdir / "nginx.conf").write_text(
            "daemon off;\n"
            f"pid {workdir}/nginx.pid;\n"
            f"error_log {workdir}/logs/error.log warn;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            f"    access_log {workdir}/logs/access.log;\n"
            f"    client_body_temp_path {workdir}/tmp/body;\n"
            f"    proxy_temp_path {workdir}/tmp/proxy;\n"
            f"    include {workdir}/site.conf;\n"
            "}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str | None:
        return shutil.which("nginx") or (
            "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
        )

    def test_config(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary()), "-t", "-p", str(self.workdir), "-c", "nginx.conf"],
            capture_output=True,
            text=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Nginx:
        self.process = subprocess.Popen(
            [str(self.binary()), "-p", str(self.workdir), "-c", "nginx.conf"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/nginx-health", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"nginx did not start: {(self.workdir / 'logs/error.log').read_text()}")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

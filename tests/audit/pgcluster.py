"""A private PostgreSQL cluster for one test: started, stopped and restarted at will.

Made with the machine's own PostgreSQL binaries in a temporary directory, run
as the ``postgres`` OS user (tests run as root), on a free port and a socket
in that directory, so the shared cluster other tests use is never touched.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
from pathlib import Path

from tests.live import free_port


def _binary(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (/usr/lib/postgresql/*/bin)")
    return found[-1]


class PrivateCluster:
    """``initdb`` + ``pg_ctl`` on a directory of its own; ``url`` names its database."""

    def __init__(self, root: Path, database: str = "sluice") -> None:
        """``root``: a directory the ``postgres`` user can reach (not pytest's 0700 tmp)."""
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.database = database
        self.url = self.url_for(database)

    def _as_postgres(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")

    def create(self) -> PrivateCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._as_postgres(
            _binary("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"
        )
        self.start()
        self.createdb(self.database)
        return self

    def createdb(self, name: str) -> str:
        """A new database in the cluster; its URL."""
        self._as_postgres(
            _binary("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name
        )
        return self.url_for(name)

    def url_for(self, name: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(
            _binary("pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self.root / "postgres.log"), "-w", "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._as_postgres(_binary("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # not running
            self._as_postgres(
                _binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"
            )
        shutil.rmtree(self.root, ignore_errors=True)

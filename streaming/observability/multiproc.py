"""Prometheus multiprocess files for one served instance with several workers.

prometheus-client reads ``PROMETHEUS_MULTIPROC_DIR`` when it is imported, so
the directory must be in the environment before a worker starts; workers are
spawned (not forked) and inherit the serving command's environment. The
command (``sluice_serve``) therefore makes the directory, sets the variable,
then starts its workers, and removes the directory when they have all ended.

A worker's live gauges (active streams and connections, the audit queue) are
files named after its pid: they are dropped when it exits (``process_exited``)
so the ``livesum`` of a scrape counts only the workers alive. Counter files
stay, so totals never go back when a worker is replaced.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import multiprocess

ENV = "PROMETHEUS_MULTIPROC_DIR"


@contextlib.contextmanager
def multiprocess_dir(var_dir: Path) -> Iterator[Path]:
    """A fresh, empty directory in ``ENV`` for the duration of the block.

    Made under ``var_dir/prometheus`` (a temporary directory if that cannot be
    written), named after this process; the directories of earlier runs whose
    process is gone (killed before it could clean up) are removed first. A
    directory the operator set in ``ENV`` is used as it is and kept.
    """
    given = os.environ.get(ENV)
    if given:
        yield Path(given)
        return
    path = _fresh_dir(var_dir / "prometheus")
    os.environ[ENV] = str(path)
    try:
        yield path
    finally:
        os.environ.pop(ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def _fresh_dir(parent: Path) -> Path:
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(parent)
        return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent))
    except OSError:
        return Path(tempfile.mkdtemp(prefix="sluice-prometheus-"))


def _remove_orphans(parent: Path) -> None:
    for entry in parent.iterdir():
        pid = entry.name.partition("-")[0]
        if entry.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs, other than as this process (a container's pid 1
    restarted finds its own pid on the directory its previous life left)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def process_exited(pid: int) -> None:
    """Drop ``pid``'s live gauges from the sums (no-op outside multiprocess mode)."""
    directory = os.environ.get(ENV)
    if directory and os.path.isdir(directory):
        multiprocess.mark_process_dead(pid, directory)

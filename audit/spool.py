"""A durable local spool for audit entries while the database is unreachable.

One append-only file per gateway instance (``<dir>/<instance>.jsonl``), one
JSON line per entry (orjson; never pickle on disk), each appended batch
fsync'd before it is acknowledged. Its owner holds an exclusive ``flock`` on
it for as long as it lives, so a file whose lock can be taken belongs to a
dead instance: ``adoptable`` finds those, and the adopter replays and removes
them. The spool is bounded: an append that would pass ``max_bytes`` is
refused (the caller raises the alarm).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from audit.records import AttemptEntry, AuditEntry

SUFFIX = ".jsonl"


def encode_entry(entry: AuditEntry) -> bytes:
    """One line (newline included) holding ``entry`` and its attempts."""
    return orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)


def decode_entry(line: bytes) -> AuditEntry:
    """The entry ``encode_entry`` wrote."""
    data: dict[str, Any] = orjson.loads(line)
    attempts = [AttemptEntry(**a) for a in data.pop("attempts", [])]
    redact = tuple(data.pop("redact", ()))  # JSON has no tuples
    return AuditEntry(**data, attempts=attempts, redact=redact)


def spool_path(directory: Path, owner: str) -> Path:
    # An instance name is host:pid:random; keep it a plain file name.
    return directory / (re.sub(r"[^A-Za-z0-9_.-]", "_", owner) + SUFFIX)


class Spool:
    """One instance's spool file, locked for as long as this object lives.

    Not thread-safe by itself: ``audit.store.DurableStore`` serialises its use.
    ``records`` and ``size`` describe what is in the file; ``offset`` is how
    far a replay has got (the ``replayed`` lines before it are in the database).
    """

    def __init__(self, path: Path, *, max_bytes: int, adopted: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            raise
        self.adopted = adopted
        self.offset = 0
        self.size = os.fstat(self._fd).st_size
        self.records = self._count_lines()
        self.replayed = 0  # of ``records``, the lines before ``offset``

    def _count_lines(self) -> int:
        count = 0
        for chunk in self._chunks(0):
            count += chunk.count(b"\n")
        return count

    def _chunks(self, start: int) -> Iterator[bytes]:
        position = start
        while True:
            chunk = os.pread(self._fd, 1 << 20, position)
            if not chunk:
                return
            position += len(chunk)
            yield chunk

    def append(self, lines: list[bytes]) -> bool:
        """Append encoded entries and fsync; False (nothing written) if over the bound."""
        data = b"".join(lines)
        if self.size + len(data) > self.max_bytes:
            return False
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)
        self.size += len(data)
        self.records += len(lines)
        return True

    def read(self, limit: int) -> tuple[list[bytes], int]:
        """Up to ``limit`` whole lines from ``offset``, and the offset after them."""
        lines: list[bytes] = []
        position = self.offset
        pending = b""
        for chunk in self._chunks(self.offset):
            pending += chunk
            while len(lines) < limit:
                end = pending.find(b"\n")
                if end < 0:
                    break
                lines.append(pending[: end + 1])
                position += end + 1
                pending = pending[end + 1 :]
            if len(lines) >= limit:
                break
        return lines, position

    def advance(self, offset: int, lines: int) -> None:
        """Lines up to ``offset`` (``lines`` of them) are in the database now."""
        self.offset = offset
        self.replayed += lines

    @property
    def waiting(self) -> int:
        """Entries in the file not replayed yet."""
        return self.records - self.replayed

    @property
    def drained(self) -> bool:
        return self.offset >= self.size

    def truncate(self) -> None:
        """Everything replayed: empty the file (it stays, locked, for the next outage)."""
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        self.offset = self.size = self.records = self.replayed = 0

    def remove(self) -> None:
        """An adopted spool, replayed: delete it and let go of its lock."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the lock
            self._fd = -1


def adoptable(directory: Path, own: Path, *, max_bytes: int) -> list[Spool]:
    """The spools in ``directory`` whose owner died (their lock is free), now locked by us."""
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob("*" + SUFFIX)):
        if path == own:
            continue
        try:
            spool = Spool(path, max_bytes=max_bytes, adopted=True)
        except OSError:
            continue  # alive (locked), or gone meanwhile
        if spool.size == 0:
            spool.remove()
            continue
        found.append(spool)
    return found

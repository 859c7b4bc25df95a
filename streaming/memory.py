"""Handing freed memory back to the operating system after a big stream expires.

A stream's log lives in memory until its TTL runs out. Freed, its memory goes
back to the allocators, but glibc keeps the freed heap pages mapped: the
process's RSS would stay at its peak, which on a shared host looks like a
leak. ``malloc_trim(0)`` returns those pages. It runs in a worker thread (a
foreign call releases the GIL), at most one at a time, and only after a log
of at least ``RELEASE_AFTER_BYTES`` expired. Elsewhere than glibc it does
nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import sys
from typing import Any

RELEASE_AFTER_BYTES = 1 << 20


def _load_malloc_trim() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return getattr(libc, "malloc_trim", None)
    except OSError:
        return None


_malloc_trim = _load_malloc_trim()
_pending = False


def _trim() -> None:
    global _pending
    try:
        assert _malloc_trim is not None
        _malloc_trim(0)
    finally:
        _pending = False


def release_memory() -> None:
    """Return free heap pages to the OS, in the background (coalesced)."""
    global _pending
    if _malloc_trim is None or _pending:
        return
    _pending = True
    asyncio.get_running_loop().run_in_executor(None, _trim)

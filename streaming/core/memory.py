"""Handing freed memory back to the operating system after a big stream expires.

A stream's log lives in memory until its TTL runs out. Freed, its memory goes
back to the allocators, but glibc keeps the freed heap pages mapped: the
process's RSS would stay at its peak, which on a shared host looks like a
leak. ``malloc_trim(0)`` returns those pages. It runs in a worker thread (a
foreign call releases the GIL), at most one at a time, and only after a log
of at least ``RELEASE_AFTER_BYTES`` expired. Elsewhere than glibc it does
nothing.

``map_large_buffers`` (at start-up) keeps big buffers out of the heap in the
first place, see there.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import sys
from typing import Any

# A log holds neutral events (a token is its text and a few bytes): a stream
# whose log reaches this had a transcript, an audit record and readers' writes
# several times its size, freed by now.
RELEASE_AFTER_BYTES = 256 * 1024


def _load_libc() -> tuple[Any, Any]:
    """glibc's ``malloc_trim`` and ``mallopt``, or None for each one missing."""
    if not sys.platform.startswith("linux"):
        return None, None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None, None
    return getattr(libc, "malloc_trim", None), getattr(libc, "mallopt", None)


_malloc_trim, _mallopt = _load_libc()
_pending = False
M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value


def map_large_buffers() -> bool:
    """Give every allocation of 128 KiB or more its own mapping, for good.

    glibc starts so, but raises the threshold to the size of any mapped block
    that is freed (up to 32 MiB). After that, a stream's log grew inside the
    heap until it passed the new threshold, was then copied out to a mapping,
    and left a hole of its size in the heap that was never given back: about
    2 MiB of RSS for a 5 MB stream, measured with strace and smaps. Fixing
    the threshold keeps logs, batches and writes in mappings, which grow
    without copying (mremap) and are unmapped as soon as they are freed.
    """
    if _mallopt is None:
        return False
    return bool(_mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


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

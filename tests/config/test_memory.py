"""Big buffers get their own mappings, so they leave no hole in the heap when freed.

glibc raises its mapping threshold to the size of any mapped block that is
freed; then a stream's log grew in the heap and, once moved out, left its
size behind in RSS. ``map_large_buffers`` (called at start-up) fixes the
threshold. Checked with glibc's own counters, ``mallinfo2``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.live import ROOT

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc's allocator only"
)


# Run in a fresh interpreter: in this one, earlier tests may have left a free
# block of a megabyte in the heap, which glibc hands out before mapping anything.
PROBE = """
import ctypes, ctypes.util, sys
from streaming.core import memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd",
        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.mallinfo2.restype = MallInfo2
mapped = lambda: libc.mallinfo2().hblkhd  # bytes in blocks with a mapping of their own

if sys.argv[1] == "fixed":
    assert memory.map_large_buffers()
big = bytearray(8 << 20)  # mapped; freed, glibc would raise its threshold to 8 MiB
del big
before = mapped()
log = bytearray(1 << 20)
grown = mapped() - before
log += b"x" * (1 << 20)
grown_more = mapped() - before
del log
print(grown, grown_more, mapped() - before)
"""


def probe(mode: str) -> list[int]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [int(n) for n in done.stdout.split()]


def test_after_start_up_a_megabyte_buffer_is_mapped_even_after_a_bigger_one_was_freed() -> None:
    grown, grown_more, left = probe("fixed")

    assert grown >= 1 << 20, "a 1 MiB buffer was put in the heap"
    assert grown_more >= 2 << 20, "it did not grow in its own mapping"
    assert left <= 64 << 10, "its mapping was not given back when it was freed"


def test_without_it_glibc_puts_the_same_buffer_in_the_heap() -> None:
    grown, _, _ = probe("default")

    assert grown == 0  # what the start-up call is there to prevent

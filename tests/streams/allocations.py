"""What the stream code allocates while a test holds what it read.

Only allocations made in ``streaming/`` count: threads that earlier tests left
running (an audit writer, a logging handler) allocate too, and tracemalloc
sees every thread.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import streaming

T = TypeVar("T")

STREAM_CODE = str(Path(streaming.__file__).parent / "*")


def held_by_stream_code(action: Callable[[], T]) -> tuple[T, int]:
    """``action()``'s result and the bytes the stream code still holds after it."""
    tracemalloc.start()
    try:
        result = action()
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    ours = snapshot.filter_traces([tracemalloc.Filter(True, STREAM_CODE)])
    return result, sum(stat.size for stat in ours.statistics("filename"))

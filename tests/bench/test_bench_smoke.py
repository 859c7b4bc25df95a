"""The benchmark runs end to end (``python -m bench --quick``): every scenario, no errors.

No timed assertions: figures on a shared test machine mean nothing; this only
checks that the harness (fake upstream, gateway processes, load generator,
report) works.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.live import ROOT

pytestmark = pytest.mark.timeout(300)

SCENARIOS = [
    "sequential, 1 at a time (SSE)",
    "sequential, 1 at a time (Responses SSE)",
    "sequential, 1 at a time (Messages SSE)",
    "(Responses SSE)",
    "(Messages SSE)",
    "streams x 50 tok/s",
    "(SSE)",
    "(NDJSON)",
    "(WebSocket)",
    "WebSocket against SSE",
    "open streams",
    "limits checked",
    "noisy neighbour",
    "stalled reader",
    "(SSE, daphne)",
    "(daphne)",
    "audit at 100 requests/s",
    "audit export, 2,000 records (JSONL, API)",
    "audit export, 2,000 records (CSV, API)",
]


def test_quick_bench_covers_every_scenario_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "quick.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = out.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    header, body = rows[0], rows[1:]
    assert header.split(" | ")[-1].strip(" |") == "Errors"
    for name in SCENARIOS:
        assert any(name in row for row in body), f"no row for {name!r}:\n{table}"
    for row in body:
        assert row.split(" | ")[-1].strip(" |") == "0", f"errors in: {row}"

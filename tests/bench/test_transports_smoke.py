"""The transport benchmark runs end to end (``python -m bench.transports --quick``).

Like the main benchmark's smoke test, no timed assertions: only that every
variant is served, read to its end, with no errors. The channels-redis variant
needs Redis: REDIS_URL, or a server on 127.0.0.1:6379.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from bench.transports import REDIS_URL, VARIANTS
from tests.live import ROOT

pytestmark = pytest.mark.timeout(180)


def test_quick_transport_bench_serves_every_variant_without_errors(tmp_path: Path) -> None:
    url = os.environ.get("REDIS_URL", REDIS_URL)
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {url}")
    out = tmp_path / "transports.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench.transports", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=160,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| (")]
    assert [row.split(" | ")[0].strip("| ") for row in rows] == list(VARIANTS.values())
    for row in rows:
        assert row.split(" | ")[-1].strip(" |") == "0", f"errors in: {row}"

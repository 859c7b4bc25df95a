"""Figures from load-generator records, and the markdown table they end up in."""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass
from typing import Any

COLUMNS = (
    "Scenario",
    "Metric",
    "Direct",
    "Sluice",
    "Difference / ratio",
    "Target",
    "Gateway CPU s",
    "Gateway peak RSS MiB",
    "Errors",
)


@dataclass(slots=True)
class Row:
    """One line of the table. ``met`` is None where there is no target."""

    scenario: str
    metric: str
    direct: str
    sluice: str
    difference: str
    target: str = ""
    met: bool | None = None
    cpu_seconds: float | None = None
    peak_rss_mib: float | None = None
    errors: int = 0

    def cells(self) -> list[str]:
        verdict = {True: " (met)", False: " (MISSED)", None: ""}[self.met]
        return [
            self.scenario,
            self.metric,
            self.direct,
            self.sluice,
            self.difference,
            (self.target + verdict) if self.target else "",
            "" if self.cpu_seconds is None else f"{self.cpu_seconds:.2f}",
            "" if self.peak_rss_mib is None else f"{self.peak_rss_mib:.1f}",
            str(self.errors),
        ]


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def ttfts_ms(records: list[dict[str, Any]]) -> list[float]:
    return [r["ttft"] * 1000 for r in records if r["error"] is None and r["ttft"] is not None]


def durations(records: list[dict[str, Any]]) -> list[float]:
    return [r["total"] for r in records if r["error"] is None]


def errors(records: list[dict[str, Any]]) -> int:
    return sum(1 for r in records if r["error"] is not None)


def first_error(records: list[dict[str, Any]]) -> str | None:
    return next((r["error"] for r in records if r["error"] is not None), None)


def tokens_per_second(run: dict[str, Any]) -> float:
    tokens = sum(r["tokens"] for r in run["records"] if r["error"] is None)
    return tokens / max(run["ended"] - run["started"], 1e-9)


def markdown(rows: list[Row], *, title: str, notes: list[str]) -> str:
    lines = [f"# {title}", ""]
    lines.append(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"Python {platform.python_version()}, {platform.machine()}, "
        f"{_cores()} cores (fake upstream, gateway and load generator share them)."
    )
    lines.append("")
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "|".join("---" for _ in COLUMNS) + "|")
    for row in rows:
        lines.append("| " + " | ".join(row.cells()) + " |")
    lines.append("")
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))

"""Figures from load-generator records, and the markdown table they end up in."""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, field
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
    # Raw figures other rows are computed from (``transport_parity``); not shown.
    figures: dict[str, float] = field(default_factory=dict)

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


def transport_parity(rows: list[Row], base: str = "SSE", other: str = "WebSocket") -> list[Row]:
    """A row comparing the saturation rows of two transports of this run, if both ran:
    ``other``'s tokens/s within 20% of ``base``'s (and its CPU per token, shown)."""
    found = {
        label: row
        for row in rows
        for label in (base, other)
        if row.scenario.startswith("saturation,") and row.scenario.endswith(f"({label})")
    }
    if len(found) < 2 or not all(row.figures for row in found.values()):
        return []
    a, b = found[base].figures, found[other].figures
    rate = b["tokens_per_s"] / a["tokens_per_s"]
    cpu = b["cpu_us_per_token"] / a["cpu_us_per_token"]
    return [
        Row(
            f"saturation, {other} against {base}",
            "content tokens/s, same run",
            f"{a['tokens_per_s']:,.0f} ({base})",
            f"{b['tokens_per_s']:,.0f} ({other})",
            f"x{rate:.2f} (CPU per token x{cpu:.2f})",
            "≥ x0.80",
            rate >= 0.8,
        )
    ]

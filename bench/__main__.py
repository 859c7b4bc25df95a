"""``python -m bench`` (``make bench``): run every scenario and write the table.

``--quick`` shrinks every scenario (the smoke test uses it); ``--only``
picks scenarios by name. The full run writes bench/results/latest.md (and
the raw figures to latest.json, which git ignores).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import audit, governance, report
from bench.capacity import capacity
from bench.report import Row
from bench.scenarios import SCENARIOS, Bench, Sizes, saturation
from bench.stack import (
    Workspace,
    cpu_jiffies,
    create_app,
    create_routes,
    fetch_token,
    machine_speed_ms,
    start_gateway,
    start_upstream,
)
from bench.stall import stalled

RESULTS = Path(__file__).resolve().parent / "results"

ALL: dict[str, Callable[[Bench], list[Row]]] = {
    **SCENARIOS,
    "limits": governance.limits,
    "noisy": governance.noisy,
    "stalled": stalled,
    "daphne-saturation": lambda bench: saturation(bench, "sse", "daphne"),
    # Only its cut-off is in question: one run.
    "daphne-stalled": lambda bench: stalled(bench, "daphne", runs=1),
    "audit-sustained": audit.sustained,
    # Counts of Redis commands and PostgreSQL writes (docs/capacity.md); only
    # run by name, with REDIS_URL and DATABASE_URL in --gateway-env.
    "capacity": capacity,
    # Last: it leaves a million records in the run's database.
    "audit-export": audit.export,
}
BY_NAME = frozenset({"capacity"})  # not in a run of every scenario

NOTES = [
    "Direct: the load generator straight to the fake upstream; Sluice: the same "
    "requests through one gateway process. Both legs run one after the other in "
    "the same run (the sequential scenario alternates them request by request).",
    "TTFT: request sent to the first non-empty content delta; on WebSocket, "
    "chat.create sent to the first content chunk (the socket is already open).",
    "Gateway CPU s is the gateway process's and its audit writer process's (/proc "
    "stat); peak RSS is the gateway process's own (VmHWM, reset per scenario; the "
    "audit writer's is flat); each scenario runs on a fresh gateway process. With "
    "--workers N: every worker's and its audit writer's CPU, and the sum of the "
    "workers' peak RSS.",
    "The fake upstream is bench/upstream.py (uvloop, one write per token); the "
    "load generator is bench/load.py (aiohttp on uvloop; WebSocket frames read in bulk by "
    "hand, as cheap per token as its SSE lines), each in its own process. "
    "On 2 cores they compete with the gateway for CPU: saturation figures are a "
    "floor for what one gateway process relays on a core of its own.",
    "Stalled readers: the baseline column is the same stream read by one client "
    "that keeps up (same log); the other column has N clients on that stream that "
    "stop reading after the response head (N in the metric), so the difference "
    "divided by N is what one stalled reader holds. On uvicorn each figure is the "
    "median of 3 runs (a single run's peak RSS is ±1 MiB noise, which N divides).",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--only", default="", help=f"comma separated: {', '.join(ALL)}")
    parser.add_argument("--out", type=Path, help="where to write the markdown table")
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every gateway process (to compare settings), repeatable",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="sluice_serve --workers for every gateway (default: its own, the usable "
        "cores with REDIS_URL in --gateway-env, else 1)",
    )
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or [n for n in ALL if n not in BY_NAME]
    unknown = set(names) - set(ALL)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    out = args.out or (None if args.quick else RESULTS / "latest.md")

    started = time.monotonic()
    workspace = Workspace(
        extra=dict(item.split("=", 1) for item in args.gateway_env), workers=args.workers
    )
    workspace.setup_django()
    upstream = start_upstream(workspace)
    try:
        sizes = Sizes.quick() if args.quick else Sizes()
        routes = create_routes(
            f"http://127.0.0.1:{upstream.port}/v1", list(dict.fromkeys(sizes.models().values()))
        )
        client_id, secret = create_app()
        gateway = start_gateway(workspace, "uvicorn")
        try:
            token = fetch_token(f"http://127.0.0.1:{gateway.port}", client_id, secret)
        finally:
            gateway.stop()
        bench = Bench(workspace, upstream, routes, token, sizes)
        rows: list[Row] = []
        speeds: list[str] = []
        steal_before, total_before = cpu_jiffies()
        for name in names:
            print(f"-- {name}", file=sys.stderr, flush=True)
            speeds.append(f"{name} {machine_speed_ms():.1f}")
            rows += ALL[name](bench)
        rows += report.transport_parity(rows)
        steal_after, total_after = cpu_jiffies()
    finally:
        upstream.stop()
    elapsed = time.monotonic() - started
    title = "Sluice benchmark" + (" (quick)" if args.quick else "")
    steal = (steal_after - steal_before) / max(1, total_after - total_before)
    machine = (
        "Machine speed before each scenario (ms for a fixed pure-Python loop, best of 5; "
        f"lower is faster): {', '.join(speeds)}. CPU time stolen by the hypervisor "
        f"over the run: {steal:.1%}."
    )
    served = "" if args.workers is None else f" Gateway: sluice_serve --workers {args.workers}."
    notes = [*NOTES, machine, f"Whole run: {elapsed:.0f} s.{served}"]
    table = report.markdown(rows, title=title, notes=notes)
    print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table)
    shutil.rmtree(workspace.root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark's scenarios: each runs direct and through Sluice, and returns rows.

Every scenario gets a fresh gateway process (warmed up with a few requests
of its own model), so its CPU seconds and peak RSS are its own. The direct
leg runs first, then the Sluice leg, from one load-generator process.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson

from bench import report
from bench.load import Leg, Spec, spec_to_json
from bench.report import Row
from bench.stack import (
    ROOT,
    Process,
    RssSampler,
    Workspace,
    cpu_seconds,
    peak_rss_kib,
    reset_peak_rss,
    rss_kib,
    serving_processes,
    start_gateway,
)

PACED_DELAY = 0.02  # 50 tokens/s


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is; ``quick`` shrinks them for the smoke test."""

    # The p99 rows count thousands of requests. Over 500 sequential ones
    # (1.2 s), one 80 ms hiccup of this VM (direct requests slow in it too)
    # held 7 of the run's 12 slowest and set the p99 by itself.
    sequential_requests: int = 2000
    paced_streams: int = 100
    paced_tokens: int = 100
    paced_requests_per_stream: int = 16
    saturation_streams: int = 64
    saturation_requests: int = 128
    saturation_tokens: int = 1000
    open_streams: int = 1000
    open_tokens: int = 12
    open_delay: float = 1.0
    # A log of about 5 MB: neutral events are about 20 bytes a token (50 MB on
    # the wire). With 25,000 tokens the log was 0.4 MB, under the RSS the
    # process keeps anyway (about 1 MiB), so what stays after it expired said
    # nothing about the log.
    stalled_tokens: int = 250_000
    stall_seconds: float = 2.0  # SLUICE_READER_STALL_SECONDS for the stalled reader
    ttl_seconds: int = 6  # SLUICE_STREAM_TTL_SECONDS for the stalled reader
    stall_runs: int = 3  # the stalled reader's figures are medians of this many runs
    stall_readers: int = 8  # readers on the stalled stream, all stalled or all keeping up
    sustained_requests: int = 20_000
    noisy_streams: int = 1000  # app A's open streams in the noisy-neighbour row
    noisy_sequential: int = 500  # app B's requests, quiet and then noisy

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            sequential_requests=20,
            paced_streams=10,
            paced_tokens=20,
            paced_requests_per_stream=6,
            saturation_streams=8,
            saturation_requests=16,
            saturation_tokens=200,
            open_streams=50,
            open_tokens=3,
            open_delay=0.5,
            stalled_tokens=15_000,
            stall_seconds=1.0,
            ttl_seconds=3,
            stall_runs=1,
            stall_readers=2,
            sustained_requests=200,
            noisy_streams=40,
            noisy_sequential=20,
        )

    def models(self) -> dict[str, str]:
        """Scenario key -> fake upstream model name (its script)."""
        return {
            "warm": "fake:tokens=5",
            "sequential": "fake:tokens=10",
            "paced": f"fake:tokens={self.paced_tokens},delay={PACED_DELAY}",
            "saturation": f"fake:tokens={self.saturation_tokens}",
            "open": f"fake:tokens={self.open_tokens},delay={self.open_delay}",
            "stalled": f"fake:tokens={self.stalled_tokens}",
            "noisy": "fake:tokens=15,delay=1.0",
        }


SLUICE_TRANSPORTS = {
    "sse": "SSE",
    "ndjson": "NDJSON",
    "ws": "WebSocket",
    "responses": "Responses SSE",
    "messages": "Messages SSE",
}
# The path each transport posts to (the others: chat completions).
INBOUND_PATHS = {"responses": "/v1/responses", "messages": "/v1/messages"}


@dataclass
class Bench:
    """What every scenario needs: the workspace, the upstream, routes and a token."""

    workspace: Workspace
    upstream: Process
    routes: dict[str, str]  # upstream model -> public route
    token: str
    sizes: Sizes

    def direct(self, key: str) -> Leg:
        url = f"http://127.0.0.1:{self.upstream.port}/v1/chat/completions"
        return Leg("direct", url, "direct", self.sizes.models()[key])

    def sluice(self, gateway: Process, key: str, transport: str = "sse") -> Leg:
        if transport == "ws":
            url = f"ws://127.0.0.1:{gateway.port}/v1/ws"
        else:
            path = INBOUND_PATHS.get(transport, "/v1/chat/completions")
            url = f"http://127.0.0.1:{gateway.port}{path}"
        model = self.routes[self.sizes.models()[key]]
        return Leg("sluice", url, transport, model, self.token)

    @contextmanager
    def gateway(self, server: str = "uvicorn", **env: str) -> Iterator[Process]:
        process = start_gateway(self.workspace, server, **env)
        try:
            yield process
        finally:
            process.stop()


def run_load(spec: Spec) -> list[dict[str, Any]]:
    """Run the load generator in its own process; one result per leg group."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.load"],
        input=spec_to_json(spec),
        capture_output=True,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{done.stderr.decode()[-3000:]}")
    try:
        runs: list[dict[str, Any]] = orjson.loads(done.stdout)["runs"]
    except orjson.JSONDecodeError as error:
        raise RuntimeError(
            f"load generator output unreadable ({len(done.stdout)} bytes, {error}):\n"
            f"{done.stderr.decode()[-3000:]}"
        ) from None
    return runs


def warm_up(bench: Bench, gateway: Process, key: str, transport: str = "sse") -> None:
    """Token cache, route cache, upstream pool and code paths, before measuring."""
    legs = [bench.sluice(gateway, "warm", transport), bench.sluice(gateway, key, transport)]
    for leg in legs:
        run_load(Spec(legs=[leg], concurrency=4, requests=8))
    time.sleep(0.3)


@dataclass
class Cost:
    """The gateway's CPU seconds and peak RSS over a block."""

    cpu_seconds: float = 0.0
    peak_rss_mib: float = 0.0
    idle_rss_kib: int = 0


@contextmanager
def measured(gateway: Process) -> Iterator[Cost]:
    """CPU of the whole gateway (workers and audit writers); peak RSS of the
    serving process, or the sum of the workers' peaks with ``--workers N``."""
    serving = serving_processes(gateway.pid)
    cost = Cost(idle_rss_kib=sum(map(rss_kib, serving)))
    for pid in serving:
        reset_peak_rss(pid)
    before = cpu_seconds(gateway.pid)
    yield cost
    cost.cpu_seconds = cpu_seconds(gateway.pid) - before
    cost.peak_rss_mib = sum(map(peak_rss_kib, serving)) / 1024


def _ms(value: float) -> str:
    return f"{value:.2f}"


# -- scenarios ------------------------------------------------------------------
def sequential(bench: Bench, transport: str = "sse") -> list[Row]:
    """One request at a time, direct and Sluice alternating: the added TTFT."""
    name = f"sequential, 1 at a time ({SLUICE_TRANSPORTS[transport]})"
    with bench.gateway() as gateway:
        warm_up(bench, gateway, "sequential", transport)
        legs = [bench.direct("sequential"), bench.sluice(gateway, "sequential", transport)]
        spec = Spec(
            legs=legs,
            concurrency=1,
            requests=2 * bench.sizes.sequential_requests,
            interleave=True,
            expect_tokens=10,
        )
        with measured(gateway) as cost:
            (run,) = run_load(spec)
    direct = [r for r in run["records"] if r["leg"] == "direct"]
    sluice = [r for r in run["records"] if r["leg"] == "sluice"]
    rows = []
    for p, limit in ((50, 1.0), (99, 3.0)):
        d, s = (
            report.percentile(report.ttfts_ms(direct), p),
            report.percentile(report.ttfts_ms(sluice), p),
        )
        rows.append(
            Row(
                name,
                f"TTFT p{p} (ms)",
                _ms(d),
                _ms(s),
                f"+{s - d:.2f} ms",
                f"added ≤ {limit:g} ms",
                s - d <= limit,
                cost.cpu_seconds,
                cost.peak_rss_mib,
                report.errors(direct) + report.errors(sluice),
            )
        )
    return rows


def paced(bench: Bench) -> list[Row]:
    """100 concurrent streams at 50 tokens/s: added TTFT and stream durations.

    Steady: the streams' starts are spread over one stream's length, so about
    100 are in flight from then on, new ones arriving as others end (50 a
    second); TTFT counts the requests that arrived once all 100 were
    running: 1,500 of them over 30 s, so the p99 is the 15th worst, not the
    5th of 500, which a single short hiccup of this VM can fill. Burst: 100
    requests at the same instant (every request's set-up queues behind the
    others' on the worker's one core: ~0.85 ms of CPU each).
    """
    sizes = bench.sizes
    streams = sizes.paced_streams
    stream_seconds = sizes.paced_tokens * PACED_DELAY
    name = f"{streams} streams x 50 tok/s, {sizes.paced_tokens} tokens (SSE)"
    with bench.gateway() as gateway:
        warm_up(bench, gateway, "paced")
        legs = [bench.direct("paced"), bench.sluice(gateway, "paced")]
        steady = Spec(
            legs=legs,
            concurrency=streams,
            requests=sizes.paced_requests_per_stream * streams,
            ramp_seconds=stream_seconds,
            expect_tokens=sizes.paced_tokens,
        )
        with measured(gateway) as cost:
            direct_run, sluice_run = run_load(steady)
        burst = Spec(
            legs=legs, concurrency=streams, requests=streams, expect_tokens=sizes.paced_tokens
        )
        direct_burst, sluice_burst = run_load(burst)
    direct, sluice = direct_run["records"], sluice_run["records"]
    errors = report.errors(direct) + report.errors(sluice)
    d99 = report.percentile(report.ttfts_ms(_after_ramp(direct, stream_seconds)), 99)
    s99 = report.percentile(report.ttfts_ms(_after_ramp(sluice, stream_seconds)), 99)
    d_med = report.percentile(report.durations(direct), 50)
    d_max = report.percentile(report.durations(direct), 100)
    s_med = report.percentile(report.durations(sluice), 50)
    s_max = report.percentile(report.durations(sluice), 100)
    slowest = s_max / d_med - 1
    b_d99 = report.percentile(report.ttfts_ms(direct_burst["records"]), 99)
    b_s99 = report.percentile(report.ttfts_ms(sluice_burst["records"]), 99)
    return [
        Row(
            name + ", steady",
            "TTFT p99 (ms), all 100 in flight",
            _ms(d99),
            _ms(s99),
            f"+{s99 - d99:.2f} ms",
            "added ≤ 10 ms",
            s99 - d99 <= 10,
            cost.cpu_seconds,
            cost.peak_rss_mib,
            errors,
        ),
        Row(
            name + ", steady",
            "stream duration median / slowest (s)",
            f"{d_med:.3f} / {d_max:.3f}",
            f"{s_med:.3f} / {s_max:.3f}",
            f"slowest {slowest:+.1%} vs direct median",
            "every stream ≤ +5%",
            slowest <= 0.05,
            errors=errors,
        ),
        Row(
            name + ", burst",
            "TTFT p99 (ms), 100 sent at once",
            _ms(b_d99),
            _ms(b_s99),
            f"+{b_s99 - b_d99:.2f} ms",
            "added ≤ 10 ms",
            b_s99 - b_d99 <= 10,
            errors=report.errors(direct_burst["records"]) + report.errors(sluice_burst["records"]),
        ),
    ]


def _after_ramp(records: list[dict[str, Any]], ramp: float) -> list[dict[str, Any]]:
    """The requests sent once the ramp was over (every worker busy)."""
    first = min(r["started"] for r in records)
    return [r for r in records if r["started"] - first >= ramp]


def saturation(bench: Bench, transport: str = "sse", server: str = "uvicorn") -> list[Row]:
    """Many concurrent streams with no delay: content tokens/s one process relays."""
    sizes = bench.sizes
    label = SLUICE_TRANSPORTS[transport] + ("" if server == "uvicorn" else f", {server}")
    name = f"saturation, {sizes.saturation_streams} streams x {sizes.saturation_tokens} ({label})"
    with bench.gateway(server) as gateway:
        warm_up(bench, gateway, "saturation", transport)
        legs = [bench.direct("saturation"), bench.sluice(gateway, "saturation", transport)]
        spec = Spec(
            legs=legs,
            concurrency=sizes.saturation_streams,
            requests=sizes.saturation_requests,
            expect_tokens=sizes.saturation_tokens,
        )
        with measured(gateway) as cost:
            direct_run, sluice_run = run_load(spec)
    d, s = report.tokens_per_second(direct_run), report.tokens_per_second(sluice_run)
    tokens = sum(r["tokens"] for r in sluice_run["records"])
    per_token = cost.cpu_seconds / max(tokens, 1) * 1e6
    return [
        Row(
            name,
            "content tokens/s",
            f"{d:,.0f}",
            f"{s:,.0f}",
            f"x{s / d:.2f} ({per_token:.1f} µs gateway CPU/token)",
            "≥ 20,000 tok/s",
            s >= 20_000,
            cost.cpu_seconds,
            cost.peak_rss_mib,
            report.errors(direct_run["records"]) + report.errors(sluice_run["records"]),
            figures={"tokens_per_s": s, "cpu_us_per_token": per_token},
        )
    ]


def open_streams(bench: Bench) -> list[Row]:
    """Many slow streams open at once: the gateway's RSS per open stream."""
    sizes = bench.sizes
    count = sizes.open_streams
    name = f"{count:,} open streams, 1 tok/s (SSE)"
    with bench.gateway() as gateway:
        warm_up(bench, gateway, "sequential")
        spec = Spec(
            legs=[bench.sluice(gateway, "open")],
            concurrency=count,
            requests=count,
            ramp_seconds=min(2.0, count / 500),
            expect_tokens=sizes.open_tokens,
        )
        with measured(gateway) as cost, RssSampler(gateway.pid) as sampler:
            (run,) = run_load(spec)
    records = run["records"]
    all_open = max(r["started"] + (r["ttft"] or 0) for r in records)
    first_end = min(r["started"] + r["total"] for r in records)
    window = sampler.between(all_open, first_end) or [s for _, s in sampler.samples]
    plateau = report.percentile([float(v) for v in window], 50)
    per_stream = (plateau - cost.idle_rss_kib) / count
    return [
        Row(
            name,
            "RSS per open stream (KiB)",
            "—",
            f"{per_stream:.1f}",
            f"idle {cost.idle_rss_kib / 1024:.1f} MiB → {plateau / 1024:.1f} MiB open",
            "≤ 64 KiB",
            per_stream <= 64,
            cost.cpu_seconds,
            cost.peak_rss_mib,
            report.errors(records),
        )
    ]


def sustained(bench: Bench) -> list[Row]:
    """Many short requests in a row (4 at a time): does a pause build up?

    Every finished stream stays resumable for the TTL (600 s), so what the
    gateway keeps per finished stream, and how long the garbage collector
    takes to walk it, grows with the traffic; it shows at the far tail.
    """
    count = bench.sizes.sustained_requests
    name = f"sustained, {count:,} requests, 4 at a time (SSE)"
    with bench.gateway() as gateway:
        warm_up(bench, gateway, "sequential")
        legs = [bench.direct("sequential"), bench.sluice(gateway, "sequential")]
        spec = Spec(legs=legs, concurrency=4, requests=count, expect_tokens=10)
        with measured(gateway) as cost:
            direct_run, sluice_run = run_load(spec)
        grown = (rss_kib(gateway.pid) - cost.idle_rss_kib) / 1024
    direct, sluice = direct_run["records"], sluice_run["records"]
    errors = report.errors(direct) + report.errors(sluice)
    rows = []
    for p, label in ((99.9, "p99.9"), (100, "max")):
        d = report.percentile(report.ttfts_ms(direct), p)
        s = report.percentile(report.ttfts_ms(sluice), p)
        rows.append(
            Row(
                name,
                f"TTFT {label} (ms)",
                _ms(d),
                _ms(s),
                f"+{s - d:.2f} ms" + (f"; RSS +{grown:.0f} MiB after" if p == 100 else ""),
                "",
                None,
                cost.cpu_seconds,
                cost.peak_rss_mib,
                errors,
            )
        )
    return rows


SCENARIOS: dict[str, Callable[[Bench], list[Row]]] = {
    "sequential": sequential,
    "sequential-responses": lambda bench: sequential(bench, "responses"),
    "sequential-messages": lambda bench: sequential(bench, "messages"),
    "paced": paced,
    "sustained": sustained,
    "saturation": saturation,
    "saturation-ndjson": lambda bench: saturation(bench, "ndjson"),
    "saturation-ws": lambda bench: saturation(bench, "ws"),
    "saturation-responses": lambda bench: saturation(bench, "responses"),
    "saturation-messages": lambda bench: saturation(bench, "messages"),
    "open": open_streams,
}

"""Governance scenarios: what per-app limits cost, and whether a noisy app hurts another.

``limits``: one request at a time, alternating direct, an app without limits
and an app with every limit set (none ever reached), on a gateway sharing its
limits through Redis: the limit check's own cost is the difference between
the two apps' added TTFT.

``noisy``: an app sequential on its own (quiet), then again while another app
holds ``noisy_streams`` slow streams open (noisy): with a per-app share of
the upstream pool, the second app's added TTFT barely moves. The noisy app's
streams beyond its share are refused (429), which is the point, so they are
reported, not counted as errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import orjson
import redis

from bench import report
from bench.load import Leg, Spec, spec_to_json
from bench.report import Row
from bench.scenarios import Bench, run_load, warm_up
from bench.stack import ROOT, fetch_token

REDIS_URL = os.environ.get("SLUICE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
UNREACHED = {
    "requests_per_minute": 10_000_000,
    "tokens_per_minute": 10**12,
    "concurrent_streams": 100_000,
    "max_tokens": 100_000,
    "monthly_tokens": 10**15,
    "monthly_cost_usd": 10**9,
}


def _redis_up() -> bool:
    try:
        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1) as client:
            client.flushdb()
        return True
    except redis.RedisError:
        return False


def _app(name: str, **limits: Any) -> tuple[str, str]:
    """An app (with these policy limits); returns (client_id, secret)."""
    from accounts.models import AppPolicy
    from accounts.services import app_create

    app, secret = app_create(name=f"{name}-{os.getpid()}-{time.monotonic_ns()}", scopes=["chat"])
    policy = AppPolicy.of(app)
    for field, value in limits.items():
        setattr(policy, field, value)
    policy.save()
    return app.client_id, secret


def _added(records: list[dict[str, Any]], direct: list[dict[str, Any]], p: float) -> float:
    return report.percentile(report.ttfts_ms(records), p) - report.percentile(
        report.ttfts_ms(direct), p
    )


def limits(bench: Bench) -> list[Row]:
    name = "limits checked, 1 at a time (SSE, Redis)"
    if not _redis_up():
        return [Row(name, "added TTFT", "—", "—", f"no Redis at {REDIS_URL}", "", None)]
    free = _app("bench-free")
    limited = _app("bench-limited", **UNREACHED)
    with bench.gateway(REDIS_URL=REDIS_URL) as gateway:
        base = f"http://127.0.0.1:{gateway.port}"
        legs = [bench.direct("sequential"), bench.sluice(gateway, "sequential")]
        free_leg = Leg("free", legs[1].url, "sse", legs[1].model, fetch_token(base, *free))
        limited_leg = Leg("limited", legs[1].url, "sse", legs[1].model, fetch_token(base, *limited))
        for leg in (free_leg, limited_leg):
            run_load(Spec(legs=[leg], concurrency=4, requests=40))
        warm_up(bench, gateway, "sequential")
        # Each app's request follows a direct one, so neither starts while the
        # gateway is still ending the other's (settling, auditing).
        spec = Spec(
            legs=[legs[0], free_leg, legs[0], limited_leg],
            concurrency=1,
            requests=4 * bench.sizes.sequential_requests,
            interleave=True,
            expect_tokens=10,
        )
        (run,) = run_load(spec)
    by_leg = {
        leg: [r for r in run["records"] if r["leg"] == leg] for leg in ("direct", "free", "limited")
    }
    errors = sum(report.errors(records) for records in by_leg.values())
    rows = []
    for p in (50, 99):
        free_added = _added(by_leg["free"], by_leg["direct"], p)
        limited_added = _added(by_leg["limited"], by_leg["direct"], p)
        cost = limited_added - free_added
        rows.append(
            Row(
                name,
                f"added TTFT p{p} (ms): app without limits → app with every limit",
                f"+{free_added:.2f}",
                f"+{limited_added:.2f}",
                f"{cost:+.2f} ms for the limit check",
                "≤ +0.2 ms" if p == 50 else "",
                cost <= 0.2 if p == 50 else None,
                errors=errors,
            )
        )
    return rows


def noisy(bench: Bench) -> list[Row]:
    sizes = bench.sizes
    streams = sizes.noisy_streams
    name = f"noisy neighbour: {streams:,} open streams of app A, app B 1 at a time (SSE)"
    use_redis = _redis_up()
    env = {"REDIS_URL": REDIS_URL} if use_redis else {}
    quiet_app, noisy_app = _app("bench-quiet"), _app("bench-noisy")
    with bench.gateway(**env) as gateway:
        base = f"http://127.0.0.1:{gateway.port}"
        sluice = bench.sluice(gateway, "sequential")
        b_leg = Leg("sluice", sluice.url, "sse", sluice.model, fetch_token(base, *quiet_app))
        a_model = bench.routes[sizes.models()["noisy"]]
        a_leg = Leg("noisy", sluice.url, "sse", a_model, fetch_token(base, *noisy_app))
        warm_up(bench, gateway, "sequential")
        run_load(Spec(legs=[b_leg], concurrency=4, requests=40))
        requests = sizes.noisy_sequential
        spec = Spec(
            legs=[bench.direct("sequential"), b_leg],
            concurrency=1,
            requests=2 * requests,
            interleave=True,
            expect_tokens=10,
        )
        (quiet,) = run_load(spec)
        # App A's load runs beside app B's second run: its results go to files
        # (a pipe would fill up and stall it before it ends).
        out_file = bench.workspace.root / "noisy.json"
        err_file = bench.workspace.root / "noisy.err"
        with out_file.open("wb") as out, err_file.open("wb") as err:
            noise = subprocess.Popen(
                [sys.executable, "-m", "bench.load"],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                cwd=ROOT,
            )
            assert noise.stdin is not None
            ramp = min(2.0, streams / 500)
            noise.stdin.write(
                spec_to_json(
                    Spec(legs=[a_leg], concurrency=streams, requests=streams, ramp_seconds=ramp)
                )
            )
            noise.stdin.close()
            time.sleep(ramp + 1.0)  # every noisy stream open (or refused)
            (loud,) = run_load(spec)
            noise.wait(timeout=300)
    if noise.returncode != 0:
        raise RuntimeError(f"noisy load failed:\n{err_file.read_text()[-3000:]}")
    out = out_file.read_bytes()
    noisy_records = orjson.loads(out)["runs"][0]["records"]
    refused = sum(1 for r in noisy_records if (r["error"] or "").startswith("HTTP 429"))
    served = sum(1 for r in noisy_records if r["error"] is None)

    def added(run: dict[str, Any], p: float) -> float:
        records = run["records"]
        direct = [r for r in records if r["leg"] == "direct"]
        return _added([r for r in records if r["leg"] == "sluice"], direct, p)

    errors = report.errors(quiet["records"]) + report.errors(loud["records"])
    quiet99, loud99 = added(quiet, 99), added(loud, 99)
    return [
        Row(
            name,
            "app B added TTFT p99 (ms): quiet → with app A's streams open",
            f"+{quiet99:.2f}",
            f"+{loud99:.2f}",
            f"{loud99 - quiet99:+.2f} ms; app A: {served:,} served, {refused:,} refused (429)"
            + ("" if use_redis else "; no Redis"),
            "within 10 ms of quiet",
            loud99 - quiet99 <= 10,
            errors=errors,
        ),
        Row(
            name,
            "app B added TTFT p50 (ms): quiet → noisy",
            f"+{added(quiet, 50):.2f}",
            f"+{added(loud, 50):.2f}",
            f"{added(loud, 50) - added(quiet, 50):+.2f} ms",
            "",
            None,
            errors=errors,
        ),
    ]

"""What the transport framework itself costs: ``python -m bench.transports``.

One server process (uvicorn, uvloop, the gateway's guarded httptools protocol
and keep-alive, as ``manage.py sluice_serve`` runs it; the gateway's garbage
collector settings) serves the same synthetic stream, with no upstream,
through four ASGI apps:

- ``/raw``: a raw ASGI endpoint shaped like today's StreamResponse (a task
  watching for ``http.disconnect``; ``http.response.start``, then one
  ``http.response.body`` with ``more_body`` per event);
- ``/consumer``: a Channels ``AsyncHttpConsumer`` that streams from a task,
  so that its dispatch loop sees ``http.disconnect``, with no channel layer
  (its alias is not in CHANNEL_LAYERS: ``get_channel_layer`` returns None);
- ``/consumer-redis``: the same consumer on the channels-redis layer (a
  channel, and a receive on it, per request);
- ``/django``: an async Django view returning ``StreamingHttpResponse`` over
  an async iterator, through the gateway's Django ASGI handler, MIDDLEWARE
  and URLconf (the view first in it, csrf_exempt like any bearer-token API).

Two more rows say where the cost of (b) and (c) goes: ``/consumer-lean``, the
consumer without Channels' ``aclose_old_connections()`` hops, and
``/django-bare``, the view through a Django handler with no middleware.

The stream is ``events`` copies of a 269-byte SSE event (an OpenAI chunk), then
``[DONE]``, from an async generator that yields to the loop every 16 events
(as the fake upstream does), or sleeps ``delay`` seconds between events.
The load generator is bench/load.py in its own process; server CPU is read
from /proc. The table goes to bench/results/transports.md (``--out`` elsewhere;
``--quick`` for a smoke test). ``serve --port N`` runs the server alone (with
DJANGO_SETTINGS_MODULE, SLUICE_DEV=1 and REDIS_URL set).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.http import AsyncHttpConsumer
from django.http import HttpRequest, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

CHUNK = (
    b'data: {"id":"chatcmpl-AbCdEfGhIjKlMnOpQrStUvWxYz012","object":"chat.completion.chunk",'
    b'"created":1733318400,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1",'
    b'"choices":[{"index":0,"delta":{"content":" token"},"logprobs":null,"finish_reason":null}]}'
    b"\n\n"
)
DONE = b"data: [DONE]\n\n"
CONTENT_TYPE = "text/event-stream; charset=utf-8"
HEADERS = [
    (b"content-type", CONTENT_TYPE.encode()),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
YIELD_EVERY = 16
REDIS_URL = "redis://127.0.0.1:6379/5"
RESULTS = Path(__file__).resolve().parent / "results"


# -- the server -------------------------------------------------------------------
def stream_args(query: bytes | str) -> tuple[int, float]:
    """(events, delay) from ``?events=N&delay=S``."""
    if isinstance(query, bytes):
        query = query.decode("latin-1")
    args = dict(parse_qsl(query))
    return int(args.get("events", 1)), float(args.get("delay", 0))


async def events(count: int, delay: float) -> AsyncIterator[bytes]:
    for i in range(count):
        if delay and i:
            await asyncio.sleep(delay)
        yield CHUNK
        if not delay and i % YIELD_EVERY == YIELD_EVERY - 1:
            await asyncio.sleep(0)
    yield DONE


async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """(a) Today's shape: read the body, watch for a disconnect, pump the events."""
    while (await receive()).get("more_body"):
        pass
    task = asyncio.current_task()
    assert task is not None
    gone = False

    def client_left(watch: asyncio.Future[dict[str, Any]]) -> None:
        nonlocal gone
        if not watch.cancelled():
            gone = True
            task.cancel()

    watch = asyncio.ensure_future(receive())
    watch.add_done_callback(client_left)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        async for data in events(*stream_args(scope["query_string"])):
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except asyncio.CancelledError:
        if not gone:
            raise
    finally:
        watch.remove_done_callback(client_left)
        watch.cancel()


class SseConsumer(AsyncHttpConsumer):
    """(b) Streams from a task: the stock ``handle()`` would keep the dispatch
    loop from seeing ``http.disconnect`` until the stream ended."""

    channel_layer_alias = "bench-no-layer"  # not in CHANNEL_LAYERS: no layer
    stream: asyncio.Task[None] | None = None

    async def http_request(self, message: dict[str, Any]) -> None:
        self.body.append(message.get("body", b""))
        if not message.get("more_body"):
            self.stream = asyncio.create_task(self.respond())

    async def respond(self) -> None:
        await self.send_headers(headers=HEADERS)
        async for data in events(*stream_args(self.scope["query_string"])):
            await self.send_body(data, more_body=True)
        await self.send_body(b"")

    async def disconnect(self) -> None:
        # Also reached once the response is complete: uvicorn then reports a disconnect.
        if self.stream is not None:
            self.stream.cancel()


class LayeredSseConsumer(SseConsumer):
    channel_layer_alias = "default"  # channels-redis (REDIS_URL is set)


class LeanSseConsumer(SseConsumer):
    """For attribution: no ``aclose_old_connections()`` (a hop to the sync
    thread) before each message it dispatches, nor on disconnect."""

    async def dispatch(self, message: dict[str, Any]) -> None:
        await getattr(self, get_handler_name(message))(message)

    async def http_disconnect(self, message: dict[str, Any]) -> None:
        await self.disconnect()
        raise StopConsumer


@csrf_exempt
async def django_view(request: HttpRequest) -> StreamingHttpResponse:
    """(c) An async view; Django's ASGI handler sends each part and watches for a disconnect."""
    request.body  # noqa: B018  # read, like the other variants
    response = StreamingHttpResponse(
        events(*stream_args(request.META["QUERY_STRING"])), content_type=CONTENT_TYPE
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def make_app() -> Callable[..., Any]:
    """The server's ASGI app (a uvicorn factory: Django is set up here)."""
    from channels.layers import get_channel_layer
    from django.conf import settings
    from django.core.handlers.asgi import ASGIHandler
    from django.test import override_settings
    from django.urls import path

    from gateway import urls
    from gateway.asgi import django_app, settle_gc

    urls.urlpatterns[:0] = [path("django", django_view), path("django-bare", django_view)]
    with override_settings(MIDDLEWARE=[]):
        bare_django = ASGIHandler()
    assert get_channel_layer(SseConsumer.channel_layer_alias) is None
    layer = get_channel_layer(LayeredSseConsumer.channel_layer_alias)
    assert type(layer).__name__ == "RedisChannelLayer", layer
    routes = {
        "/raw": raw_app,
        "/consumer": SseConsumer.as_asgi(),
        "/consumer-redis": LayeredSseConsumer.as_asgi(),
        "/consumer-lean": LeanSseConsumer.as_asgi(),
        "/django-bare": bare_django,
    }

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                settle_gc(settings.SLUICE_GC_YOUNG_THRESHOLD)
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await routes.get(scope["path"], django_app)(scope, receive, send)

    return app


def serve(port: int) -> None:
    import django
    import uvicorn
    from django.conf import settings

    django.setup()  # as manage.py does before sluice_serve
    # streaming/management/commands/sluice_serve.py's settings (no TLS, no proxy).
    uvicorn.run(
        "bench.transports:make_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="streaming.transports.connections:GuardedHttpProtocol",
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=settings.SLUICE_KEEPALIVE_SECONDS,
    )


# -- the measurements -------------------------------------------------------------
VARIANTS = {
    "raw": "(a) raw ASGI endpoint",
    "consumer": "(b) AsyncHttpConsumer, no channel layer",
    "consumer-redis": "(b) AsyncHttpConsumer, channels-redis layer",
    "consumer-lean": "(b) without aclose_old_connections (attribution)",
    "django": "(c) StreamingHttpResponse, Django handler + MIDDLEWARE",
    "django-bare": "(c) with MIDDLEWARE = [] (attribution)",
}


@dataclass
class Sizes:
    sequential_requests: int = 2000  # per variant, alternating
    sequential_events: int = 10
    short_requests: int = 2000  # 1-event requests, 8 at a time: CPU per request
    streams: int = 64
    stream_events: int = 1000
    stream_requests: int = 128
    rounds: int = 3  # the CPU phases alternate variants this many times; medians
    paced_streams: int = 100
    paced_events: int = 50
    paced_delay: float = 0.02
    paced_requests_per_stream: int = 6

    @classmethod
    def quick(cls) -> Sizes:
        return cls(200, 10, 200, 8, 200, 16, 1, 10, 10, 0.02, 2)


@dataclass
class Figures:
    ttft_ms: list[float] = field(default_factory=list)
    request_cpu_us: list[float] = field(default_factory=list)
    events_per_s: list[float] = field(default_factory=list)
    event_cpu_us: list[float] = field(default_factory=list)
    paced_ms: tuple[float, float] = (float("nan"), float("nan"))  # p50, p99
    errors: int = 0
    first_error: str | None = None

    def count(self, records: list[dict[str, Any]]) -> None:
        from bench import report

        self.errors += report.errors(records)
        self.first_error = self.first_error or report.first_error(records)


def _leg(port: int, variant: str, events_: int, delay: float = 0.0) -> Any:
    from bench.load import Leg

    query = f"events={events_}" + (f"&delay={delay}" if delay else "")
    return Leg(variant, f"http://127.0.0.1:{port}/{variant}?{query}", "sse", "bench")


def _cpu_run(pid: int, spec: Any) -> tuple[dict[str, Any], float]:
    """One load run and the server's CPU seconds over it."""
    from bench.scenarios import run_load
    from bench.stack import cpu_seconds

    before = cpu_seconds(pid)
    (run,) = run_load(spec)
    return run, cpu_seconds(pid) - before


def measure(port: int, pid: int, sizes: Sizes) -> dict[str, Figures]:
    from bench import report
    from bench.load import Spec
    from bench.scenarios import _after_ramp, run_load

    figures = {variant: Figures() for variant in VARIANTS}
    for variant in VARIANTS:  # warm up every code path
        run_load(Spec(legs=[_leg(port, variant, 20)], concurrency=4, requests=40))

    print("-- sequential, alternating", file=sys.stderr, flush=True)
    legs = [_leg(port, v, sizes.sequential_events) for v in VARIANTS]
    spec = Spec(
        legs=legs,
        concurrency=1,
        requests=len(legs) * sizes.sequential_requests,
        interleave=True,
        expect_tokens=sizes.sequential_events,
    )
    (run,) = run_load(spec)
    for variant, each in figures.items():
        records = [r for r in run["records"] if r["leg"] == variant]
        each.ttft_ms = report.ttfts_ms(records)
        each.count(records)

    order = list(VARIANTS)
    for round_ in range(sizes.rounds):
        print(f"-- CPU phases, round {round_ + 1}", file=sys.stderr, flush=True)
        for variant in order[round_ % len(order) :] + order[: round_ % len(order)]:
            each = figures[variant]
            short = Spec(
                legs=[_leg(port, variant, 1)],
                concurrency=8,
                requests=sizes.short_requests,
                expect_tokens=1,
            )
            run, cpu = _cpu_run(pid, short)
            each.request_cpu_us.append(cpu / len(run["records"]) * 1e6)
            each.count(run["records"])
            long = Spec(
                legs=[_leg(port, variant, sizes.stream_events)],
                concurrency=sizes.streams,
                requests=sizes.stream_requests,
                expect_tokens=sizes.stream_events,
            )
            run, cpu = _cpu_run(pid, long)
            events_ = sum(r["tokens"] for r in run["records"])
            each.events_per_s.append(report.tokens_per_second(run))
            each.event_cpu_us.append(cpu / max(events_, 1) * 1e6)
            each.count(run["records"])

    print("-- paced", file=sys.stderr, flush=True)
    ramp = sizes.paced_events * sizes.paced_delay
    for variant, each in figures.items():
        spec = Spec(
            legs=[_leg(port, variant, sizes.paced_events, sizes.paced_delay)],
            concurrency=sizes.paced_streams,
            requests=sizes.paced_streams * sizes.paced_requests_per_stream,
            ramp_seconds=ramp,
            expect_tokens=sizes.paced_events,
        )
        (run,) = run_load(spec)
        steady = _after_ramp(run["records"], ramp)
        ttfts = report.ttfts_ms(steady)
        each.paced_ms = (report.percentile(ttfts, 50), report.percentile(ttfts, 99))
        each.count(run["records"])
    return figures


def _spread(values: list[float], fmt: str, unit: str = "") -> str:
    """Median (min to max)."""
    middle = format(statistics.median(values), fmt) + unit
    if len(values) < 2:
        return middle
    return f"{middle} ({format(min(values), fmt)} to {format(max(values), fmt)}{unit})"


def _over(values: list[float], base: list[float], fmt: str) -> str:
    """Median of the differences to the raw endpoint's figure of the same round."""
    return format(statistics.median(v - b for v, b in zip(values, base, strict=True)), fmt)


def table(figures: dict[str, Figures], sizes: Sizes, notes: list[str]) -> str:
    from bench.report import percentile

    base = figures["raw"]
    b50, b99 = percentile(base.ttft_ms, 50), percentile(base.ttft_ms, 99)
    columns = [
        "Variant",
        "first event p50 / p99 (ms)",
        "over (a) p50 / p99 (ms)",
        "CPU µs per 1-event request",
        "over (a)",
        f"events/s, {sizes.streams} x {sizes.stream_events}",
        "CPU µs per event",
        "over (a)",
        f"{sizes.paced_streams} streams x {1 / sizes.paced_delay:g} ev/s: "
        "first event p50 / p99 (ms)",
        "errors",
    ]
    lines = [
        "# Transport framework cost",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Python "
        f"{sys.version.split()[0]}, {len(os.sched_getaffinity(0))} cores shared by "
        "server and load generator.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for variant, each in figures.items():
        p50, p99 = percentile(each.ttft_ms, 50), percentile(each.ttft_ms, 99)
        raw = variant == "raw"
        cells = [
            VARIANTS[variant],
            f"{p50:.2f} / {p99:.2f}",
            "—" if raw else f"{p50 - b50:+.2f} / {p99 - b99:+.2f}",
            _spread(each.request_cpu_us, ".0f"),
            "—" if raw else _over(each.request_cpu_us, base.request_cpu_us, "+.0f"),
            _spread([v / 1000 for v in each.events_per_s], ".0f", "k"),
            _spread(each.event_cpu_us, ".2f"),
            "—" if raw else _over(each.event_cpu_us, base.event_cpu_us, "+.2f"),
            "{:.2f} / {:.2f}".format(*each.paced_ms),
            str(each.errors) + (f" ({each.first_error[:80]})" if each.first_error else ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


NOTES = [
    "One server process serves every variant. The sequential column alternates them "
    "request by request ({seq} requests each, streams of {seq_events} events, on a "
    "kept-alive connection): request sent to the first event read.",
    "CPU columns: the server process's user+system CPU (/proc/<pid>/stat, 10 ms ticks, "
    "all threads) over {short} requests of 1 event, 8 at a time, and over {streams} "
    "concurrent streams x {events} events ({stream_requests} streams), per request or "
    "event; median of {rounds} rounds (min to max), the variants in a rotated order each "
    "round; over (a) is the median of each round's difference to (a). Per event includes "
    "a stream's per-request cost / {events}.",
    "Every variant sends one http.response.body per event (the gateway batches events "
    "per send when a reader lags, so under load one send can carry several tokens).",
    "Thread hops (sync_to_async, from the sources): the stock consumer's dispatch awaits "
    "aclose_old_connections() on the process's one sync thread before each message, so "
    "one hop before the first byte and two after the response; Django's handler runs a "
    "request in a ThreadSensitiveContext, a new one-thread executor (and a thread to "
    "join it) per request, with a hop for request_started and one per sync middleware "
    "method (13 with this MIDDLEWARE) before the first byte, and one for response.close.",
    "channels-redis: new_channel() is a uuid and the consumer's receive waits behind the "
    "layer's one blocking BZPOPMIN per process (5 s timeout), so a request sends no "
    "Redis command of its own (INFO commandstats, 50 requests).",
    "The paced column: {paced} streams of {paced_events} events at {delay_ms:g} ms, "
    "started over one stream's length; TTFTs of the requests sent once all were in flight.",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.transports", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--out", type=Path, help="markdown table (default: results/transports.md)")
    sub = parser.add_subparsers(dest="command")
    serve_parser = sub.add_parser("serve", help="run the server alone")
    serve_parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.port)
        return 0

    from bench.stack import Workspace, cpu_jiffies, machine_speed_ms, start_process

    sizes = Sizes.quick() if args.quick else Sizes()
    workspace = Workspace()
    env = workspace.env(SLUICE_DEV="1", REDIS_URL=os.environ.get("REDIS_URL", REDIS_URL))
    started = time.monotonic()
    speed_before = machine_speed_ms()
    steal_before, total_before = cpu_jiffies()
    server = start_process(
        "transports", ["-m", "bench.transports", "serve", "--port"], env, workspace.root
    )
    try:
        figures = measure(server.port, server.pid, sizes)
    finally:
        server.stop()
    steal_after, total_after = cpu_jiffies()
    steal = (steal_after - steal_before) / max(1, total_after - total_before)
    notes = [
        note.format(
            seq=sizes.sequential_requests,
            seq_events=sizes.sequential_events,
            short=sizes.short_requests,
            streams=sizes.streams,
            events=sizes.stream_events,
            stream_requests=sizes.stream_requests,
            rounds=sizes.rounds,
            paced=sizes.paced_streams,
            paced_events=sizes.paced_events,
            delay_ms=sizes.paced_delay * 1000,
        )
        for note in NOTES
    ]
    notes.append(
        f"Machine speed (ms for a fixed pure-Python loop, lower is faster): "
        f"{speed_before:.1f} before, {machine_speed_ms():.1f} after; CPU stolen by the "
        f"hypervisor: {steal:.1%}; load average at the end: "
        f"{os.getloadavg()[0]:.2f}. Whole run: {time.monotonic() - started:.0f} s."
    )
    output = table(figures, sizes, notes)
    print(output)
    out = args.out or (None if args.quick else RESULTS / "transports.md")
    if out is not None:
        out.write_text(output)
    shutil.rmtree(workspace.root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The stalled-reader scenario: raw TCP clients that stop reading mid-stream.

One client starts a stream and a few more follow it (``GET /v1/streams/<id>``),
each over a raw socket with a small receive buffer; they read the response
head and then nothing more while the stream logs about 5 MB. The
baseline is the same stream read by one client that keeps up: the log is
the same size, so the difference in RSS, divided by the number of stalled
readers, is what one stalled reader holds, everything included (its
connection, the write waiting for it, the server's copy of that write).
Several readers, not one: a single run's peak RSS moves by up to 1 MiB
with the allocator's state, three times what one reader may hold. Then:
were they cut off after the stall timeout, does another reader still get
everything, and does RSS fall back once the stream expires?
"""

from __future__ import annotations

import socket
import statistics
import sys
import time
from dataclasses import dataclass

import httpx
import orjson

from bench.load import LineCounter, Spec
from bench.report import Row
from bench.scenarios import Bench, run_load, warm_up
from bench.stack import Process, cpu_seconds, peak_rss_kib, reset_peak_rss, rss_kib

READER_BUFFER_KIB = 256  # SLUICE_READER_BUFFER_BYTES default
TRANSPORT_KIB = 64  # uvicorn/uvloop write buffer high-water mark
TCP_ESTABLISHED = 1  # tcp_info.tcpi_state
STALLED_RCVBUF = 4096


class StalledClient:
    """One streaming response over a raw socket with a tiny receive buffer,
    read no further than its head unless asked to."""

    def __init__(self, port: int, request: bytes) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(request)
        self.head = b""
        while not self.head.endswith(b"\r\n\r\n"):
            byte = self.sock.recv(1)
            if not byte:
                raise RuntimeError("gateway closed the connection before the response head")
            self.head += byte

    @classmethod
    def start(cls, port: int, token: str, model: str) -> StalledClient:
        """POST a streaming chat request."""
        body = orjson.dumps(
            {"model": model, "stream": True, "messages": [{"role": "user", "content": "x"}]}
        )
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return cls(port, head.encode() + body)

    @classmethod
    def follow(cls, port: int, token: str, stream_id: str) -> StalledClient:
        """Follow a stream from its first event."""
        head = (
            f"GET /v1/streams/{stream_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n"
            "Last-Event-ID: 0\r\n\r\n"
        )
        return cls(port, head.encode())

    @property
    def stream_id(self) -> str:
        return next(
            line.split(b":", 1)[1].strip().decode()
            for line in self.head.split(b"\r\n")
            if line.lower().startswith(b"x-sluice-stream-id:")
        )

    def disconnected(self) -> bool:
        """Whether the gateway has reset or closed its side (checked without reading)."""
        info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        return info[0] != TCP_ESTABLISHED

    def drain(self, timeout: float = 2.0) -> tuple[bool, int]:
        """Read what is left: (ended before [DONE]?, bytes read)."""
        self.sock.settimeout(timeout)
        data = bytearray()
        try:
            while chunk := self.sock.recv(65536):
                data += chunk
                if b"[DONE]" in data[-len(chunk) - 8 :]:
                    break
        except ConnectionResetError:
            pass  # the gateway aborted the connection: cut off
        except TimeoutError:
            pass  # still open: a keep-alive connection after a complete response
        finally:
            self.sock.close()
        return b"[DONE]" not in data, len(data)


def stalled_clients(bench: Bench, gateway: Process, count: int) -> list[StalledClient]:
    """One client that starts the stalled-scenario stream, ``count - 1`` that follow it."""
    model = bench.sluice(gateway, "stalled").model
    first = StalledClient.start(gateway.port, bench.token, model)
    others = [
        StalledClient.follow(gateway.port, bench.token, first.stream_id) for _ in range(count - 1)
    ]
    return [first, *others]


def replay(port: int, token: str, stream_id: str) -> tuple[int, int]:
    """Another reader, from the start: (content tokens, bytes)."""
    counter = LineCounter()
    size = 0
    headers = {"authorization": f"Bearer {token}", "last-event-id": "0"}
    url = f"http://127.0.0.1:{port}/v1/streams/{stream_id}"
    with httpx.stream("GET", url, headers=headers, timeout=30) as response:
        if response.status_code != 200:
            print(f"replay of {stream_id}: HTTP {response.status_code}", file=sys.stderr)
        for data in response.iter_raw():
            size += len(data)
            counter.feed(data)
    return counter.tokens, size


@dataclass
class StallFigures:
    readers: int
    fast_growth: float  # MiB over idle, peak, with one reader that keeps up
    fast_after: float  # MiB over idle once that stream expired
    stalled_growth: float  # the same, with ``readers`` stalled readers
    stalled_after: float
    cut_off: bool  # every stalled reader
    client_bytes: int  # the most a stalled reader got after it stalled
    replay_tokens: int
    log_mib: float
    cpu_seconds: float
    peak_rss_mib: float

    @property
    def extra_per_reader(self) -> float:
        return (self.stalled_growth - self.fast_growth) / self.readers


def _env(bench: Bench) -> dict[str, str]:
    return {
        "SLUICE_READER_STALL_SECONDS": str(bench.sizes.stall_seconds),
        "SLUICE_STREAM_TTL_SECONDS": str(bench.sizes.ttl_seconds),
        "SLUICE_STREAM_MAX_EVENTS": str(bench.sizes.stalled_tokens * 2),
        "SLUICE_STREAM_ABANDON_SECONDS": "60",
    }


def _fast_stream(bench: Bench, server: str) -> tuple[float, float]:
    """On its own gateway: (peak growth MiB, MiB over idle after expiry)."""
    with bench.gateway(server, **_env(bench)) as gateway:
        pid = gateway.pid
        warm_up(bench, gateway, "sequential")
        idle = rss_kib(pid)
        reset_peak_rss(pid)
        run_load(Spec(legs=[bench.sluice(gateway, "stalled")], concurrency=1, requests=1))
        growth = peak_rss_kib(pid) - idle
        time.sleep(bench.sizes.ttl_seconds + 1.5)
        after = rss_kib(pid) - idle
    return growth / 1024, after / 1024


def _measure(bench: Bench, server: str) -> StallFigures:
    stall, ttl = bench.sizes.stall_seconds, bench.sizes.ttl_seconds
    count = bench.sizes.stall_readers
    fast_growth, fast_after = _fast_stream(bench, server)
    with bench.gateway(server, **_env(bench)) as gateway:
        pid = gateway.pid
        warm_up(bench, gateway, "sequential")
        cpu0, idle = cpu_seconds(pid), rss_kib(pid)
        reset_peak_rss(pid)
        clients = stalled_clients(bench, gateway, count)
        time.sleep(stall + 0.5)  # they stopped reading at once: cut off by now
        cut_off = all(client.disconnected() for client in clients)
        # One reader keeping up, as in the baseline; it reads to the stream's end
        # (before the stalled ones are drained: on daphne that is the whole stream each).
        tokens, log_bytes = replay(gateway.port, bench.token, clients[0].stream_id)
        stalled_growth = peak_rss_kib(pid) - idle
        peak = peak_rss_kib(pid) / 1024
        client_bytes = max(client.drain()[1] for client in clients)
        time.sleep(ttl + 1.5)
        after = rss_kib(pid)
        cpu = cpu_seconds(pid) - cpu0
    return StallFigures(
        count,
        fast_growth,
        fast_after,
        stalled_growth / 1024,
        (after - idle) / 1024,
        cut_off,
        client_bytes,
        tokens,
        log_bytes / 2**20,
        cpu,
        peak,
    )


def _median_of(runs: list[StallFigures]) -> StallFigures:
    """Each figure's median over the runs; cut off and tokens only if every run had them."""

    def median(name: str) -> float:
        return float(statistics.median(getattr(run, name) for run in runs))

    return StallFigures(
        readers=runs[0].readers,
        fast_growth=median("fast_growth"),
        fast_after=median("fast_after"),
        stalled_growth=median("stalled_growth"),
        stalled_after=median("stalled_after"),
        cut_off=all(run.cut_off for run in runs),
        client_bytes=max(run.client_bytes for run in runs),
        replay_tokens=min(run.replay_tokens for run in runs),
        log_mib=median("log_mib"),
        cpu_seconds=median("cpu_seconds"),
        peak_rss_mib=max(run.peak_rss_mib for run in runs),
    )


def stalled(bench: Bench, server: str = "uvicorn", runs: int | None = None) -> list[Row]:
    """Each figure is the median of a few runs (allocator noise, see the module)."""
    expected = bench.sizes.stalled_tokens
    count = bench.sizes.stall_runs if runs is None else runs
    f = _median_of([_measure(bench, server) for _ in range(count)])
    name = f"stalled reader, {f.log_mib:.1f} MB stream ({server})"
    cap = (READER_BUFFER_KIB + TRANSPORT_KIB) / 1024
    noise = 0.5 / f.readers
    errors = 0 if f.replay_tokens == expected else 1
    return [
        Row(
            name,
            f"peak RSS growth (MiB): 1 reader keeping up → {f.readers} stalled readers",
            f"{f.fast_growth:.1f}",
            f"{f.stalled_growth:.1f}",
            f"{f.extra_per_reader:+.2f} MiB per stalled reader",
            f"per reader ≤ {cap:.2f} MiB cap (+{noise:.2f} noise)",
            f.extra_per_reader <= cap + noise,
            f.cpu_seconds,
            f.peak_rss_mib,
            errors,
        ),
        Row(
            name,
            "RSS over idle after the stream expired (MiB)",
            f"{f.fast_after:.1f}",
            f"{f.stalled_after:.1f}",
            # A quick run's stalled stream can leave no growth to speak of.
            f"{f.stalled_after / max(f.stalled_growth, 0.01):.0%} of the stalled growth stays",
            "falls back: ≤ 25% of the growth stays",
            f.stalled_after <= 0.25 * f.stalled_growth,
            errors=errors,
        ),
        Row(
            name,
            "stalled clients cut off; another reader's tokens",
            "—",
            f"{'all cut off' if f.cut_off else 'not all cut off'}; {f.replay_tokens:,} tokens",
            f"a client got at most {f.client_bytes / 1024:.0f} KiB after it stalled",
            f"cut off after {bench.sizes.stall_seconds:g} s stall; all {expected:,} tokens",
            f.cut_off and f.replay_tokens == expected,
            errors=errors,
        ),
    ]

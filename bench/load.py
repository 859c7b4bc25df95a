"""The load generator: its own process, so its CPU is never counted as the gateway's.

``python -m bench.load`` reads a JSON spec on stdin and prints JSON results.
A spec names one or more legs (direct to the fake upstream, or through the
gateway over SSE, NDJSON or WebSocket) and how to drive them; each request
records its time to the first content token, its total time, the content
tokens it saw and its error, if any. Tokens are counted by scanning complete
lines for ``"content":"`` instead of parsing JSON, so the client stays cheap.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

CONTENT = b'"content":"'
EMPTY = b'"content":""'
# The inbound protocols with named events: a content token is one text delta
# event, the end and a failure are events of their own.
EVENTS = {
    "responses": (
        b"event: response.output_text.delta\n",
        (b"event: response.completed\n",),
        (b"event: response.failed\n", b"event: error\n"),
    ),
    "messages": (
        b"event: content_block_delta\n",
        (b"event: message_stop\n",),
        (b"event: error\n",),
    ),
}
READ_TIMEOUT = 120.0


@dataclass(slots=True)
class Leg:
    """Where requests go: ``transport`` is direct, sse, ndjson, ws, or (over
    SSE, with their own request and events) responses or messages."""

    name: str
    url: str
    transport: str
    model: str
    token: str = ""


@dataclass(slots=True)
class Record:
    """One request: absolute start (epoch), TTFT and total in seconds."""

    leg: str
    started: float
    ttft: float | None = None
    total: float = 0.0
    tokens: int = 0
    error: str | None = None


@dataclass(slots=True)
class Spec:
    legs: list[Leg]
    concurrency: int
    requests: int
    interleave: bool = False  # alternate legs request by request (concurrency 1 only)
    ramp_seconds: float = 0.0  # spread the workers' first requests over this long
    expect_tokens: int | None = None
    # Open loop: start ``rate`` requests a second whatever the answers do
    # (``concurrency`` then caps how many are in flight); 0 is closed loop.
    rate: float = 0.0


@dataclass(slots=True)
class LineCounter:
    """Counts content tokens and spots the end or an error, on whole lines only."""

    pending: bytes = b""
    tokens: int = 0
    done: bool = False
    error: str | None = None
    transport: str = "sse"

    def feed(self, data: bytes) -> int:
        data = self.pending + data
        cut = data.rfind(b"\n") + 1
        self.pending, data = data[cut:], data[:cut]
        if not data:
            return 0
        if self.transport in EVENTS:
            return self._events(data, *EVENTS[self.transport])
        found = data.count(CONTENT) - data.count(EMPTY)
        self.tokens += found
        if b"[DONE]" in data or b'"done":true' in data:
            self.done = True
        if b'"error":{' in data and self.error is None:
            self.error = data[data.find(b'"error":{') :][:200].decode("utf-8", "replace")
        return found

    def _events(
        self, data: bytes, delta: bytes, ends: tuple[bytes, ...], errors: tuple[bytes, ...]
    ) -> int:
        found = data.count(delta)
        self.tokens += found
        if any(end in data for end in ends):
            self.done = True
        for error in errors:
            at = data.find(error)
            if at >= 0 and self.error is None:
                self.error = data[at:][:200].decode("utf-8", "replace")
        return found


def _body(leg: Leg) -> bytes:
    prompt = "Count for the benchmark."
    if leg.transport == "responses":
        return orjson.dumps({"model": leg.model, "input": prompt, "stream": True})
    if leg.transport == "messages":
        messages = [{"role": "user", "content": prompt}]
        return orjson.dumps(
            {"model": leg.model, "max_tokens": 4096, "messages": messages, "stream": True}
        )
    body: dict[str, Any] = {
        "model": leg.model,
        "messages": [{"role": "user", "content": "Count for the benchmark."}],
        "stream": True,
    }
    if leg.transport == "direct":
        # What the gateway asks every upstream for, so the upstream does the same work.
        body["stream_options"] = {"include_usage": True}
    if leg.transport == "ws":
        body = {"type": "chat.create", "request_id": "bench", **body}
        del body["stream"]
    return orjson.dumps(body)


def _headers(leg: Leg) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if leg.token:
        headers["authorization"] = f"Bearer {leg.token}"
    headers["accept"] = "application/x-ndjson" if leg.transport == "ndjson" else "text/event-stream"
    return headers


async def _http(session: aiohttp.ClientSession, leg: Leg, body: bytes, record: Record) -> None:
    t0 = time.perf_counter()
    counter = LineCounter(transport=leg.transport)
    async with session.post(leg.url, data=body, headers=_headers(leg)) as response:
        if response.status != 200:
            record.error = f"HTTP {response.status}: {(await response.read())[:200]!r}"
            return
        async for data in response.content.iter_any():
            if counter.feed(data) and record.ttft is None:
                record.ttft = time.perf_counter() - t0
        counter.feed(b"\n")
    record.total = time.perf_counter() - t0
    record.tokens = counter.tokens
    record.error = counter.error or (None if counter.done else "stream ended without its end")


@dataclass(slots=True)
class FrameCounter:
    """Counts content tokens in a WebSocket's server frames (RFC 6455, unmasked),
    read in bulk as the SSE client reads lines: the frames whole in this read
    are counted together; the end, an error, a ping or a close are spotted."""

    pending: bytes = b""
    tokens: int = 0
    done: bool = False
    error: str | None = None
    pings: list[bytes] = field(default_factory=list)  # to answer with a pong

    def feed(self, data: bytes) -> int:
        data = self.pending + data
        at, texts = 0, []
        while len(data) - at >= 2:
            opcode, size, head = data[at] & 0x0F, data[at + 1] & 0x7F, 2
            if size == 126:
                size, head = int.from_bytes(data[at + 2 : at + 4]), 4
            elif size == 127:
                size, head = int.from_bytes(data[at + 2 : at + 10]), 10
            if len(data) - at < head + size:
                break
            payload = data[at + head : at + head + size]
            at += head + size
            if opcode in (0x1, 0x0):
                texts.append(payload)
            elif opcode == 0x9:
                self.pings.append(payload)
            elif opcode == 0x8:
                self.error = self.error or f"websocket closed: {payload[:200]!r}"
        self.pending = data[at:]
        found = 0
        for text in texts:
            found += text.count(CONTENT) - text.count(EMPTY)
            if text.startswith(b'{"type":"error"') and self.error is None:
                self.error = text[:200].decode("utf-8", "replace")
            elif text.startswith(b'{"type":"stream.done"'):
                self.done = True
        self.tokens += found
        return found


def _frame(opcode: int, payload: bytes) -> bytes:
    """A client frame (masked, as RFC 6455 requires of clients)."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2)
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8)
    key = (mask * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload) ^ int.from_bytes(key)).to_bytes(size) if size else b""
    return head + mask + masked


async def _ws(leg: Leg, body: bytes, record: Record) -> None:
    """A WebSocket client as cheap per token as the SSE one: the handshake by
    hand, then frames read in bulk (FrameCounter). aiohttp's client handed
    over each message through a queue and cost the shared cores a fifth more
    than the SSE client, which the gateway's WebSocket figure then paid for."""
    url = urlsplit(leg.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        auth = f"authorization: Bearer {leg.token}\r\n" if leg.token else ""
        writer.write(
            f"GET {url.path} HTTP/1.1\r\nhost: {url.netloc}\r\nupgrade: websocket\r\n"
            f"connection: Upgrade\r\nsec-websocket-key: {key}\r\n"
            f"sec-websocket-version: 13\r\n{auth}\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            record.error = f"websocket handshake: {head[:200]!r}"
            return
        # Timed from the chat.create message, like an HTTP request on a pooled connection.
        t0 = time.perf_counter()
        writer.write(_frame(0x1, body))
        counter = FrameCounter()
        while not counter.done and counter.error is None:
            data = await reader.read(1 << 18)
            if not data:
                break
            if counter.feed(data) and record.ttft is None:
                record.ttft = time.perf_counter() - t0
            while counter.pings:
                writer.write(_frame(0xA, counter.pings.pop()))
        record.tokens = counter.tokens
        if counter.error is not None:
            record.error = counter.error
        elif counter.done:
            record.total = time.perf_counter() - t0
            writer.write(_frame(0x8, (1000).to_bytes(2)))
        else:
            record.error = "websocket closed before stream.done"
    finally:
        writer.close()


async def _one(session: aiohttp.ClientSession, leg: Leg, body: bytes) -> Record:
    record = Record(leg=leg.name, started=time.time())
    try:
        if leg.transport == "ws":
            await _ws(leg, body, record)
        else:
            await _http(session, leg, body, record)
    except (aiohttp.ClientError, TimeoutError, OSError, EOFError) as error:
        record.error = f"{type(error).__name__}: {error}"
    return record


async def _at_rate(session: aiohttp.ClientSession, spec: Spec, leg: Leg) -> list[Record]:
    """Request i starts at i / rate seconds, unless ``concurrency`` are in flight."""
    body = _body(leg)
    gate = asyncio.Semaphore(spec.concurrency)
    tasks: list[asyncio.Task[Record]] = []
    start = time.perf_counter()
    for index in range(spec.requests):
        delay = start + index / spec.rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await gate.acquire()
        task = asyncio.create_task(_one(session, leg, body))
        task.add_done_callback(lambda _: gate.release())
        tasks.append(task)
    return list(await asyncio.gather(*tasks))


async def _drive(session: aiohttp.ClientSession, spec: Spec, legs: list[Leg]) -> list[Record]:
    if spec.rate:
        return [record for leg in legs for record in await _at_rate(session, spec, leg)]
    bodies = {leg.name: _body(leg) for leg in legs}
    order = itertools.cycle(legs) if spec.interleave else itertools.repeat(legs[0])
    remaining = itertools.count()
    records: list[Record] = []

    async def worker(index: int) -> None:
        if spec.ramp_seconds:
            await asyncio.sleep(spec.ramp_seconds * index / spec.concurrency)
        while next(remaining) < spec.requests:
            leg = next(order)
            records.append(await _one(session, leg, bodies[leg.name]))

    await asyncio.gather(*(worker(i) for i in range(spec.concurrency)))
    return records


async def run(spec: Spec) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=READ_TIMEOUT)
    runs: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        groups = [spec.legs] if spec.interleave else [[leg] for leg in spec.legs]
        for legs in groups:
            started = time.time()
            records = await _drive(session, spec, legs)
            ended = time.time()
            for record in records:
                if (
                    record.error is None
                    and spec.expect_tokens is not None
                    and record.tokens != spec.expect_tokens
                ):
                    record.error = f"got {record.tokens} tokens, expected {spec.expect_tokens}"
            runs.append(
                {"started": started, "ended": ended, "records": [asdict(r) for r in records]}
            )
    return {"runs": runs}


def spec_from_json(raw: bytes) -> Spec:
    data = orjson.loads(raw)
    legs = [Leg(**leg) for leg in data.pop("legs")]
    return Spec(legs=legs, **data)


def spec_to_json(spec: Spec) -> bytes:
    return orjson.dumps(asdict(spec))


def main() -> None:
    import uvloop

    spec = spec_from_json(sys.stdin.buffer.read())
    # Megabytes of records: written to the end by hand (a run once handed
    # back 2.7 MB of JSON cut short, with exit status 0).
    view = memoryview(orjson.dumps(uvloop.run(run(spec))))
    while view:
        view = view[os.write(sys.stdout.fileno(), view) :]


if __name__ == "__main__":
    main()

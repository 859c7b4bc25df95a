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
import itertools
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

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


async def _ws(session: aiohttp.ClientSession, leg: Leg, body: bytes, record: Record) -> None:
    headers = {"authorization": f"Bearer {leg.token}"} if leg.token else {}
    async with session.ws_connect(leg.url, headers=headers, max_msg_size=0) as ws:
        # Timed from the chat.create message, like an HTTP request on a pooled connection.
        t0 = time.perf_counter()
        await ws.send_bytes(body)
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                record.error = f"websocket {message.type.name}"
                return
            data = message.data.encode()
            found = data.count(CONTENT) - data.count(EMPTY)
            record.tokens += found
            if found and record.ttft is None:
                record.ttft = time.perf_counter() - t0
            if data.startswith(b'{"type":"error"'):
                record.error = data[:200].decode()
                return
            if data.startswith(b'{"type":"stream.done"'):
                record.total = time.perf_counter() - t0
                return
    record.error = "websocket closed before stream.done"


async def _one(session: aiohttp.ClientSession, leg: Leg, body: bytes) -> Record:
    record = Record(leg=leg.name, started=time.time())
    try:
        if leg.transport == "ws":
            await _ws(session, leg, body, record)
        else:
            await _http(session, leg, body, record)
    except (aiohttp.ClientError, TimeoutError, OSError) as error:
        record.error = f"{type(error).__name__}: {error}"
    return record


async def _drive(session: aiohttp.ClientSession, spec: Spec, legs: list[Leg]) -> list[Record]:
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

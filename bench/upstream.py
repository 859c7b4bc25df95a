"""A lean fake OpenAI upstream for the benchmark: ``python -m bench.upstream --port N``.

tests/fakes/upstream.py runs aiohttp's web server on a plain asyncio loop in
a thread and awaits ``write()`` plus a ``sleep`` per token: measured on the
2-core bench machine it relays about 32,000 tokens/s, below the gateway's
target, so it would be the bottleneck of the saturation run. This one is a
bare asyncio protocol on uvloop that sends the same bytes (it reuses the
fakes' frame builder and model-name scripts, ``fake:tokens=50,delay=0.02,
ttft=0.1``) as pre-encoded HTTP chunks, one write per token, honouring
transport flow control. It only serves ``POST /v1/chat/completions``
(streaming), on keep-alive connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools

import orjson

from tests.fakes import wire
from tests.fakes.upstream import script_from_model_name

HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
YIELD_EVERY = 16  # with no delay, let other streams run every this many tokens


@functools.lru_cache(maxsize=256)
def _answer(model: str, include_usage: bool) -> tuple[float, float, tuple[tuple[bytes, bool], ...]]:
    """(ttft, delay, frames as HTTP chunks) for a model name; built once per name."""
    script = script_from_model_name(model) or wire.Script(tokens=wire.numbered_tokens(20))
    body = {"model": model, "stream_options": {"include_usage": include_usage}}
    frames = tuple(
        (b"%x\r\n%s\r\n" % (len(frame), frame), is_token)
        for frame, is_token in wire.openai_frames(script, body)
    )
    return script.ttft, script.delay, frames


class UpstreamProtocol(asyncio.Protocol):
    """One keep-alive connection; requests are answered one at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.task: asyncio.Task[None] | None = None
        self.writable: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.task is not None:
            self.task.cancel()
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)

    def pause_writing(self) -> None:
        self.writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.task is None or self.task.done():
            self._next_request()

    def _next_request(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].decode("latin-1").split("\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(self.buffer) < end + 4 + length:
            return
        body, self.buffer = self.buffer[end + 4 : end + 4 + length], self.buffer[end + 4 + length :]
        loop = asyncio.get_running_loop()
        self.task = loop.create_task(self._respond(head[0], body))
        self.task.add_done_callback(lambda _: self.transport and self._next_request())

    async def _respond(self, request_line: str, body: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        if not request_line.startswith("POST /v1/chat/completions"):
            transport.write(NOT_FOUND)
            return
        request = orjson.loads(body)
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        ttft, delay, frames = _answer(request.get("model", ""), include_usage)
        transport.write(HEAD)
        sent = 0
        for frame, is_token in frames:
            if is_token:
                pause = ttft if sent == 0 else delay
                if pause:
                    await asyncio.sleep(pause)
                elif sent % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                sent += 1
            if self.writable is not None:
                await self.writable
            if self.transport is None:
                return
            transport.write(frame)
        transport.write(LAST_CHUNK)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, "127.0.0.1", port, backlog=4096)
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    import uvloop

    parser = argparse.ArgumentParser(description="The benchmark's fake OpenAI upstream.")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()

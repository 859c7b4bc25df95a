"""Fake OpenAI and Anthropic upstreams: a real HTTP server, scripted per model name.

The server runs on 127.0.0.1 in a background thread with its own event loop,
so sync tests, async tests and gateway processes can all talk to it. Run it
alone (for the benchmark) with ``python -m tests.fakes.upstream --port N``;
other processes script it through the model name, e.g.
``fake:tokens=50,delay=0.02,ttft=0.1`` or ``fake:fault=die,fault_after=3``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web

from tests.fakes import wire
from tests.fakes.wire import Script

STATUS_FAULTS = {
    "http_500": 500,
    "http_429": 429,
    "http_400": 400,
    "http_401": 401,
    "http_403": 403,
    "http_529": 529,
    "context_length": 400,
}
# Error statuses whose body echoes the request headers, as a careless upstream's does.
ECHO_FAULTS = {"echo_400": 400, "echo_422": 422, "echo_429": 429, "echo_500": 500}
STREAM_FAULTS = {"die", "truncate", "stall", "malformed", "error_event", "echo_event", "shape"}


@dataclass
class RecordedRequest:
    """One request the fake received. ``headers`` keys are lower case."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    received_at: float = field(default_factory=time.monotonic)
    client_port: int | None = None  # the same port twice: the same (kept-alive) connection

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None


def refused_base_url() -> str:
    """A base_url on a port nothing listens on, so connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def script_from_model_name(model: str) -> Script | None:
    """Parse ``fake:tokens=50,delay=0.02,...`` (for processes that can't call script())."""
    if not model.startswith("fake:"):
        return None
    options = dict(item.partition("=")[::2] for item in model[5:].split(",") if item)
    script = Script(tokens=wire.numbered_tokens(int(options.get("tokens", 20))))
    for name in ("delay", "ttft", "retry_after"):
        if name in options:
            setattr(script, name, float(options[name]))
    if "fault" in options:
        script.fault = options["fault"]
    if "fault_after" in options:
        script.fault_after = int(options["fault_after"])
    if "status" in options:
        script.status = int(options["status"])
    script.status = script.status or ECHO_FAULTS.get(script.fault or "")
    if "shape" in options:
        script.shape = options["shape"]
    for name in ("cached_tokens", "reasoning_tokens"):
        if name in options:
            setattr(script, name, int(options[name]))
    return script


class FakeUpstream:
    """A scripted fake of the OpenAI and Anthropic streaming APIs.

    ``base_url`` (``http://127.0.0.1:PORT/v1``) serves ``/chat/completions``,
    ``/embeddings`` and ``/messages``. It counts requests received and requests still open
    (a request closes when its handler ends, by completion or by the client
    disconnecting), and records each request's headers and JSON body.
    """

    def __init__(self, *, port: int = 0) -> None:
        self.port = port
        self.requests: list[RecordedRequest] = []
        self.request_count = 0
        self.open_requests = 0
        self._scripts: dict[str, Script] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None

    # --- Lifecycle -----------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeUpstream:
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="fake-upstream", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), loop).result(timeout=10)
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/v1/messages", self._anthropic)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        # handler_cancellation: a client disconnect must end hung and stalled
        # handlers too, or the open-request count would never go back down.
        runner = self._runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        self.port = runner.addresses[0][1]

    async def _shutdown(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- Scripting and inspection --------------------------------------------------

    def script(
        self,
        model: str,
        *,
        tokens: list[str] | int | None = None,
        text: str | None = None,
        delay: float = 0.0,
        ttft: float = 0.0,
        fault: str | None = None,
        fault_after: int = 0,
        status: int | None = None,
        retry_after: float | None = None,
        error_type: str | None = None,
        tool_name: str | None = None,
        tool_arguments: list[str] | str | None = None,
        finish_reason: str | None = None,
        shape: str | None = None,
        cached_tokens: int = 0,
        reasoning_tokens: int = 0,
        continues: bool = False,
    ) -> None:
        """Script the answer for requests naming ``model``.

        ``tokens`` is the list of content deltas (or how many to make up);
        ``text`` is split into word tokens instead. ``fault`` is one of
        ``refuse`` (close the connection before answering), ``http_500``,
        ``http_429`` (with ``retry_after``, default 1s), ``http_400``,
        ``http_529``, ``hang`` (never answer), ``die`` (drop the connection
        after ``fault_after`` tokens), ``truncate`` (end the body cleanly
        after them, with no terminator or finish), ``stall`` (go silent after them, the
        connection open), ``malformed`` (send broken JSON after them) or
        ``error_event`` (send an error event after them; ``error_type`` sets
        its type), ``echo_event`` (an error event after them whose message
        echoes the request headers), ``shape`` (a chunk valid as JSON but of
        the wrong shape after them; ``shape`` names which, see
        ``wire.OPENAI_SHAPES`` and ``wire.ANTHROPIC_SHAPES``), or
        ``echo_400``/``echo_422``/``echo_429``/``echo_500`` (that status, its
        body echoing the request headers byte for byte). ``status`` sends
        that HTTP error status. ``cached_tokens`` and ``reasoning_tokens`` go
        in the usage's details (Anthropic: ``cache_read_input_tokens``). With
        ``continues``, a continuation request (the partial answer as an
        assistant turn, then a user turn asking to continue) is answered with
        the tokens after that partial answer. A tool call is
        sent after the text when ``tool_name`` is set, its arguments in the
        given fragments.
        """
        if isinstance(tokens, int):
            token_list = wire.numbered_tokens(tokens)
        elif tokens is not None:
            token_list = list(tokens)
        else:
            token_list = wire.split_text(text) if text is not None else []
        if tokens is None and text is None and tool_name is None:
            token_list = wire.split_text(wire.DEFAULT_TEXT)
        if isinstance(tool_arguments, str):
            tool_arguments = [tool_arguments]
        self._scripts[model] = Script(
            tokens=token_list,
            delay=delay,
            ttft=ttft,
            fault=fault,
            fault_after=fault_after,
            status=status or STATUS_FAULTS.get(fault or "") or ECHO_FAULTS.get(fault or ""),
            retry_after=retry_after,
            error_type=error_type,
            tool_name=tool_name,
            tool_arguments=list(tool_arguments or []),
            finish_reason=finish_reason,
            shape=shape,
            cached_tokens=cached_tokens,
            reasoning_tokens=reasoning_tokens,
            continues=continues,
        )

    def reset(self) -> None:
        """Forget scripts, recorded requests and counts (open requests stay as they are)."""
        with self._lock:
            self._scripts.clear()
            self.requests.clear()
            self.request_count = 0

    def requests_for(self, model: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.model == model]

    def wait_open_requests(self, n: int = 0, timeout: float = 5.0) -> bool:
        """Block until exactly ``n`` requests are open; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.open_requests != n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    # A timeout parameter (not asyncio.timeout) mirrors the sync helper: tests assert the bool.
    async def async_wait_open_requests(self, n: int = 0, timeout: float = 5.0) -> bool:  # noqa: ASYNC109
        """:meth:`wait_open_requests` for async tests, without blocking their loop."""
        deadline = time.monotonic() + timeout
        while self.open_requests != n:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    # --- Handlers ------------------------------------------------------------------

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, self._openai_answer)

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, self._anthropic_answer)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, self._embeddings_answer)

    async def _count_tokens(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, self._count_answer)

    async def _count_answer(
        self, request: web.Request, script: Script, body: Any
    ) -> web.StreamResponse:
        """Anthropic's token count (``wire.count_input_tokens``); the faults
        that strike before an answer apply, as for embeddings."""
        await self._before_answer(request, script)
        if script.status and script.status != 200:
            return self._error_response(script, wire.anthropic_error_body(script.status))
        return web.json_response({"input_tokens": wire.count_input_tokens(body)}, dumps=_dumps)

    async def _handle(
        self,
        request: web.Request,
        answer: Callable[[web.Request, Script, Any], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        with self._lock:
            self.request_count += 1
            self.open_requests += 1
        try:
            raw = await request.read()
            body = orjson.loads(raw) if raw else None
            headers = {k.lower(): v for k, v in request.headers.items()}
            peer = request.transport.get_extra_info("peername") if request.transport else None
            recorded = RecordedRequest(
                request.method, request.path, headers, body, client_port=peer[1] if peer else None
            )
            with self._lock:
                self.requests.append(recorded)
            script = self._script_for(body)
            return await answer(request, script, body)
        except ConnectionResetError:
            # The client went away mid-write: normal for a cancel, not a server error to log.
            raise asyncio.CancelledError from None
        finally:
            with self._lock:
                self.open_requests -= 1

    def _script_for(self, body: Any) -> Script:
        model = body.get("model", "") if isinstance(body, dict) else ""
        script = self._scripts.get(model) or script_from_model_name(model)
        script = script or Script(tokens=wire.split_text(wire.DEFAULT_TEXT))
        return _continued(script, body) if script.continues else script

    async def _before_answer(self, request: web.Request, script: Script) -> None:
        """The faults that strike before any response: hang and refuse."""
        if script.fault == "hang":
            await self._wait_forever()
        if script.fault == "refuse" and request.transport is not None:
            request.transport.abort()
            raise asyncio.CancelledError  # nothing more to do for a dropped connection

    async def _openai_answer(
        self, request: web.Request, script: Script, body: Any
    ) -> web.StreamResponse:
        await self._before_answer(request, script)
        headers = [(str(k), str(v)) for k, v in request.headers.items()]
        if script.status and script.status != 200:
            error = (
                wire.openai_echo_body(script.status, headers)
                if script.fault in ECHO_FAULTS
                else wire.openai_error_body(script.status, fault=script.fault)
            )
            return self._error_response(script, error)
        if not body.get("stream"):
            await asyncio.sleep(script.ttft)
            return web.json_response(wire.openai_completion(script, body), dumps=_dumps)
        faults = {
            "malformed": wire.OPENAI_MALFORMED,
            "error_event": wire.openai_error_frame(script.error_type),
            "echo_event": wire.openai_echo_frame(headers),
            "shape": wire.openai_shape_frame(script.shape),
        }
        return await self._stream(request, script, wire.openai_frames(script, body), faults)

    async def _embeddings_answer(
        self, request: web.Request, script: Script, body: Any
    ) -> web.StreamResponse:
        """OpenAI's embeddings; the faults that strike before an answer apply
        (``refuse``, ``hang``, an error status), ``ttft`` delays the answer."""
        await self._before_answer(request, script)
        if script.status and script.status != 200:
            error = (
                wire.openai_echo_body(script.status, list(request.headers.items()))
                if script.fault in ECHO_FAULTS
                else wire.openai_error_body(script.status, fault=script.fault)
            )
            return self._error_response(script, error)
        await asyncio.sleep(script.ttft)
        return web.json_response(wire.openai_embeddings(body), dumps=_dumps)

    async def _anthropic_answer(
        self, request: web.Request, script: Script, body: Any
    ) -> web.StreamResponse:
        await self._before_answer(request, script)
        headers = [(str(k), str(v)) for k, v in request.headers.items()]
        if script.status and script.status != 200:
            error = (
                wire.anthropic_echo_body(script.status, headers)
                if script.fault in ECHO_FAULTS
                else wire.anthropic_error_body(script.status, script.error_type, script.fault)
            )
            return self._error_response(script, error)
        faults = {
            "malformed": wire.ANTHROPIC_MALFORMED,
            "error_event": wire.anthropic_error_frame(script.error_type),
            "echo_event": wire.anthropic_echo_frame(headers),
            "shape": wire.anthropic_shape_frame(script.shape),
        }
        return await self._stream(request, script, wire.anthropic_frames(script, body), faults)

    def _error_response(self, script: Script, body: dict[str, Any]) -> web.Response:
        headers = {}
        if script.status == 429:
            headers["retry-after"] = _seconds(script.retry_after if script.retry_after else 1.0)
        elif script.retry_after is not None:
            headers["retry-after"] = _seconds(script.retry_after)
        assert script.status is not None
        return web.json_response(body, status=script.status, headers=headers, dumps=_dumps)

    async def _stream(
        self,
        request: web.Request,
        script: Script,
        frames: list[wire.Frame],
        fault_frames: dict[str, bytes],
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "content-type": "text/event-stream; charset=utf-8",
                "cache-control": "no-cache",
            }
        )
        await response.prepare(request)
        fault = script.fault if script.fault in STREAM_FAULTS else None
        last_token = max((i for i, (_, is_token) in enumerate(frames) if is_token), default=0)
        sent = 0
        for position, (frame, is_token) in enumerate(frames):
            if fault and ((is_token and sent == script.fault_after) or position == last_token + 1):
                await self._inject(request, response, fault, fault_frames.get(fault))
                return response
            if is_token:
                await asyncio.sleep(script.ttft if sent == 0 else script.delay)
                sent += 1
            await response.write(frame)
        await response.write_eof()
        return response

    async def _inject(
        self, request: web.Request, response: web.StreamResponse, fault: str, frame: bytes | None
    ) -> None:
        if fault == "stall":
            await self._wait_forever()
        if fault == "die":
            # Abort mid-body: the chunked encoding never terminates, as when a
            # provider's load balancer drops the connection.
            transport = request.transport
            if transport is not None:
                # abort() drops unsent bytes, and a reset can discard what the
                # client has not read yet: let the tokens written so far arrive.
                for _ in range(200):
                    if transport.get_write_buffer_size() == 0:
                        break
                    await asyncio.sleep(0.001)
                await asyncio.sleep(0.05)
                transport.abort()
            raise asyncio.CancelledError
        if frame is not None:
            await response.write(frame)
        await response.write_eof()

    async def _wait_forever(self) -> None:
        assert self._stopping is not None
        await self._stopping.wait()
        raise asyncio.CancelledError  # the server is shutting down


def _continued(script: Script, body: Any) -> Script:
    """The script's rest after the partial answer a continuation request carries."""
    messages = body.get("messages") or [] if isinstance(body, dict) else []
    if len(messages) < 2 or messages[-2].get("role") != "assistant":
        return script
    partial, tokens = messages[-2].get("content") or "", script.tokens
    for k in range(len(tokens) + 1):
        if "".join(tokens[:k]) == partial:
            return dataclasses.replace(script, tokens=tokens[k:], ttft=script.delay)
    return script


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the fake OpenAI/Anthropic upstream.")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    fake = FakeUpstream(port=args.port).start()
    print(fake.base_url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()

"""Minimal real clients for the three transports that keep a resume cursor.

Each read returns the complete events it saw before the connection ended
(cut by the server side, or by the client after ``stop_after`` events), so
a test can reconnect from the last one and check nothing is lost or repeated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets.exceptions
from websockets.sync.client import connect

CUT_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.ReadTimeout)


@dataclass
class Progress:
    cursor: int = 0
    text: list[str] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    done: bool = False
    error: dict[str, Any] | None = None
    stream_id: str = ""

    def take_chunk(self, seq: int, chunk: dict[str, Any]) -> None:
        self.seqs.append(seq)
        self.cursor = seq
        for choice in chunk.get("choices") or ():
            self.text.append((choice.get("delta") or {}).get("content") or "")

    @property
    def content(self) -> str:
        return "".join(self.text)


def read_sse(response: httpx.Response, progress: Progress, stop_after: int | None) -> None:
    """Parse SSE as a browser does: an event counts only once its blank line arrives."""
    seen = 0
    event_id, data = None, []
    for line in response.iter_lines():
        if line.startswith("id:"):
            event_id = int(line[3:].strip())
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            payload = "\n".join(data)
            assert event_id is not None and event_id == progress.cursor + 1, (
                event_id,
                progress.cursor,
            )
            if payload == "[DONE]":
                progress.cursor, progress.done = event_id, True
                return
            body = json.loads(payload)
            if "error" in body:
                progress.error = body["error"]
                progress.cursor = event_id
            else:
                progress.take_chunk(event_id, body)
            event_id, data = None, []
            seen += 1
            if stop_after is not None and seen >= stop_after:
                return


def read_ndjson(response: httpx.Response, progress: Progress, stop_after: int | None) -> None:
    for seen, line in enumerate(response.iter_lines(), start=1):
        try:
            item = json.loads(line)
        except ValueError:
            return  # a line cut in half: not delivered
        assert item["seq"] == progress.cursor + 1, (item["seq"], progress.cursor)
        if item.get("done"):
            progress.cursor, progress.done = item["seq"], True
            return
        if "error" in item:
            progress.error, progress.cursor = item["error"], item["seq"]
        else:
            progress.take_chunk(item["seq"], item["chunk"])
        if stop_after is not None and seen >= stop_after:
            return


def start_sse(base: str, headers: dict[str, str], model: str, stop_after: int | None) -> Progress:
    """POST a streaming chat request and read ``stop_after`` events, then hang up."""
    progress = Progress()
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream(
        "POST", f"{base}/v1/chat/completions", headers=headers, json=body, timeout=20
    ) as response:
        assert response.status_code == 200, response.read()
        progress.stream_id = response.headers["x-sluice-stream-id"]
        read_sse(response, progress, stop_after)
    return progress


def resume_sse(base: str, headers: dict[str, str], progress: Progress) -> None:
    """Resume ``progress``'s stream after its cursor (``Last-Event-ID``) and read to the end."""
    with httpx.stream(
        "GET",
        f"{base}/v1/streams/{progress.stream_id}",
        headers={**headers, "Last-Event-ID": str(progress.cursor)},
        timeout=20,
    ) as response:
        assert response.status_code == 200, response.read()
        read_sse(response, progress, None)


def http_attempt(
    base: str,
    headers: dict[str, str],
    progress: Progress,
    body: dict[str, Any],
    *,
    ndjson: bool,
    stop_after: int | None,
) -> None:
    """One connection: the first POSTs the chat request, later ones resume by id."""
    accept = "application/x-ndjson" if ndjson else "text/event-stream"
    reader = read_ndjson if ndjson else read_sse
    try:
        if not progress.stream_id:
            request = httpx.stream(
                "POST",
                f"{base}/v1/chat/completions",
                json=body,
                timeout=20,
                headers={**headers, "Accept": accept},
            )
        else:
            resume = {"Last-Event-ID": str(progress.cursor)} if not ndjson else {}
            query = f"?after={progress.cursor}" if ndjson else ""
            request = httpx.stream(
                "GET",
                f"{base}/v1/streams/{progress.stream_id}{query}",
                timeout=20,
                headers={**headers, "Accept": accept, **resume},
            )
        with request as response:
            if response.status_code == 204:
                progress.done = True
                return
            assert response.status_code == 200, response.read()
            progress.stream_id = response.headers["x-sluice-stream-id"]
            reader(response, progress, stop_after)
    except CUT_ERRORS:
        pass


def ws_attempt(
    base: str,
    headers: dict[str, str],
    progress: Progress,
    body: dict[str, Any],
    *,
    stop_after: int | None,
) -> None:
    seen = 0
    try:
        with connect(
            base.replace("http", "ws") + "/v1/ws", additional_headers=headers, open_timeout=10
        ) as ws:
            if not progress.stream_id:
                ws.send(json.dumps({"type": "chat.create", "request_id": "r1", **body}))
            else:
                ws.send(
                    json.dumps(
                        {
                            "type": "stream.resume",
                            "stream_id": progress.stream_id,
                            "after": progress.cursor,
                        }
                    )
                )
            while True:
                message = json.loads(ws.recv(timeout=20))
                kind = message["type"]
                if kind == "stream.created":
                    progress.stream_id = message["stream_id"]
                    continue
                assert message["seq"] == progress.cursor + 1, (message["seq"], progress.cursor)
                if kind == "stream.done":
                    progress.cursor, progress.done = message["seq"], True
                    return
                if kind == "error":
                    progress.error, progress.cursor = message["error"], message["seq"]
                else:
                    progress.take_chunk(message["seq"], message["chunk"])
                seen += 1
                if stop_after is not None and seen >= stop_after:
                    return
    except (websockets.exceptions.WebSocketException, OSError, TimeoutError):
        pass


def responses_attempt(
    base: str,
    headers: dict[str, str],
    progress: Progress,
    body: dict[str, Any],
    *,
    stop_after: int | None,
) -> None:
    """One connection to a Responses stream: the first POSTs the request (the
    chat ``body`` as Responses input), later ones resume with ``starting_after``.

    ``progress.cursor`` counts the events had (the last ``sequence_number`` + 1).
    """
    try:
        if not progress.stream_id:
            request = {"model": body["model"], "input": body["messages"], "stream": True}
            stream = httpx.stream(
                "POST", f"{base}/v1/responses", json=request, timeout=20, headers=headers
            )
        else:
            after = progress.cursor - 1
            stream = httpx.stream(
                "GET",
                f"{base}/v1/responses/{progress.stream_id}?stream=true&starting_after={after}",
                timeout=20,
                headers=headers,
            )
        with stream as response:
            assert response.status_code == 200, response.read()
            progress.stream_id = response.headers["x-sluice-stream-id"]
            read_responses(response, progress, stop_after)
    except CUT_ERRORS:
        pass


def read_responses(response: httpx.Response, progress: Progress, stop_after: int | None) -> None:
    """Parse Responses events as the SDK does: an event counts once its blank line arrives."""
    seen = 0
    data: list[str] = []
    for line in response.iter_lines():
        if line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            event = json.loads("\n".join(data))
            data = []
            number = event["sequence_number"]
            assert number == progress.cursor, (number, progress.cursor)
            progress.cursor = number + 1
            progress.seqs.append(number + 1)
            if event["type"] == "response.output_text.delta":
                progress.text.append(event["delta"])
            elif event["type"] in {"response.failed", "error"}:
                progress.error = event
            if event["type"] in {"response.completed", "response.failed", "response.incomplete"}:
                progress.done = True
                return
            seen += 1
            if stop_after is not None and seen >= stop_after:
                return

"""Slow clients under the production server (uvicorn): bounded, cut off, resumable.

A reader that stops reading is disconnected after SLUICE_READER_STALL_SECONDS;
the generation and its audit go on, another reader gets everything, and the
stalled client can resume from the last event it saw. The per-stream log cap
ends a runaway stream with a clear error event.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import httpx
import orjson
import pytest

from tests.conftest import Actor, wait_for_audit
from tests.e2e.slow_readers import (
    BIG_TOKENS,
    revoke,
    small_buffer_socket,
    stalling_gateway,
    wait_disconnected,
)
from tests.fakes.upstream import FakeUpstream
from tests.live import GatewayServer, server_env

pytestmark = [pytest.mark.timeout(90), pytest.mark.django_db(transaction=True)]

EVENT = re.compile(rb"id: (\d+)\ndata: (\{.*?\})\n\n")


@pytest.fixture(scope="module")
def stall_gateway(django_db_setup: None) -> Iterator[GatewayServer]:
    yield from stalling_gateway(stall_seconds="1")


@pytest.fixture(scope="module")
def capped_gateway(django_db_setup: None) -> Iterator[GatewayServer]:
    env = server_env(SLUICE_STREAM_MAX_EVENTS="10", SLUICE_STREAM_MAX_BYTES="4096")
    server = GatewayServer(env=env).start()
    yield server
    server.stop()


class StalledClient:
    """A raw HTTP client with a tiny receive buffer that stops reading when told."""

    def __init__(self, gateway: GatewayServer, actor: Actor, model: str) -> None:
        self.sock = small_buffer_socket(gateway)
        body = orjson.dumps(
            {"model": model, "stream": True, "messages": [{"role": "user", "content": "go"}]}
        )
        self.sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + actor.token.encode() + b"\r\n"
            b"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        self.received = b""

    def close(self) -> None:
        self.sock.close()

    def read_events(self, count: int) -> list[tuple[int, str]]:
        """Read until ``count`` whole events arrived: (id, content) of each."""
        while len(EVENT.findall(self.received)) < count:
            self.received += self.sock.recv(4096)
        return [(int(seq), _content(data)) for seq, data in EVENT.findall(self.received)]

    @property
    def stream_id(self) -> str:
        match = re.search(rb"x-sluice-stream-id: (\S+)\r\n", self.received, re.IGNORECASE)
        assert match is not None, self.received[:500]
        return match.group(1).decode()

    def wait_disconnected(self, timeout: float) -> bool:
        return wait_disconnected(self.sock, timeout)


def _content(data: bytes) -> str:
    choices = orjson.loads(data).get("choices") or [{}]
    return str((choices[0].get("delta") or {}).get("content") or "")


def read_sse(url: str, headers: dict[str, str]) -> list[bytes]:
    """Every ``data:`` payload of an SSE response, in order."""
    with httpx.stream("GET", url, headers=headers, timeout=30) as response:
        assert response.status_code == 200, response.read()
        body = b"".join(response.iter_raw())
    return [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]


def test_stalled_reader_is_cut_off_and_can_resume(
    stall_gateway: GatewayServer,
    alice: Actor,
    make_route: Callable[..., str],
    upstream: FakeUpstream,
) -> None:
    upstream.script("slow-client-big", tokens=BIG_TOKENS)
    model = make_route(("openai", upstream.base_url, "slow-client-big"))
    client = StalledClient(stall_gateway, alice, model)
    try:
        seen = client.read_events(3)  # then it stops reading
        assert client.wait_disconnected(timeout=20), "the gateway kept a stalled reader"
        stream_id = client.stream_id
    finally:
        client.close()
    # The generation went on without it: another reader gets everything, then [DONE].
    url = f"{stall_gateway.url}/v1/streams/{stream_id}"
    full = read_sse(url, {**alice.headers, "Last-Event-ID": "0"})
    assert full[-1] == b"[DONE]"
    assert "".join(_content(d) for d in full[:-1]) == "".join(BIG_TOKENS)
    assert wait_for_audit(stream_id).outcome == "completed"
    # The stalled client resumes after the last event it saw, and misses nothing.
    last_seen = seen[-1][0]
    rest = read_sse(url, {**alice.headers, "Last-Event-ID": str(last_seen)})
    resumed = "".join(text for _, text in seen) + "".join(_content(d) for d in rest[:-1])
    assert resumed == "".join(BIG_TOKENS)


@pytest.mark.parametrize("sent", [40, 3000])
def test_a_stalled_reader_whose_token_is_revoked_is_dropped(
    stall_gateway: GatewayServer,
    make_actor: Callable[..., Actor],
    make_route: Callable[..., str],
    upstream: FakeUpstream,
    sent: int,
) -> None:
    """Revoked while it does not read: the response ends, and its end waits behind
    bytes the client will never take; the connection is dropped all the same
    (with 40 chunks the upstream goes quiet first, so nothing is being written
    when the revocation comes)."""
    name = f"slow-client-revoke-{sent}"
    upstream.script(name, tokens=BIG_TOKENS[: sent + 10], fault="stall", fault_after=sent)
    model = make_route(("openai", upstream.base_url, name))
    frank = make_actor("frank")
    client = StalledClient(stall_gateway, frank, model)
    try:
        client.read_events(3)
        time.sleep(0.5)
        revoke(stall_gateway, frank)
        assert client.wait_disconnected(timeout=20), "the gateway kept a revoked, stalled reader"
    finally:
        client.close()


def _stream(gateway: GatewayServer, actor: Actor, model: str) -> list[bytes]:
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "go"}]}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, headers=actor.headers, timeout=30
    ) as response:
        assert response.status_code == 200, response.read()
        raw = b"".join(response.iter_raw())
    return [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]


@pytest.mark.parametrize(
    ("tokens", "delivered"),
    [
        pytest.param([f" t{i}" for i in range(50)], 9, id="max-events"),
        pytest.param(["y" * 1500 for _ in range(6)], 2, id="max-bytes"),
    ],
)
def test_log_cap_ends_the_stream_with_an_error_event(
    capped_gateway: GatewayServer,
    alice: Actor,
    make_route: Callable[..., str],
    upstream: FakeUpstream,
    tokens: list[str],
    delivered: int,
) -> None:
    upstream.script("capped-" + str(len(tokens)), tokens=tokens)
    model = make_route(("openai", upstream.base_url, "capped-" + str(len(tokens))))

    events = _stream(capped_gateway, alice, model)

    assert events[-1] == b"[DONE]"
    error = orjson.loads(events[-2])["error"]
    assert error["code"] == "stream_too_large"
    assert "per-stream cap" in error["message"]
    chunks = [orjson.loads(e) for e in events[:-2]]
    assert sum(1 for c in chunks if _content(orjson.dumps(c))) == delivered

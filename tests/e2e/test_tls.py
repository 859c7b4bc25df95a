"""TLS as production serves it: ``manage.py sluice_serve`` with SLUICE_TLS_* files.

A throwaway CA (trustme) signs the server certificate; the OpenAI SDK
streams over https and a WebSocket client streams over wss, both trusting
only that CA.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest
import trustme
from websockets.sync.client import connect

from tests.conftest import Actor, wait_for_audit
from tests.fakes.upstream import FakeUpstream
from tests.live import GatewayServer, server_env

pytestmark = [pytest.mark.timeout(90), pytest.mark.django_db(transaction=True)]


class TlsGateway:
    """``manage.py sluice_serve`` over TLS: certificate files from a throwaway CA."""

    def __init__(self, tmp: Path) -> None:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_path = str(tmp / "ca.pem")
        ca.cert_pem.write_to_path(self.ca_path)
        cert_path, key_path = tmp / "server.pem", tmp / "server.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_path))
        for extra in cert.cert_chain_pems[1:]:
            extra.write_to_path(str(cert_path), append=True)
        cert.private_key_pem.write_to_path(str(key_path))
        env = server_env(SLUICE_TLS_CERT_FILE=str(cert_path), SLUICE_TLS_KEY_FILE=str(key_path))
        self.server = GatewayServer(env=env, scheme="https")
        self.port = self.server.port
        self.url = self.server.url

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_path)


@pytest.fixture(scope="module")
def tls_gateway(
    django_db_setup: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsGateway]:
    gateway = TlsGateway(tmp_path_factory.mktemp("tls"))
    gateway.server.start()
    try:
        yield gateway
    finally:
        gateway.server.stop()


@pytest.fixture
def tls_model(make_route: Callable[..., str], upstream: FakeUpstream) -> str:
    upstream.script("tls-upstream", tokens=["Over", " TLS", ",", " safely", "."])
    return make_route(("openai", upstream.base_url, "tls-upstream"))


def test_openai_sdk_streams_over_https(tls_gateway: TlsGateway, alice: Actor, tls_model: str):
    with (
        httpx.Client(verify=tls_gateway.ssl_context()) as http,
        openai.OpenAI(
            base_url=f"{tls_gateway.url}/v1", api_key=alice.token, http_client=http, max_retries=0
        ) as client,
    ):
        chunks = list(
            client.chat.completions.create(
                model=tls_model, stream=True, messages=[{"role": "user", "content": "hi"}]
            )
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Over TLS, safely."
    assert wait_for_audit(chunks[0].id).outcome == "completed"


def test_plain_http_is_refused_on_the_tls_port(tls_gateway: TlsGateway):
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{tls_gateway.port}/healthz", timeout=2.0)


def test_websocket_streams_over_wss(tls_gateway: TlsGateway, alice: Actor, tls_model: str):
    context = tls_gateway.ssl_context()
    url = f"wss://127.0.0.1:{tls_gateway.port}/v1/ws"
    messages = []
    with connect(url, ssl=context, additional_headers=alice.headers, open_timeout=10) as ws:
        request = {
            "type": "chat.create",
            "request_id": "r1",
            "model": tls_model,
            "messages": [{"role": "user", "content": "hi"}],
        }
        ws.send(orjson.dumps(request).decode())
        while True:
            message = orjson.loads(ws.recv(timeout=10))
            messages.append(message)
            if message["type"] in ("stream.done", "error"):
                break
    assert messages[0]["type"] == "stream.created"
    assert messages[-1]["type"] == "stream.done"
    text = "".join(
        (m["chunk"]["choices"][0]["delta"].get("content") or "")
        for m in messages
        if m["type"] == "chunk" and m["chunk"]["choices"]
    )
    assert text == "Over TLS, safely."

"""Embeddings from the OpenAI adapter (against the fake upstream) and the demo provider."""

from __future__ import annotations

import asyncio
import base64
import struct

import pytest

from streaming.providers import EmbeddingRequest, UpstreamError, can_embed
from streaming.providers.base import Embeddings, UpstreamTarget
from streaming.providers.demo import DemoAdapter, as_base64, demo_embedding
from streaming.providers.errors import ProtocolError
from streaming.providers.openai import OpenAIAdapter, decode_embeddings
from tests.fakes import FakeUpstream, refused_base_url
from tests.fakes.wire import fake_embedding

SECRET = "sk-alice-secret-0123456789"
adapter = OpenAIAdapter()


def target(base_url: str, model: str) -> UpstreamTarget:
    return UpstreamTarget(
        provider="openai-main", kind="openai", base_url=base_url, model=model, api_key=SECRET
    )


async def test_embeds_and_sends_the_openai_request(fake: FakeUpstream, client) -> None:
    request = EmbeddingRequest(model="public", input=["a b", "c"], params={"dimensions": 4})
    result = await adapter.embed(client, target(fake.base_url, "text-emb"), request)
    assert result.vectors == [fake_embedding("a b", 4), fake_embedding("c", 4)]
    assert (result.model, result.usage) == ("text-emb", {"prompt_tokens": 3, "total_tokens": 3})
    [sent] = fake.requests
    assert sent.path == "/v1/embeddings"
    assert sent.headers["authorization"] == f"Bearer {SECRET}"
    assert sent.body == {"model": "text-emb", "input": ["a b", "c"], "dimensions": 4}


@pytest.mark.parametrize(
    ("fault", "error_class", "status"),
    [
        ("http_500", "server_error", 500),
        ("http_429", "rate_limited", 429),
        ("http_400", "client_error", 400),
        ("http_401", "auth_error", 401),
    ],
)
async def test_faults_become_upstream_errors(fake, client, fault, error_class, status) -> None:
    fake.script("text-emb", fault=fault)
    request = EmbeddingRequest(model="public", input="x")
    with pytest.raises(UpstreamError) as caught:
        await adapter.embed(client, target(fake.base_url, "text-emb"), request)
    assert (caught.value.error_class, caught.value.status) == (error_class, status)
    if status == 429:
        assert caught.value.retry_after == 1.0
    if status == 400:  # the upstream's own words, for the client
        assert caught.value.body["error"]["message"] == "Invalid value for 'messages'."


async def test_connection_refused(client) -> None:
    request = EmbeddingRequest(model="public", input="x")
    with pytest.raises(UpstreamError) as caught:
        await adapter.embed(client, target(refused_base_url(), "m"), request)
    assert caught.value.error_class == "connect_error"


async def test_cancelling_while_the_upstream_hangs_closes_it(fake, client) -> None:
    fake.script("text-emb", fault="hang")
    request = EmbeddingRequest(model="public", input="x")
    call = adapter.embed(client, target(fake.base_url, "text-emb"), request)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(call, 0.3)
    assert await fake.async_wait_open_requests(0)


@pytest.mark.parametrize(
    "body",
    [
        {"data": []},
        {"data": [{"index": 1, "embedding": [0.1]}]},
        {"data": [{"index": 0, "embedding": {"x": 1}}]},
        {"data": [{"index": 0, "embedding": [0.1]}], "usage": {"prompt_tokens": "3"}},
        [],
    ],
)
def test_malformed_answers_are_protocol_errors(body) -> None:
    with pytest.raises(ProtocolError):
        decode_embeddings(body, 1)


def test_answers_are_put_in_input_order() -> None:
    body = {"data": [{"index": 1, "embedding": "AAAA"}, {"index": 0, "embedding": [1.5]}]}
    assert decode_embeddings(body, 2).vectors == [[1.5], "AAAA"]


def test_base64_dimensions() -> None:
    vector = [0.25, -0.5, 1.0]
    assert Embeddings(vectors=[as_base64(vector)], model="m").dimensions == 3
    raw = base64.b64decode(as_base64(vector))
    assert list(struct.unpack("<3f", raw)) == vector


async def test_demo_embeddings_are_deterministic_unit_vectors() -> None:
    demo = DemoAdapter()
    demo_target = UpstreamTarget(provider="demo", kind="demo", base_url="", model="demo")
    request = EmbeddingRequest(model="d", input=["x", [1, 2]], params={"dimensions": 16})
    result = await demo.embed(None, demo_target, request)  # type: ignore[arg-type]
    assert result.vectors == [demo_embedding("x", 16), demo_embedding([1, 2], 16)]
    assert abs(sum(v * v for v in demo_embedding("x", 16)) - 1) < 1e-5
    assert result.usage == {"prompt_tokens": 3, "total_tokens": 3}
    b64 = EmbeddingRequest(model="d", input="x", params={"encoding_format": "base64"})
    [encoded] = (await demo.embed(None, demo_target, b64)).vectors  # type: ignore[arg-type]
    assert encoded == as_base64(demo_embedding("x"))


def test_which_kinds_embed() -> None:
    assert (can_embed("openai"), can_embed("demo"), can_embed("anthropic")) == (True, True, False)

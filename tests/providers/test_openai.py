from __future__ import annotations

import asyncio

import pytest
from multidict import CIMultiDict

from streaming.providers.base import UpstreamTarget, parse_retry_after
from streaming.providers.openai import OpenAIAdapter, OpenAIStreamDecoder
from tests.fakes import FakeUpstream, refused_base_url
from tests.providers.chunks import chat, collect, content_of, failure, finish_reasons, tool_calls_of

SECRET = "sk-alice-secret-0123456789"
adapter = OpenAIAdapter()


def target(fake: FakeUpstream, model: str, **params: object) -> UpstreamTarget:
    return UpstreamTarget(
        provider="openai-main",
        kind="openai",
        base_url=fake.base_url,
        model=model,
        api_key=SECRET,
        params=dict(params),
    )


async def test_streams_text_with_role_first_then_finish_then_usage(fake, client) -> None:
    fake.script("gpt-text", tokens=["Hello", ",", " world"])
    chunks = await collect(adapter, client, target(fake, "gpt-text"), chat())
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert content_of(chunks) == "Hello, world"
    assert finish_reasons(chunks) == ["stop"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    assert all("usage" not in chunk for chunk in chunks[:-1])


async def test_sends_the_openai_request(fake, client) -> None:
    fake.script("gpt-text", text="ok")
    request = chat("Hi", temperature=0.2, max_tokens=50)
    await collect(adapter, client, target(fake, "gpt-text", temperature=0.9), request)
    [sent] = fake.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {SECRET}"
    assert sent.body == {
        "model": "gpt-text",
        "messages": [{"role": "user", "content": "Hi"}],
        "temperature": 0.9,  # the target's params win
        "max_tokens": 50,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_no_authorization_header_without_a_key(fake, client) -> None:
    keyless = UpstreamTarget(provider="local", kind="openai", base_url=fake.base_url, model="m")
    await collect(adapter, client, keyless, chat())
    assert "authorization" not in fake.requests[0].headers


async def test_tool_call_fragments_pass_through(fake, client) -> None:
    fragments = ['{"ci', 'ty": "Pa', 'ris"}']
    fake.script("gpt-tool", tool_name="get_weather", tool_arguments=fragments)
    chunks = await collect(adapter, client, target(fake, "gpt-tool"), chat())
    [call] = tool_calls_of(chunks)
    assert call == {
        "id": "call_fake1",
        "type": "function",
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
    }
    assert finish_reasons(chunks) == ["tool_calls"]


@pytest.mark.parametrize(
    ("fault", "error_class", "status"),
    [
        ("http_500", "server_error", 500),
        ("http_529", "server_error", 529),
        ("http_400", "client_error", 400),
        ("die", "protocol_error", None),
        ("truncate", "protocol_error", None),
        ("malformed", "protocol_error", None),
        ("error_event", "provider_error", None),
        ("refuse", "connect_error", None),
    ],
)
async def test_faults_become_upstream_errors(fake, client, fault, error_class, status) -> None:
    fake.script("gpt-fault", tokens=5, fault=fault, fault_after=2)
    error = await failure(adapter, client, target(fake, "gpt-fault"), chat())
    assert (error.error_class, error.status) == (error_class, status)
    assert SECRET not in str(error) and SECRET not in repr(error.body)
    assert await fake.async_wait_open_requests(0)


async def test_client_error_keeps_the_upstream_body_for_pass_through(fake, client) -> None:
    fake.script("gpt-bad", fault="http_400")
    error = await failure(adapter, client, target(fake, "gpt-bad"), chat())
    assert error.body["error"]["type"] == "invalid_request_error"
    assert not error.retryable


async def test_rate_limit_carries_retry_after(fake, client) -> None:
    fake.script("gpt-busy", fault="http_429", retry_after=7)
    error = await failure(adapter, client, target(fake, "gpt-busy"), chat())
    assert (error.error_class, error.retry_after, error.status) == ("rate_limited", 7.0, 429)


def test_retry_after_ms_is_preferred_and_dates_are_ignored() -> None:
    headers = CIMultiDict({"Retry-After-Ms": "1500", "Retry-After": "2"})
    assert parse_retry_after(headers) == 1.5
    assert parse_retry_after(CIMultiDict({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) is None
    assert parse_retry_after(CIMultiDict()) is None


async def test_connection_refused(client) -> None:
    refused = UpstreamTarget(provider="p", kind="openai", base_url=refused_base_url(), model="m")
    error = await failure(adapter, client, refused, chat())
    assert error.error_class == "connect_error"


async def test_a_finished_stream_leaves_its_connection_for_the_next_request(fake, client) -> None:
    fake.script("gpt-again", tokens=["a", "b"])
    for _ in range(3):
        assert content_of(await collect(adapter, client, target(fake, "gpt-again"), chat())) == "ab"
    ports = {r.client_port for r in fake.requests_for("gpt-again")}
    assert len(ports) == 1, "each request opened a new upstream connection"


async def test_closing_the_generator_closes_the_upstream_request(fake, client) -> None:
    fake.script("gpt-slow", tokens=100, delay=0.05)
    stream = adapter.stream(client, target(fake, "gpt-slow"), chat())
    await anext(stream)
    await anext(stream)
    assert fake.open_requests == 1
    await stream.aclose()
    assert await fake.async_wait_open_requests(0)


async def test_cancelling_while_the_upstream_hangs_closes_it(fake, client) -> None:
    fake.script("gpt-hang", fault="hang")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await collect(adapter, client, target(fake, "gpt-hang"), chat())
    assert await fake.async_wait_open_requests(0)


def test_decoder_accepts_a_finish_without_done_and_skips_empty_chunks() -> None:
    decoder = OpenAIStreamDecoder()
    assert decoder.feed('{"choices": [], "prompt_filter_results": []}') is None
    chunk = decoder.feed('{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}')
    assert chunk is not None and decoder.finished and not decoder.done

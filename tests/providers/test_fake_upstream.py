"""The fake upstream itself: real clients must accept what it sends."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.fakes import FakeUpstream
from tests.fakes.upstream import script_from_model_name


async def test_the_openai_sdk_reads_the_fake_stream(fake) -> None:
    fake.script("gpt-sdk", text="Hello from the fake", tool_name="f", tool_arguments=["{}"])
    async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="sk-x", max_retries=0) as sdk:
        stream = await sdk.chat.completions.create(
            model="gpt-sdk",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Hello from the fake"
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert fake.requests[0].headers["authorization"] == "Bearer sk-x"


async def test_the_openai_sdk_reads_a_non_streaming_completion(fake) -> None:
    fake.script("gpt-sdk", text="Plain answer")
    async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="sk-x", max_retries=0) as sdk:
        completion = await sdk.chat.completions.create(
            model="gpt-sdk", messages=[{"role": "user", "content": "hi"}]
        )
    assert completion.choices[0].message.content == "Plain answer"
    assert completion.choices[0].finish_reason == "stop"


async def test_the_openai_sdk_sees_the_rate_limit(fake) -> None:
    fake.script("gpt-busy", fault="http_429", retry_after=3)
    async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="sk-x", max_retries=0) as sdk:
        with pytest.raises(openai.RateLimitError) as info:
            await sdk.chat.completions.create(
                model="gpt-busy", messages=[{"role": "user", "content": "hi"}]
            )
    assert info.value.response.headers["retry-after"] == "3"


def test_model_names_script_other_processes() -> None:
    script = script_from_model_name("fake:tokens=50,delay=0.02,ttft=0.1,fault=die,fault_after=3")
    assert script is not None
    assert (len(script.tokens), script.delay, script.ttft) == (50, 0.02, 0.1)
    assert (script.fault, script.fault_after) == ("die", 3)
    assert script_from_model_name("gpt-4o") is None


def test_counts_and_records_requests_from_sync_code() -> None:
    with FakeUpstream() as fake:
        body = {"model": "fake:tokens=3", "messages": [], "stream": True}
        response = httpx.post(f"{fake.base_url}/chat/completions", json=body)
        assert response.text.endswith("data: [DONE]\n\n")
        assert response.text.count('"content":"') == 4  # role chunk + three tokens
        assert fake.request_count == 1
        # Closed once its handler returns, which may be just after the client has the body.
        assert fake.wait_open_requests(0, timeout=1)
        assert fake.requests_for("fake:tokens=3")[0].body == body

from __future__ import annotations

import asyncio

import pytest
from django.test import override_settings

from streaming.providers import adapter_for
from streaming.providers.base import UpstreamTarget
from streaming.providers.demo import DemoAdapter, demo_tokens
from tests.providers.chunks import chat, collect, content_of, finish_reasons

adapter = DemoAdapter()


def target(**params: object) -> UpstreamTarget:
    return UpstreamTarget(
        provider="demo", kind="demo", base_url="", model="demo", params={"delay": 0, **params}
    )


def test_adapter_for_knows_every_kind() -> None:
    assert adapter_for("demo").kind == "demo"
    assert adapter_for("openai").kind == "openai"
    assert adapter_for("anthropic").kind == "anthropic"
    with pytest.raises(ValueError):
        adapter_for("carrier-pigeon")


async def test_the_answer_quotes_the_prompt_and_is_deterministic(client) -> None:
    first = await collect(adapter, client, target(), chat("What is Sluice?"))
    second = await collect(adapter, client, target(), chat("What is Sluice?"))
    assert first == second
    text = content_of(first)
    assert text.startswith('You asked: "What is Sluice?".')
    assert 40 <= len(demo_tokens([{"role": "user", "content": "What is Sluice?"}])) <= 80
    assert first[0]["choices"][0]["delta"]["role"] == "assistant"


async def test_finishes_with_stop_then_usage(client) -> None:
    chunks = await collect(adapter, client, target(tokens=7), chat("one two three"))
    assert finish_reasons(chunks) == ["stop"]
    assert chunks[-1] == {
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10},
    }
    assert len(content_of(chunks).split()) == 7


def test_token_count_can_exceed_the_canned_answer() -> None:
    tokens = demo_tokens([{"role": "user", "content": "hi"}], count=200)
    assert len(tokens) == 200
    assert all(token.startswith(" ") for token in tokens[1:])


@override_settings(SLUICE_DEMO_TOKEN_DELAY=0.5)
async def test_paced_by_the_setting_and_cancellable(client) -> None:
    stream = adapter.stream(client, UpstreamTarget("demo", "demo", "", "demo"), chat())
    await anext(stream)  # the role chunk comes at once
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await anext(stream)
    await stream.aclose()

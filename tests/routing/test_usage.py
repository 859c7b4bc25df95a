"""What a request is charged for, end to end: usage from OpenAI and Anthropic
upstreams, the price table's cost, and streams cut short (by the client, by a
cancel, by a failure continued on another target) charged once for what was
generated. A served gateway, the fake upstream, the audit record."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import httpx
import pytest

from streaming.models import ModelPrice, RouteTarget
from streaming.providers import ChatRequest
from streaming.routing.usage import estimate_completion_tokens, estimate_prompt_tokens
from tests.conftest import unique, wait_for_audit
from tests.fakes import wire
from tests.routing.conftest import HELLO, sdk_stream
from tests.streams.clients import Progress, read_sse, resume_sse, start_sse

pytestmark = [pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]

# USD per million tokens: the cost of a request is a sum of small integers / 1e6.
PRICE = {"input_per_mtok": 1.0, "cached_input_per_mtok": 0.5, "output_per_mtok": 2.0}
BACKUP_PRICE = {"input_per_mtok": 3.0, "output_per_mtok": 4.0}


def scripted(upstream: Any, **script: Any) -> str:
    name = unique("up")
    upstream.script(name, **script)
    return name


def priced(model: str, *prices: dict[str, float]) -> str:
    """Price each target of route ``model`` (in priority order) with ``prices``."""
    targets = RouteTarget.objects.filter(route__model=model).order_by("priority")
    for target, price in zip(targets, prices, strict=True):
        ModelPrice.objects.create(provider=target.provider, model=target.upstream_model, **price)
    return model


def usd(micro: int) -> Decimal:
    """A cost in millionths of a dollar, as the audit stores it."""
    return Decimal(micro) / 1_000_000


def charged(record: Any) -> tuple[int, int, int, int]:
    return (
        record.prompt_tokens,
        record.completion_tokens,
        record.cached_tokens,
        record.reasoning_tokens,
    )


def fake_prompt(messages: list[dict[str, Any]]) -> int:
    """What the fake upstream reports as prompt tokens for ``messages``."""
    return wire.prompt_tokens({"messages": messages})


def wait_until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.02)


# -- usage as upstreams report it ------------------------------------------------
def test_openai_usage_and_cost_and_no_usage_chunk_for_a_client_that_did_not_ask(
    sdk, alice, upstream, make_route
):
    name = scripted(upstream, tokens=["Hello", " there", " friend"], cached_tokens=2)
    model = priced(make_route(("openai", upstream.base_url, name)), PRICE)

    chunks, text = sdk_stream(sdk(alice), model)

    assert text == "Hello there friend"
    assert all(chunk.usage is None for chunk in chunks)  # it did not ask
    # ... yet the gateway asked the upstream, and the audit has it.
    sent = upstream.requests_for(name)[0].body
    assert sent["stream_options"] == {"include_usage": True}
    record = wait_for_audit(chunks[0].id)
    prompt = fake_prompt(HELLO)
    assert charged(record) == (prompt, 3, 2, 0)
    assert record.usage["prompt_tokens_details"] == {"cached_tokens": 2}
    # Cached prompt tokens at the cached price: (prompt - 2) * 1 + 2 * 0.5 + 3 * 2.
    assert record.cost_usd == usd((prompt - 2) * 1 + 1 + 3 * 2)
    attempt = record.attempts.get()
    assert (attempt.prompt_tokens, attempt.completion_tokens) == (prompt, 3)
    assert attempt.cost_usd == record.cost_usd


def test_a_client_that_asks_gets_the_usage_with_its_details(sdk, alice, upstream, make_route):
    name = scripted(upstream, tokens=3, cached_tokens=1, reasoning_tokens=5)
    model = priced(make_route(("openai", upstream.base_url, name)), PRICE)

    chunks, _ = sdk_stream(sdk(alice), model, stream_options={"include_usage": True})

    usage = chunks[-1].usage
    assert usage.completion_tokens == 8  # 3 shown, 5 of reasoning
    assert usage.completion_tokens_details.reasoning_tokens == 5
    assert usage.prompt_tokens_details.cached_tokens == 1
    record = wait_for_audit(chunks[0].id)
    prompt = fake_prompt(HELLO)
    assert charged(record) == (prompt, 8, 1, 5)
    # (prompt - 1) * 1 + 1 * 0.5 + 8 * 2: reasoning tokens are completion tokens.
    assert record.cost_usd == Decimal(str(prompt - 1 + 0.5 + 16)) / 1_000_000


def test_anthropic_usage_and_cost_with_cache_reads(sdk, alice, upstream, make_route):
    name = scripted(upstream, tokens=["Bonjour", " tout", " le", " monde"], cached_tokens=2)
    model = priced(make_route(("anthropic", upstream.base_url, name)), PRICE)

    chunks, text = sdk_stream(sdk(alice), model)

    assert text == "Bonjour tout le monde" and all(c.usage is None for c in chunks)
    record = wait_for_audit(chunks[0].id)
    # input_tokens + cache_read_input_tokens: what the fake counted in the body it got.
    prompt = fake_prompt(upstream.requests_for(name)[0].body["messages"])
    assert charged(record) == (prompt, 4, 2, 0)
    assert record.cost_usd == Decimal(str(prompt - 2 + 1.0 + 4 * 2)) / 1_000_000


def test_a_non_streaming_answer_carries_usage_and_is_charged(gateway, alice, upstream, make_route):
    name = scripted(upstream, tokens=["One", " two"])
    model = priced(make_route(("openai", upstream.base_url, name)), PRICE)

    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers=alice.headers,
        json={"model": model, "messages": HELLO},
        timeout=20,
    )

    body = response.json()
    prompt = fake_prompt(HELLO)
    assert body["usage"]["completion_tokens"] == 2 and body["usage"]["prompt_tokens"] == prompt
    record = wait_for_audit(body["id"])
    assert charged(record) == (prompt, 2, 0, 0)
    assert record.cost_usd == usd(prompt + 4)


def test_a_target_without_a_price_costs_nothing(sdk, alice, upstream, make_route):
    name = scripted(upstream, tokens=2)
    model = make_route(("openai", upstream.base_url, name))

    chunks, _ = sdk_stream(sdk(alice), model)

    record = wait_for_audit(chunks[0].id)
    assert record.completion_tokens == 2 and record.cost_usd == 0


# -- streams cut short: charged once, for what was generated ------------------------
def estimated(record: Any, messages: list[dict[str, Any]]) -> tuple[int, int]:
    """The estimate for an attempt that reported no usage: (prompt, completion),
    from the text it generated (numbered tokens: one delta each)."""
    text = record.response_text
    completion = estimate_completion_tokens(text.count("tok"), len(text))
    return estimate_prompt_tokens(ChatRequest(model="m", messages=messages)), completion


HI = [{"role": "user", "content": "hi"}]


def test_a_stream_the_client_left_is_charged_for_what_was_generated_before_it_was_abandoned(
    gateway, alice, upstream, make_route
):
    name = scripted(upstream, tokens=200, delay=0.03)  # 6 s; abandoned after 2 s unread
    model = priced(make_route(("openai", upstream.base_url, name)), PRICE)

    progress = start_sse(gateway.url, alice.headers, model, stop_after=3)

    record = wait_for_audit(progress.stream_id, timeout=15)
    assert record.outcome == "abandoned"
    prompt, completion = estimated(record, HI)
    assert 3 <= record.response_text.count("tok") < 200
    assert charged(record) == (prompt, completion, 0, 0)
    assert record.cost_usd == usd(prompt + 2 * completion)
    attempt = record.attempts.get()
    assert attempt.outcome == "cancelled" and attempt.cost_usd == record.cost_usd


def test_a_resumed_stream_is_charged_once(gateway, alice, upstream, make_route):
    name = scripted(upstream, tokens=30, delay=0.02)
    model = priced(make_route(("openai", upstream.base_url, name)), PRICE)

    progress = start_sse(gateway.url, alice.headers, model, stop_after=4)
    resume_sse(gateway.url, alice.headers, progress)

    assert progress.done
    record = wait_for_audit(progress.stream_id)
    assert record.outcome == "completed" and record.resumes == 1
    prompt = fake_prompt(HI)
    assert charged(record) == (prompt, 30, 0, 0)  # the upstream's own count, once
    assert record.cost_usd == usd(prompt + 60)


def test_a_cancelled_stream_is_charged_for_what_was_generated(gateway, alice, upstream, make_route):
    name = scripted(upstream, tokens=200, delay=0.03)
    model = priced(make_route(("openai", upstream.base_url, name)), PRICE)
    created = httpx.post(
        f"{gateway.url}/v1/streams",
        headers=alice.headers,
        json={"model": model, "messages": HI},
        timeout=10,
    ).json()
    url = f"{gateway.url}/v1/streams/{created['id']}"
    progress = Progress()
    with httpx.stream("GET", url, headers={**alice.headers, "Accept": "text/event-stream"}) as r:
        read_sse(r, progress, stop_after=10)

    assert httpx.delete(url, headers=alice.headers).json()["cancelled"] is True

    record = wait_for_audit(created["id"])
    assert record.outcome == "cancelled"
    prompt, completion = estimated(record, HI)
    # At least what the client read (10 events: the role, then text), not the rest.
    assert record.response_text.startswith(progress.content) and progress.content
    assert progress.content.count("tok") <= record.response_text.count("tok") < 200
    assert charged(record) == (prompt, completion, 0, 0)
    assert record.cost_usd == usd(prompt + 2 * completion)


def test_a_stream_continued_on_a_fallback_provider_is_charged_for_both_attempts(
    sdk, alice, upstream, make_route
):
    first = scripted(
        upstream, tokens=["The", " quick", " brown", " fox"], fault="die", fault_after=3
    )
    backup = scripted(upstream, tokens=[" brown", " fox", " jumps", " over."])
    model = make_route(
        ("openai", upstream.base_url, first),
        ("anthropic", upstream.base_url, backup),
        allow_midstream_fallback=True,
    )
    priced(model, PRICE, BACKUP_PRICE)

    chunks, text = sdk_stream(sdk(alice), model)

    assert text == "The quick brown fox jumps over."
    record = wait_for_audit(chunks[0].id)
    died, continued = record.attempts.all()
    # The first upstream died before its usage: its request and its three deltas, estimated.
    first_prompt = estimate_prompt_tokens(ChatRequest(model="m", messages=HELLO))
    first_completion = estimate_completion_tokens(3, len("The quick brown"))
    assert (died.prompt_tokens, died.completion_tokens) == (first_prompt, first_completion)
    assert died.cost_usd == usd(first_prompt + 2 * first_completion)
    # The backup reported its own: the continuation request, and all it generated
    # (the repeated " brown fox" too, which the client did not see).
    continuation_prompt = fake_prompt(upstream.requests_for(backup)[0].body["messages"])
    assert (continued.prompt_tokens, continued.completion_tokens) == (continuation_prompt, 4)
    assert continued.cost_usd == usd(3 * continuation_prompt + 4 * 4)
    assert charged(record) == (first_prompt + continuation_prompt, first_completion + 4, 0, 0)
    assert record.cost_usd == died.cost_usd + continued.cost_usd

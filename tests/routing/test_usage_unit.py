"""The charge of one attempt, without a gateway: reported usage wins, field by
field; what was not reported is estimated from the request and the output."""

from __future__ import annotations

from audit.records import AttemptEntry, AuditEntry
from streaming.providers import ChatRequest, Price
from streaming.routing.usage import (
    AttemptMeter,
    estimate_completion_tokens,
    estimate_prompt_tokens,
    settle,
)

REQUEST = ChatRequest(model="m", messages=[{"role": "user", "content": "x" * 40}])
PRICE = Price(input_per_mtok=1.0, output_per_mtok=2.0, cached_input_per_mtok=0.5)


def text(content: str) -> dict:
    return {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}


def record() -> AttemptEntry:
    return AttemptEntry(provider="p", upstream_model="m", started_at=0.0)


def test_the_estimates():
    # 40 characters over 4, 3 for the message and 3 for the reply.
    assert estimate_prompt_tokens(REQUEST) == 16
    assert estimate_completion_tokens(deltas=3, chars=40) == 10  # chunky deltas: the chars
    assert estimate_completion_tokens(deltas=10, chars=13) == 10  # a token a delta: the count


def test_an_attempt_cut_short_is_charged_its_estimate():
    meter, entry = AttemptMeter(), record()
    for piece in ("Hello", " wor"):
        meter.observe(text(piece))
    meter.observe(
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{}"}}]
                    },
                }
            ]
        }
    )

    meter.charge(entry, REQUEST, PRICE)

    assert (entry.prompt_tokens, entry.completion_tokens) == (16, 3)  # 12 chars, 3 deltas
    assert entry.cost_usd == (16 + 2 * 3) / 1e6


def test_reported_usage_wins_and_cached_tokens_take_the_cached_price():
    meter, entry = AttemptMeter(), record()
    meter.observe(text("Hi"))
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 9,
        "prompt_tokens_details": {"cached_tokens": 60},
        "completion_tokens_details": {"reasoning_tokens": 4},
    }
    meter.observe({"choices": [], "usage": usage})

    meter.charge(entry, REQUEST, PRICE)

    assert (entry.prompt_tokens, entry.completion_tokens) == (100, 9)
    assert (entry.cached_tokens, entry.reasoning_tokens) == (60, 4)
    assert entry.cost_usd == (40 * 1 + 60 * 0.5 + 9 * 2) / 1e6


def test_an_attempt_that_never_answered_costs_nothing_and_settling_twice_adds_nothing():
    unanswered, answered = record(), record()
    AttemptMeter().charge(unanswered, REQUEST, PRICE)
    meter = AttemptMeter()
    meter.observe(text("abcd"))
    meter.charge(answered, REQUEST, None)  # no price: tokens, no cost
    audit = AuditEntry(request_id="r", protocol="sse", public_model="m", started_at=0.0)
    audit.attempts = [unanswered, answered]

    settle(audit)
    settle(audit)

    assert unanswered.prompt_tokens == 0 and unanswered.cost_usd == 0
    assert (audit.prompt_tokens, audit.completion_tokens, audit.cost_usd) == (16, 1, 0.0)

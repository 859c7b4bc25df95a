"""Admission's estimate and price, and what a request's end is charged (no server)."""

from __future__ import annotations

import pytest

from accounts.identity import AppIdentity
from accounts.limits import MONTHLY_COST, NANO_USD, LimitExceeded, Limits
from audit.records import AuditEntry
from streaming.core import admission
from streaming.providers import ChatRequest, Price, UpstreamTarget
from streaming.routing.routes import ResolvedRoute, RoutePolicy, TargetChoice

PRICE = Price(input_per_mtok=100_000.0, output_per_mtok=200_000.0)  # 0.1 / 0.2 USD a token


def identity(**limits) -> AppIdentity:
    return AppIdentity(
        app_id=1,
        client_id="unit-" + str(id(limits)),
        name="alice",
        token_id=1,
        scopes=frozenset({"chat"}),
        allowed_models=None,
        expires_at=float("inf"),
        limits=Limits(**limits),
    )


def route(price: Price | None = PRICE) -> ResolvedRoute:
    target = UpstreamTarget(provider="p", kind="openai", base_url="", model="m", price=price)
    return ResolvedRoute("m", (TargetChoice(target),), RoutePolicy())


def test_the_estimate_is_the_prompt_plus_the_most_output_it_may_ask_for(settings):
    settings.SLUICE_LIMIT_DEFAULT_MAX_TOKENS = 1000
    chat = ChatRequest(model="m", messages=[{"role": "user", "content": "x" * 40}])
    prompt = 10 + 3 + 3  # 40 characters, one message, the reply
    assert admission.chat_estimate(chat, None) == (prompt, 1000)
    assert admission.chat_estimate(chat, 64) == (prompt, 64)
    chat.params["max_completion_tokens"] = 20
    assert admission.chat_estimate(chat, 64) == (prompt, 20)


async def test_a_targets_price_drives_the_cost_budget(settings):
    settings.REDIS_URL = ""
    alice = identity(monthly_cost_usd=5.0)
    first = await admission.admit(alice, route(), prompt=10, output=10)  # $1 + $2
    assert first.reservation.cost_nano == 3 * NANO_USD

    with pytest.raises(LimitExceeded) as refused:
        await admission.admit(alice, route(), prompt=10, output=10)
    assert refused.value.limit == MONTHLY_COST and refused.value.budget

    audit = AuditEntry(request_id="r", protocol="json", public_model="m", started_at=0.0)
    audit.prompt_tokens, audit.completion_tokens, audit.cost_usd = 5, 2, 0.9
    first.settle(audit)  # charged $0.5 + $0.4, not the $3 reserved
    await first.limiter.drain()
    second = await admission.admit(alice, route(), prompt=10, output=10)
    assert second.reservation.quota.used[MONTHLY_COST] == round(3.9 * NANO_USD)

"""Planning: priority order, weighted choice among equals, backoff."""

from __future__ import annotations

import random
from collections import Counter

from streaming.providers import UpstreamTarget
from streaming.providers.errors import RateLimited, ServerError
from streaming.routing.fallback import backoff_delay, plan_attempts, weighted_order
from streaming.routing.routes import ResolvedRoute, RoutePolicy, TargetChoice


def choice(name: str, priority: int = 0, weight: int = 1) -> TargetChoice:
    return TargetChoice(UpstreamTarget(name, "openai", "http://x", name), priority, weight)


def names(targets: list[UpstreamTarget]) -> list[str]:
    return [t.provider for t in targets]


def test_plan_is_priority_order_with_attempts_per_target():
    route = ResolvedRoute(
        "m", (choice("b", 1), choice("a", 0), choice("c", 1)), RoutePolicy(attempts_per_target=2)
    )
    assert names(plan_attempts(route)) == ["a", "a", "b", "b", "c", "c"]


def test_weighted_choice_follows_the_weights():
    rng = random.Random(7)
    tier = [choice("x", weight=3), choice("y", weight=1)]
    firsts = Counter(weighted_order(tier, rng)[0].upstream.provider for _ in range(4000))
    assert 0.70 < firsts["x"] / 4000 < 0.80


def test_weight_zero_is_only_a_fallback():
    rng = random.Random(1)
    tier = [choice("never-first", weight=0), choice("a"), choice("b")]
    assert all(weighted_order(tier, rng)[-1].upstream.provider == "never-first" for _ in range(50))


def test_load_balancing_stays_inside_a_priority():
    route = ResolvedRoute(
        "m",
        (choice("p1", 0), choice("p2", 0), choice("backup", 1)),
        RoutePolicy(load_balance=True),
    )
    plans = {tuple(names(plan_attempts(route, random.Random(seed)))) for seed in range(30)}
    assert plans == {("p1", "p2", "backup"), ("p2", "p1", "backup")}


def test_backoff_honours_retry_after_else_grows_with_jitter():
    policy = RoutePolicy(backoff_seconds=0.2)
    limited = RateLimited("429", status=429, retry_after=1.5)
    assert backoff_delay(policy, 0, limited) == 1.5
    broken = ServerError("500", status=500)
    assert 0.1 <= backoff_delay(policy, 0, broken) <= 0.2
    assert 0.4 <= backoff_delay(policy, 2, broken) <= 0.8

"""Admission of a request against its app's limits, and its settlement at the end.

The estimate reserved is the prompt's tokens, guessed from its text as a
request is charged when its upstream reports no usage
(``streaming.routing.usage``), plus the most output the
request may produce: its own max tokens, else its app's ceiling, else
``SLUICE_LIMIT_DEFAULT_MAX_TOKENS``. Its cost is priced at the route's first
target. When the request ends, ``Admission.settle`` frees the slot and
replaces the estimate with the tokens and cost its audit entry was charged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings

from accounts.identity import AppIdentity
from accounts.limiter import Limiter, limiter
from accounts.limits import Reservation
from audit.records import AuditEntry
from streaming.providers import ChatRequest, EmbeddingRequest, Price
from streaming.routing.routes import ResolvedRoute
from streaming.routing.usage import estimate_embedding_tokens, estimate_prompt_tokens


@dataclass(slots=True)
class Admission:
    """A request admitted: what it reserved, and how to settle it."""

    limiter: Limiter
    reservation: Reservation

    def headers(self) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers as of this admission."""
        return self.reservation.headers()

    def settle(self, audit: AuditEntry) -> None:
        """Free the slot; charge what ``audit`` says was used instead of the estimate
        (its counts and cost, summed over its attempts: streaming.routing.usage)."""
        tokens = audit.prompt_tokens + audit.completion_tokens
        self.limiter.settle(self.reservation, tokens=tokens, cost_usd=audit.cost_usd)


# -- the estimate (the prompt as streaming.routing.usage estimates it) ----------
def requested_max_tokens(params: dict[str, Any]) -> int | None:
    """The most output tokens the request asks for, if it names a number."""
    asked = [params.get(name) for name in ("max_tokens", "max_completion_tokens")]
    numbers = [n for n in asked if isinstance(n, int) and not isinstance(n, bool)]
    return max(numbers) if numbers else None


def output_estimate(params: dict[str, Any], ceiling: int | None) -> int:
    return requested_max_tokens(params) or ceiling or settings.SLUICE_LIMIT_DEFAULT_MAX_TOKENS


def chat_estimate(request: ChatRequest, ceiling: int | None) -> tuple[int, int]:
    """(prompt, output) tokens admission reserves for a chat request: the same
    prompt estimate a request is charged when its upstream reports no usage."""
    return estimate_prompt_tokens(request), output_estimate(request.params, ceiling)


def embeddings_estimate(request: EmbeddingRequest) -> int:
    """Prompt tokens of an embeddings request (a token array counts as itself)."""
    return max(estimate_embedding_tokens(request), 1)


def first_price(route: ResolvedRoute) -> Price | None:
    return route.targets[0].upstream.price if route.targets else None


async def admit(
    identity: AppIdentity, route: ResolvedRoute, *, prompt: int, output: int = 0
) -> Admission:
    """Reserve ``prompt + output`` tokens (and their cost at the route's first
    target's price) for ``identity``'s app; LimitExceeded if a limit is reached."""
    price = first_price(route)
    cost = price.cost(prompt_tokens=prompt, completion_tokens=output) if price else 0.0
    limits = limiter()
    reservation = await limits.reserve(
        app=identity.client_id, limits=identity.limits, tokens=prompt + output, cost_usd=cost
    )
    return Admission(limits, reservation)

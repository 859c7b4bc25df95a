"""Every inbound protocol's limit check: the max tokens ceiling, then admission.

A refusal is OpenAI's answer: 429 with ``Retry-After`` (and ``retry-after-ms``,
which the OpenAI SDK prefers), the ``x-ratelimit-*`` headers, and code
``rate_limit_exceeded`` (requests, tokens, concurrency) or
``insufficient_quota`` (a monthly budget). An endpoint with its own error
shape (``/v1/messages``) renders the same ``ApiError`` its own way.
"""

from __future__ import annotations

import math

from accounts.identity import AppIdentity
from accounts.limits import TOKENS, LimitExceeded
from streaming.core import admission
from streaming.core.admission import Admission
from streaming.observability import metrics
from streaming.providers import ChatRequest, EmbeddingRequest
from streaming.routing.routes import ResolvedRoute
from streaming.transports.errors import ApiError

MAX_TOKEN_PARAMS = ("max_tokens", "max_completion_tokens")


def apply_ceiling(identity: AppIdentity, chat: ChatRequest) -> None:
    """Hold ``chat``'s max tokens to its app's ceiling: lowered to it (mode
    ``clamp``; a request that names none gets the ceiling), or a 400 (``refuse``)."""
    ceiling = identity.limits.max_tokens
    if ceiling is None:
        return
    params = chat.params
    asked = admission.requested_max_tokens(params)
    if asked is not None and asked > ceiling and identity.limits.max_tokens_mode == "refuse":
        name = next(n for n in MAX_TOKEN_PARAMS if params.get(n) == asked)
        raise ApiError(
            400,
            f"'{name}' is too large: {asked}. This app may ask for at most {ceiling} tokens.",
            code="max_tokens_exceeded",
            param=name,
        )
    named = [n for n in MAX_TOKEN_PARAMS if n in params]
    for name in named or ["max_tokens"]:
        value = params.get(name)
        params[name] = min(value, ceiling) if isinstance(value, int) else ceiling


async def admit_chat(identity: AppIdentity, chat: ChatRequest, route: ResolvedRoute) -> Admission:
    """The ceiling applied, then the request's estimate reserved; ApiError 400/429."""
    apply_ceiling(identity, chat)
    prompt, output = admission.chat_estimate(chat, identity.limits.max_tokens)
    return await _admit(identity, route, prompt=prompt, output=output)


async def admit_embeddings(
    identity: AppIdentity, request: EmbeddingRequest, route: ResolvedRoute
) -> Admission:
    return await _admit(identity, route, prompt=admission.embeddings_estimate(request))


async def _admit(
    identity: AppIdentity, route: ResolvedRoute, *, prompt: int, output: int = 0
) -> Admission:
    try:
        return await admission.admit(identity, route, prompt=prompt, output=output)
    except LimitExceeded as refused:
        metrics.limit_rejected(identity.name, refused.limit)
        raise refusal(refused) from None


def refusal(refused: LimitExceeded) -> ApiError:
    """The 429 for a refused request, as OpenAI answers it."""
    wait = max(refused.retry_after, 0.001)
    headers = {
        "Retry-After": str(max(1, math.ceil(wait))),
        "retry-after-ms": str(math.ceil(wait * 1000)),
        **refused.quota.headers(),
    }
    if refused.budget:
        code = kind = "insufficient_quota"
    else:
        code = "rate_limit_exceeded"
        kind = "tokens" if refused.limit == TOKENS else "requests"
    return ApiError(429, refused.message, code=code, type=kind, headers=headers)

"""``POST /v1/embeddings``: OpenAI's embeddings API over the gateway's routes.

The same checks as chat (the token, the app's model policy, the route), then
one ``EmbeddingCall``; the answer is OpenAI's body, with the ``X-Sluice-*``
headers that say which target served it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from streaming.core.embeddings import EmbeddingCall
from streaming.providers import Embeddings
from streaming.routing.embeddings import embedding_route
from streaming.transports.api import _identity, _route_for
from streaming.transports.consumer import endpoint
from streaming.transports.embeddings_schema import parse_embeddings_request
from streaming.transports.errors import ApiError
from streaming.transports.http import ApiRequest, JsonResponse, wait_disconnect
from streaming.transports.limits import admit_embeddings
from streaming.transports.refused import recorded_if_refused
from streaming.transports.schema import parse_json_body

T = TypeVar("T")


async def create_embeddings(request: ApiRequest) -> JsonResponse:
    identity = await _identity(request)
    embedding = parse_embeddings_request(parse_json_body(request.body))
    with recorded_if_refused(
        identity,
        "embeddings",
        embedding.model,
        request.client_ip,
        messages=embedding.inputs,
        params=dict(embedding.params),
        id_prefix="embd-",
    ):
        route = await _route_for(identity, embedding.model)
        if route.targets and not embedding_route(route).targets:
            raise ApiError(
                400,
                f"the model '{embedding.model}' has no embeddings provider",
                code="model_not_supported",
                param="model",
            )
        admission = await admit_embeddings(identity, embedding, route)
    call = EmbeddingCall(
        identity=identity,
        request=embedding,
        route=route,
        client_ip=request.client_ip,
        admission=admission,
    )
    try:
        result = await _unless_gone(request, call.run())
    finally:
        admission.settle(call.audit)  # a call cancelled before it ran never ended (once)
    if result is None:
        assert call.failure is not None  # run() sets it when there is no answer
        failure = call.failure
        return JsonResponse(
            failure.openai_error(), status=failure.status, headers=call.served_headers()
        )
    return JsonResponse(openai_body(result), headers=call.served_headers())


def openai_body(result: Embeddings) -> dict[str, Any]:
    """OpenAI's embeddings response: ``{"object": "list", "data", "model", "usage"}``."""
    usage = result.usage
    prompt = usage.get("prompt_tokens", 0)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": vector}
            for i, vector in enumerate(result.vectors)
        ],
        "model": result.model,
        "usage": {"prompt_tokens": prompt, "total_tokens": usage.get("total_tokens", prompt)},
    }


async def _unless_gone(request: ApiRequest, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work``; if the client leaves first, cancel it (its end is still audited)."""
    assert request.receive is not None  # set for every request the endpoint builds
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(wait_disconnect(request.receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()  # the client left, or the server is stopping
        for waited in (watch, task):
            with contextlib.suppress(asyncio.CancelledError):
                await waited
    if task.cancelled():
        raise asyncio.CancelledError
    return task.result()


embeddings_app = endpoint({"POST": create_embeddings})

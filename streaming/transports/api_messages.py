"""Anthropic's Messages API: ``/v1/messages``, through any provider.

The Anthropic SDKs (and what is built on them: Claude Code, the Agent SDK)
work with ``base_url`` set to Sluice and a Sluice token as their API key,
which they send as ``x-api-key``. The request is translated to the engine's
chat request (``inbound.messages``), readers get the log as Anthropic's
events (``encoders.messages``), and every error on these endpoints is in
Anthropic's shape. The message id (``msg_...``) is the stream id: a client
that drops resumes with ``GET /v1/streams/{id}`` and ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio

import orjson

from streaming.core.events import Inbound
from streaming.providers.anthropic import AnthropicAdapter
from streaming.providers.errors import TargetFailure, UpstreamError
from streaming.providers.pool import upstream_pool
from streaming.transports.api import (
    _error_response,
    _event_stream,
    _hold_first_event,
    _identity,
    _route_for,
    _start,
    _wait_or_cancel,
)
from streaming.transports.consumer import endpoint
from streaming.transports.encoders.messages import MessagesEncoder, anthropic_error
from streaming.transports.errors import ApiError
from streaming.transports.http import ApiRequest, JsonResponse, StreamResponse
from streaming.transports.inbound.messages import parse_messages_request
from streaming.transports.schema import parse_json_body

COUNT_MAX_TOKENS = 2**31 - 1  # what a count request stands in for max_tokens


async def create_message(request: ApiRequest) -> JsonResponse | StreamResponse:
    identity = await _identity(request)
    parsed = parse_messages_request(parse_json_body(request.body))
    inbound = Inbound("messages", orjson.dumps(parsed.echo))
    session = await _start(
        request, identity, parsed.chat, "messages", inbound=inbound, id_prefix="msg_"
    )
    if parsed.stream:
        encoder = MessagesEncoder(session.id, parsed.echo)
        response = _event_stream(
            session, request, encoder, identity=identity, headers=session.limit_headers()
        )
        _hold_first_event(response, session, anthropic_error)
        return response
    await _wait_or_cancel(session, request, asyncio.ensure_future(session.wait_finished()))
    encoder = MessagesEncoder(session.id, parsed.echo, collect=True)
    encoder.encode(await session.entries())
    if encoder.failure is not None:
        # Anthropic has no partial message: a failure is an error, whatever came before.
        return _error_response(session, anthropic_error)
    return JsonResponse(encoder.snapshot(), headers=session.served_headers())


async def count_tokens(request: ApiRequest) -> JsonResponse:
    """Anthropic's own count, for a model routed to Anthropic (its targets in
    order); for any other model, a 404 that says it is not served: only
    Anthropic counts tokens without generating, and a guess is not a count."""
    identity = await _identity(request)
    data = parse_json_body(request.body)
    if isinstance(data, dict) and "max_tokens" not in data:
        data = {**data, "max_tokens": COUNT_MAX_TOKENS}  # a count has none
    parsed = parse_messages_request(data)
    route = await _route_for(identity, parsed.chat.model)
    targets = [choice.upstream for choice in route.targets if choice.upstream.kind == "anthropic"]
    if not targets:
        raise ApiError(
            404,
            f"POST /v1/messages/count_tokens is not served for the model '{route.model}': "
            "only models routed to Anthropic are counted; token counts come with each "
            "response's usage",
            code="not_served",
        )
    failure: UpstreamError | None = None
    for target in targets:
        try:
            tokens = await AnthropicAdapter().count_tokens(upstream_pool(), target, parsed.chat)
        except TargetFailure as error:
            failure = error  # the next Anthropic target may answer
            continue
        except UpstreamError as error:
            raise ApiError(error.client_status, error.message, code=error.error_class) from None
        return JsonResponse({"input_tokens": tokens})
    assert failure is not None
    raise ApiError(
        failure.client_status,
        f"upstream failed: {failure.message}",
        code=failure.error_class,
    )


messages_app = endpoint({"POST": create_message}, errors=anthropic_error)
count_tokens_app = endpoint({"POST": count_tokens}, errors=anthropic_error)
